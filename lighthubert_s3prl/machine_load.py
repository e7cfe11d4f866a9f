"""A busy machine on purpose, and what the machine can compute: for benchmarks that must hold under load.

Researchers rarely have a quiet machine: data-loader workers, a second SUPERB run, other users of a node.
:class:`BusyProcesses` starts that load in a bounded, reproducible form (plain busy-loop processes, one per
level) and guarantees it ends: the processes are stopped when the ``with`` block ends, on an exception or
Ctrl-C, on SIGTERM to the benchmark, and, should the benchmark itself be killed outright, each process stops
on its own once its parent is gone or its time limit is reached. :func:`matmul_gflops` measures the fp32
matrix-product rate the machine gives right now, the yardstick a model's own FLOP rate is compared with.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType, TracebackType
from typing import List, Optional, Type

# Each busy process checks about every 50 ms whether its parent is alive and its time is up.
_BUSY_LOOP = """
import os, sys, time
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while os.getppid() == parent and time.monotonic() < deadline:
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
"""


class BusyProcesses:
    """``with BusyProcesses(n):`` runs ``n`` busy-loop processes (each wants a whole CPU) for the block.

    ``limit_s`` bounds their life even if nothing stops them (a benchmark killed with SIGKILL)."""

    def __init__(self, count: int, limit_s: float = 3600.0) -> None:
        if count < 0:
            raise ValueError(f"the number of busy processes must be at least 0, got {count}")
        self.count, self.limit_s = count, limit_s
        self.procs: List[subprocess.Popen] = []
        self._old_sigterm = None

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> "BusyProcesses":
        if self.count and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            # SIGTERM would end the interpreter without running ``__exit__``: make it an exception instead
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)
        try:
            for _ in range(self.count):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", _BUSY_LOOP, str(os.getpid()), str(self.limit_s)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill every busy process and wait for it (idempotent)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a kill is not refused
                pass
        self.procs = []
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _raise_system_exit(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(128 + signum)


def matmul_gflops(threads: Optional[int] = None, size: int = 1024, seconds: float = 1.0) -> float:
    """The fp32 rate (GFLOP/s) of ``size``-cubed matrix products on the CPU with ``threads`` intra-op threads,
    the median of five timed slices of ``seconds`` / 5 after a warm-up."""
    import statistics

    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)
        flops = 2.0 * size ** 3
        rates = []
        for _ in range(5):
            count, start = 0, time.perf_counter()
            while True:
                torch.mm(a, b, out=out)
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / 5:
                    break
            rates.append(count * flops / elapsed / 1e9)
        return statistics.median(rates)
    finally:
        torch.set_num_threads(previous)
