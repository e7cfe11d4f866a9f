"""``lighthubert-s3prl profile``: parameters, MACs and measured real-time factor of a subnet.

Parameters and MACs are counted from the dimensions (:mod:`lighthubert_s3prl.model.cost` says how); the
real-time factor is measured here on the compact model.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch

from ..cpu_budget import LoadAwareThreads, choose_threads
from ..hardware import describe_cpu, slow_dtype_reason
from ..model.config import ConfigError, ModelConfig, SubnetConfig, count_parameters, preset_names, resolve_subnet
from ..model.cost import SAMPLE_RATE, frame_counts, macs_breakdown


def measure_rtf(model: torch.nn.Module, seconds: float, device: str = "cpu", repeats: int = 3,
                warmup: int = 1, seed: int = 0, threads: Optional[LoadAwareThreads] = None) -> Dict[str, float]:
    """Median wall time of the compact model on one random utterance; RTF = time / audio duration. With
    ``threads`` each CPU run takes its thread count from it, as the upstream's forwards do."""
    gen = torch.Generator().manual_seed(seed)
    wav = torch.randn(int(round(seconds * SAMPLE_RATE)), generator=gen).to(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if threads is not None and device == "cpu":
                with threads.applied():
                    model.forward_utterances([wav])
            else:
                model.forward_utterances([wav])
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"seconds_per_run": median, "rtf": median / seconds, "runs": len(times)}


def _random_standard_model(subnet: SubnetConfig, seed: int):
    from ..model.compact import CompactLightHuBERT
    from ..model.supernet import LightHuBERTSupernet

    supernet = LightHuBERTSupernet(ModelConfig()).reset_parameters(seed)
    return CompactLightHuBERT.from_supernet(supernet, subnet).eval()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl profile",
        description="Parameters, analytic MACs per second of audio and a measured real-time factor of a subnet "
                    "(compact dense model).",
    )
    parser.add_argument("--ckpt", default=None,
                        help="checkpoint (supernet or compact); default: seeded random weights of the standard "
                             "768-wide supernet")
    parser.add_argument("--subnet", default=None,
                        help="a preset (" + ", ".join(preset_names()) + "), random:SPACE:SEED, budget:SPACE:PARAMS "
                             "or a subnet file; default: the checkpoint's own subnet (small without --ckpt)")
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length in seconds (default 10)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to time it (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="compute dtype for the timing (default float32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the CPUs this process may use, from its affinity and "
                             "cgroup quota)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--no-timing", action="store_true", help="only count parameters and MACs")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..model.checkpoint import CheckpointError, load_checkpoint
    from ..model.compact import CompactLightHuBERT

    try:
        if args.seconds <= 0:
            raise ConfigError(f"--seconds must be positive, got {args.seconds}")
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
        if args.device == "cuda" and not torch.cuda.is_available() and not args.no_timing:
            raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        threads = choose_threads(1, args.threads)
        torch.set_num_threads(threads.threads)
        if args.ckpt:
            loaded = load_checkpoint(args.ckpt)
            model_cfg = loaded.model_cfg
            subnet = loaded.subnet(args.subnet)
            source = args.ckpt
        else:
            loaded, model_cfg = None, ModelConfig()
            subnet = resolve_subnet(args.subnet or "small")
            subnet.validate_for(model_cfg)
            source = "random weights (standard 768-wide supernet, seed 0)"
    except (CheckpointError, ConfigError) as err:
        print(f"lighthubert-s3prl profile: error: {err}", file=sys.stderr)
        return 2

    params = count_parameters(subnet, model_cfg)
    parts = macs_breakdown(subnet, model_cfg, args.seconds)
    total = sum(parts.values())
    frames = frame_counts(model_cfg, int(round(args.seconds * SAMPLE_RATE)))[-1]
    print(f"model:       {source}")
    print(f"subnet:      {subnet.describe()}")
    print(f"parameters:  {params:,} ({params / 1e6:.2f}M)")
    print(f"audio:       {args.seconds:g} s -> {frames} frames")
    print(f"MACs:        {total / 1e9:.3f} G for {args.seconds:g} s = {total / args.seconds / 1e9:.3f} GMACs per "
          f"second of audio")
    for name, value in parts.items():
        note = "  (grows with sequence length)" if name == "attention_scores" else ""
        print(f"  {name:<17} {value / 1e9:9.3f} G  {value / max(total, 1):6.1%}{note}")
    if args.no_timing:
        return 0
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    model = (CompactLightHuBERT.from_checkpoint(loaded, subnet) if loaded is not None
             else _random_standard_model(subnet, seed=0))
    del loaded
    model = model.to(device=args.device, dtype=dtype).eval()
    if args.device == "cpu":
        print(f"cpu:         {describe_cpu()}")
        print(f"threads:     {threads.reason}")
    reason = slow_dtype_reason(dtype, args.device)
    if reason:
        print(f"note:        {reason}")
    with warnings.catch_warnings():  # said once above; the model's own warning would repeat it
        warnings.simplefilter("ignore", RuntimeWarning)
        load_aware = LoadAwareThreads() if args.device == "cpu" else None
        timing = measure_rtf(model, args.seconds, args.device, args.repeats, threads=load_aware)
    used = torch.get_num_threads() if load_aware is None else load_aware.threads or torch.get_num_threads()
    if load_aware is not None:
        chunk = model.feature_extractor.chunk_for(used)
        print(f"cpu mode:    {load_aware.describe()} of {torch.get_num_threads()}, as the upstream chooses per forward "
              f"(cpu_threads: fixed turns it off); CNN in chunks of {chunk} frames at {used} thread(s)")
    threads = f", {used} threads" if args.device == "cpu" else ""
    print(f"real-time factor: {timing['rtf']:.4f} on {args.device} ({args.dtype}{threads}; median of "
          f"{timing['runs']} runs: {timing['seconds_per_run']:.3f} s per {args.seconds:g} s of audio; "
          f"{1 / timing['rtf']:.1f}x faster than real time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
