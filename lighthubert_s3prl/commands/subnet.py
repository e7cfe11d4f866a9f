"""``lighthubert-s3prl subnet`` and ``make-checkpoint``: inspect subnets and write test checkpoints."""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

from ..model.config import (
    SEARCH_SPACES,
    ModelConfig,
    count_parameters,
    get_search_space,
    largest_subnet_under_budget,
    preset_names,
    resolve_subnet,
    save_subnet_file,
)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl subnet",
        description="Show a subnet and its parameter count, sample one with a seed, or find the largest subnet "
                    "under a parameter budget; optionally write it as a subnet YAML for -g.",
    )
    parser.add_argument("spec", nargs="?", default=None,
                        help=f"preset ({', '.join(preset_names())}), random:SPACE:SEED, budget:SPACE:PARAMS, or a file")
    parser.add_argument("--space", choices=sorted(SEARCH_SPACES), help="with --seed or --budget: the search space")
    parser.add_argument("--seed", type=int, help="sample a subnet of --space with this seed")
    parser.add_argument("--budget", type=float, help="largest subnet of --space with at most this many parameters")
    parser.add_argument("--spaces", action="store_true", help="list the search spaces and their sizes")
    parser.add_argument("-o", "--output", help="write the subnet to this YAML/JSON file")
    parser.add_argument("--json", action="store_true", help="print the subnet dict as JSON only")
    args = parser.parse_args(argv)

    if args.spaces:
        for name, space in SEARCH_SPACES.items():
            print(f"{name}: {space.size:,} subnets; {json.dumps(space.to_dict())}")
        return 0
    spec = args.spec
    if args.seed is not None or args.budget is not None:
        if not args.space:
            parser.error("--seed and --budget need --space small|base")
        space = get_search_space(args.space)
        if args.seed is not None:
            spec = space.sample(args.seed)
        else:
            spec = largest_subnet_under_budget(space, int(args.budget))
    if spec is None:
        parser.error("give a subnet spec, or --space with --seed/--budget, or --spaces")
    subnet = resolve_subnet(spec)
    params = count_parameters(subnet, ModelConfig())
    if args.json:
        print(json.dumps(subnet.to_dict()))
    else:
        print(f"subnet: {subnet.describe()}")
        print(f"parameters: {params:,} (standard 768-wide supernet, 'default' CNN mode)")
        print(f"dict: {json.dumps(subnet.to_dict())}")
    if args.output:
        save_subnet_file(subnet, args.output, params=params)
        print(f"wrote {args.output}")
    return 0


def make_checkpoint_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl make-checkpoint",
        description="Write a seeded random LightHuBERT checkpoint in the official format (for tests and demos).",
    )
    parser.add_argument("output", help="path of the .pt file to write")
    parser.add_argument("--kind", default="small", choices=["small", "base", "stage1"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 128-wide supernet with a 64-channel CNN (fast tests)")
    parser.add_argument("--extractor-mode", choices=["default", "layer_norm"], default="default")
    args = parser.parse_args(argv)
    from ..model.checkpoint import tiny_model_config, write_random_checkpoint

    cfg = tiny_model_config(extractor_mode=args.extractor_mode) if args.tiny else ModelConfig(extractor_mode=args.extractor_mode)
    path = write_random_checkpoint(args.output, args.kind, seed=args.seed, model_cfg=cfg)
    print(f"wrote {path}")
    return 0
