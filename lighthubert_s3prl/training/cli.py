"""``lighthubert-s3prl train stage1|stage2|ekd CONFIG [--override key=value ...]``.

Runs on one process, or on several under torchrun (gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node 4 -m lighthubert_s3prl train stage2 configs/train/stage2_small.yaml
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

import yaml

from .config import STAGES, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl train",
        description="LightHuBERT compression training: stage 1 (distil a full-size student), stage 2 "
                    "(once-for-all supernet) or ekd (ensemble knowledge distillation).",
    )
    parser.add_argument("stage", choices=STAGES, help="which training to run")
    parser.add_argument("config", help="training YAML (see configs/train/)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting, e.g. train.steps=100 or teacher.name=hubert_base (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.override, args.stage)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if int(os.environ.get("RANK", "0")) != 0:  # one process reports; the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    from .trainer import train

    result = train(cfg)
    state = "stopped (resumable)" if result.interrupted else "finished"
    if int(os.environ.get("RANK", "0")) == 0:
        last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"{cfg.stage} {state} at step {result.step}{last}; model: {result.model_path}")
    return 0


if __name__ == "__main__":  # `lighthubert-s3prl train` is the documented way; this keeps -m working
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
