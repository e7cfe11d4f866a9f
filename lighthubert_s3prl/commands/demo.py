"""The built-in main job: checkpoint, subnet, features, with nothing downloaded.

Writes a seeded random checkpoint in the official format (unless ``--ckpt`` names a real one), selects
a subnet, runs the s3prl upstream on a generated waveform and prints the subnet, its parameter count and
every hidden state's shape.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Optional

import torch


def synth_waveform(seconds: float = 2.0, seed: int = 0, sample_rate: int = 16000) -> torch.Tensor:
    """A speech-like test signal: a gliding harmonic tone with syllable-rate amplitude and a little noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 30 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + torch.sin(2 * math.pi * 4 * t)).clamp(min=0)
    return (0.3 * voiced * envelope + 0.01 * torch.randn(t.shape, generator=gen)).float()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lighthubert-s3prl demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a LightHuBERT checkpoint; default: write a seeded random one to --workdir")
    parser.add_argument("--kind", default="small", choices=["small", "base", "stage1"],
                        help="which official file to imitate when generating (default: small)")
    parser.add_argument("--subnet", default=None,
                        help="preset (small, base, stage1, small-max, ...), random:SPACE:SEED, budget:SPACE:PARAMS "
                             "or a subnet YAML/JSON; default: the checkpoint's own subnet")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the generated waveform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="lighthubert_demo", help="where the generated checkpoint goes")
    parser.add_argument("--implementation", default="compact", choices=["compact", "supernet"])
    args = parser.parse_args(argv)

    from ..model.checkpoint import write_random_checkpoint
    from ..upstream.expert import UpstreamExpert

    ckpt = Path(args.ckpt) if args.ckpt else Path(args.workdir) / f"random_lighthubert_{args.kind}_seed{args.seed}.pt"
    if not args.ckpt:
        if ckpt.is_file():
            print(f"checkpoint: {ckpt} (seeded random, official format; reused)")
        else:
            write_random_checkpoint(ckpt, args.kind, seed=args.seed)
            print(f"checkpoint: {ckpt} (seeded random, official format; written)")
    else:
        print(f"checkpoint: {ckpt}")
    upstream = UpstreamExpert(str(ckpt), subnet=args.subnet, implementation=args.implementation).eval()
    sub = upstream.subnet
    print(f"subnet: {sub.describe()}")
    print(f"subnet dict: {sub.to_dict()}")
    print(f"parameters: {upstream.num_parameters:,}")
    wavs = [synth_waveform(args.seconds, args.seed), synth_waveform(args.seconds * 0.6, args.seed + 1)]
    with torch.inference_mode():
        out = upstream(wavs)
    print(f"input: {len(wavs)} waveforms of {[len(w) for w in wavs]} samples at 16 kHz; "
          f"downsample rate {upstream.get_downsample_rates('hidden_states')}")
    for i, h in enumerate(out["hidden_states"]):
        name = "projected CNN features" if i == 0 else f"layer {i}"
        print(f"hidden_states[{i:2d}] {tuple(h.shape)}  ({name})")
    return 0
