#!/usr/bin/env python3
"""What the feature cache saves a frozen upstream over the epochs of a downstream run, measured in one run.

The workload is what s3prl asks of a frozen upstream at the mini scale: ``--epochs`` passes over
``--utterances`` clips of ``--seconds`` each, in shuffled batches of ``--batch``, through our expert in eval mode
without gradients. It runs once without a cache and once with one (fresh expert each), checks that both
give the same hidden states bit for bit, and prints the CPU, both times and the ratio. ``--busy N`` keeps N
busy-loop processes running throughout (a shared machine).

    python scripts/benchmark_feature_cache.py                 # the tiny model, 32 epochs of 128 clips
    python scripts/benchmark_feature_cache.py --busy 1
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_startup import _busy_loop, cpu_model  # noqa: E402  (the same CPU line and busy load)


def run_epochs(expert, wavs, epochs: int, batch: int, seed: int) -> Tuple[float, List]:
    import torch

    order = random.Random(seed)
    last: List = []
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(epochs):
            idx = list(range(len(wavs)))
            order.shuffle(idx)
            for i in range(0, len(idx), batch):
                last = expert([wavs[j] for j in idx[i:i + batch]])["hidden_states"]
    return time.perf_counter() - started, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=32, help="KS at the mini scale: about 32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the runner gives s3prl 1)")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run alongside")
    args = parser.parse_args()

    import torch

    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint
    from lighthubert_s3prl.upstream.expert import UpstreamExpert

    torch.set_num_threads(args.threads)
    busy = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = write_random_checkpoint(Path(tmp) / "tiny.pt", "small", seed=0, model_cfg=tiny_model_config())
            gen = torch.Generator().manual_seed(0)
            wavs = [0.1 * torch.randn(int(args.seconds * 16000), generator=gen) for _ in range(args.utterances)]
            plain = UpstreamExpert(ckpt, feature_cache_mb=0).eval()
            cached = UpstreamExpert(ckpt, feature_cache_mb=4096).eval()
            t_plain, out_plain = run_epochs(plain, wavs, args.epochs, args.batch, seed=1)
            t_cached, out_cached = run_epochs(cached, wavs, args.epochs, args.batch, seed=1)
    finally:
        for p in busy:
            p.terminate()
    same = all(torch.equal(a, b) for a, b in zip(out_plain, out_cached))
    cache = cached.feature_cache
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} thread(s), {args.busy} busy process(es)")
    print(f"workload: tiny LightHuBERT (2.5 M), {args.epochs} epochs x {args.utterances} clips of {args.seconds:g} s, "
          f"batch {args.batch}")
    print(f"  no cache:   {t_plain:8.2f} s")
    print(f"  with cache: {t_cached:8.2f} s  ({cache.misses} computed, {cache.hits} reused, "
          f"{cache.bytes_held / 2**20:.0f} MB held)")
    print(f"  the cache makes the upstream {t_plain / t_cached:.1f}x faster; last batch identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
