"""Busy processes a benchmark starts are gone when it ends: normally, on an exception, on SIGTERM, and even
when the benchmark is killed outright; and the matmul yardstick measures a rate."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lighthubert_s3prl.machine_load import BusyProcesses, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if running(p)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_busy_processes_burn_cpu_and_stop_with_the_block():
    with BusyProcesses(2) as busy:
        pids = busy.pids
        assert len(pids) == 2 and all(running(p) for p in pids)
        time.sleep(0.6)
        assert all(cpu_seconds(p) > 0.1 for p in pids)  # busy, not sleeping
    assert wait_gone(pids, timeout=0.5) == []
    with BusyProcesses(0) as none:
        assert none.pids == []


def test_busy_processes_stop_on_an_exception():
    with pytest.raises(RuntimeError):
        with BusyProcesses(1) as busy:
            pids = busy.pids
            raise RuntimeError("the benchmark failed")
    assert wait_gone(pids, timeout=0.5) == []


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from lighthubert_s3prl.machine_load import BusyProcesses
    with BusyProcesses(2, limit_s={limit}) as busy:
        print(" ".join(map(str, busy.pids)), flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("how", ["sigterm", "sigint", "sigkill"])
def test_busy_processes_end_when_the_benchmark_is_stopped(how):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT), limit=3600)],
                            stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(running(p) for p in pids)
    proc.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[how])
    code = proc.wait(timeout=30)
    if how == "sigterm":  # turned into SystemExit, so the with-block's clean-up ran (not a death by signal)
        assert code == 128 + signal.SIGTERM, code
    # SIGTERM/SIGINT: stopped by the benchmark on its way out; SIGKILL: each notices its parent is gone
    assert wait_gone(pids) == [], f"busy processes outlived the benchmark ({how})"


def test_busy_processes_have_a_time_limit():
    with BusyProcesses(1, limit_s=0.3) as busy:
        pid = busy.pids[0]
        assert wait_gone([pid], timeout=5.0) == []


def test_matmul_rate_is_a_positive_rate_and_restores_threads():
    import torch

    before = torch.get_num_threads()
    rate = matmul_gflops(threads=1, size=256, seconds=0.2)
    assert rate > 0.1  # GFLOP/s: even an emulated CPU does more than this
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 0"):
        BusyProcesses(-1)
