#!/usr/bin/env python
"""Time the CNN front end three ways on one utterance: plain, folded, and folded + chunked (the default).

All three share one set of seeded weights (the standard 7-layer CNN, default mode) and must agree to
float32 rounding; the script checks that, then prints the median time of each, its ratio against the plain
CNN, and the minor page faults of one run (allocations the C allocator had to fetch from the OS again).

    PYTHONPATH=. python scripts/benchmark_cnn.py --seconds 10 --threads 2 --chunks 25,50,100
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lighthubert_s3prl.model.config import ModelConfig  # noqa: E402
from lighthubert_s3prl.model.fast_cnn import FoldedConvFeatureExtractor  # noqa: E402
from lighthubert_s3prl.model.modules import ConvFeatureExtractor  # noqa: E402


def time_runs(fn: Callable[[], torch.Tensor], repeats: int) -> List[float]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def minor_faults(fn: Callable[[], torch.Tensor]) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length (default 10 s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--chunks", default="50", help="comma-separated chunk sizes in output frames (default 50)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant (default 7)")
    args = parser.parse_args(argv)
    try:
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--chunks {args.chunks!r}: give whole numbers of frames, e.g. 25,50,100")
    if args.seconds < 0.03 or args.repeats < 1 or args.threads < 1 or any(c < 1 for c in chunks):
        parser.error("--seconds must be at least 0.03, and --repeats, --threads and every chunk at least 1")
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    torch.manual_seed(0)
    cnn = FoldedConvFeatureExtractor(cfg.conv_layers, "default", cfg.conv_bias).eval()
    wav = torch.randn(1, int(args.seconds * 16000))

    def run(chunk: Optional[int]) -> Callable[[], torch.Tensor]:
        def go() -> torch.Tensor:
            cnn.chunk_frames = chunk
            return cnn(wav)
        return go

    variants = {"plain": lambda: ConvFeatureExtractor.forward(cnn, wav), "folded": run(0)}
    variants.update({f"folded, chunks of {c}": run(c) for c in chunks})
    with torch.inference_mode():
        reference = variants["plain"]()
        for name, fn in variants.items():
            err = float((fn() - reference).abs().max())
            if err > 1e-4:
                print(f"benchmark_cnn: {name} differs from the plain CNN by {err:.2e}", file=sys.stderr)
                return 1
        results = {name: (time_runs(fn, args.repeats), minor_faults(fn)) for name, fn in variants.items()}
    plain = statistics.median(results["plain"][0])
    print(f"CNN on {args.seconds:g} s of audio, {args.threads} threads, median of {args.repeats} runs")
    for name, (runs, faults) in results.items():
        median = statistics.median(runs)
        print(f"  {name:<24} {median * 1e3:8.1f} ms  (min {min(runs) * 1e3:6.1f})  {plain / median:5.2f}x  "
              f"{faults:>8} minor faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
