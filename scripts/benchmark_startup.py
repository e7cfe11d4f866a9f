#!/usr/bin/env python3
"""Start-up time of one s3prl run: s3prl's full hub against the lazily filled one, measured in the same run.

Each sample is a fresh Python process that does what a batch-runner unit does before its first training
step: import our launcher and s3prl's runner, register our entries, and build the upstream named by
``--upstream`` (``fbank_no_cmvn`` by default: no checkpoint needed). The two modes alternate so that drift in
machine load hits both alike; ``--busy N`` keeps N extra busy-loop processes running throughout (a shared
machine). Prints the CPU, each mode's median and spread, and the ratio.

    python scripts/benchmark_startup.py --repeats 5
    python scripts/benchmark_startup.py --repeats 5 --busy 1
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

PROBE = """
import sys, time
started = time.perf_counter()
from lighthubert_s3prl.upstream import run_downstream as ours
if not {full}:
    from lighthubert_s3prl.upstream import lazy_hub
    lazy_hub.install()
ours.prepare_runtime()
ours.register()
from s3prl import hub
from s3prl.downstream.runner import Runner
upstream = getattr(hub, {upstream!r})()
print(time.perf_counter() - started)
"""


def cpu_model() -> str:
    """Model name and the vector extensions that decide which kernels torch runs."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} [{' '.join(shown) or 'no AVX2'}]"


def _busy_loop() -> None:
    while True:
        pass


def sample(full: bool, upstream: str) -> Dict[str, float]:
    """Wall time of the whole process (interpreter start included) and the probe's own import time."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE.format(full=full, upstream=upstream)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return {"process": time.perf_counter() - started, "imports": float(out.stdout.strip().splitlines()[-1])}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="samples per mode (default 5)")
    parser.add_argument("--upstream", default="fbank_no_cmvn", help="hub entry to build (default fbank_no_cmvn)")
    parser.add_argument("--busy", type=int, default=0, help="extra busy-loop processes during the run (default 0)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.busy < 0:
        parser.error("--repeats must be >= 1 and --busy >= 0")

    busy = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        sample(False, args.upstream)  # warm the file cache for both modes alike
        times: Dict[str, List[float]] = {"full hub": [], "lazy hub": []}
        for _ in range(args.repeats):
            for mode, full in (("full hub", True), ("lazy hub", False)):
                times[mode].append(sample(full, args.upstream)["process"])
    finally:
        for p in busy:
            p.terminate()

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; busy processes: {args.busy}; "
          f"upstream {args.upstream}; {args.repeats} samples per mode")
    for mode, values in times.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {mode:<9} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, "
              f"max {max(values):.2f}, std {spread:.2f})")
    ratio = statistics.median(times["full hub"]) / statistics.median(times["lazy hub"])
    print(f"  start-up: lazy hub is {ratio:.2f}x faster than s3prl's full hub")
    return 0


if __name__ == "__main__":
    sys.exit(main())
