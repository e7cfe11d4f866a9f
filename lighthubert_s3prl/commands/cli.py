"""``lighthubert-s3prl`` command line: one entry point, one module per command.

Each command lives in its own module as ``main(argv) -> int`` and is imported only when called, so
``--help`` and light commands start fast.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Dict, List, Optional, Tuple

# name -> (module:function, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("lighthubert_s3prl.commands.demo:main",
             "write a seeded checkpoint, pick a subnet, extract features, print shapes"),
    "subnet": ("lighthubert_s3prl.commands.subnet:main", "show, count, sample or search subnets; write subnet YAML"),
    "make-checkpoint": ("lighthubert_s3prl.commands.subnet:make_checkpoint_main",
                        "write a seeded random checkpoint in the official format"),
    "downstream": ("lighthubert_s3prl.upstream.run_downstream:main",
                   "s3prl run_downstream with the LightHuBERT names registered"),
    "make-corpus": ("lighthubert_s3prl.superb.corpus:main", "synthesise the offline mini-SUPERB corpus"),
    "quickstart": ("lighthubert_s3prl.commands.quickstart:main",
                   "mini-SUPERB of random, distilled and fbank rows, with the table"),
    "reproduce-mini": ("lighthubert_s3prl.commands.reproduce_mini:main",
                       "LightHuBERT's pipeline in miniature: stage 1, stage 2, search, mini-SUPERB, the claims"),
    "collect": ("lighthubert_s3prl.superb.collect:main", "collect s3prl results into the paper-style table"),
    "package": ("lighthubert_s3prl.superb.package:main", "build leaderboard submission archives"),
    "export": ("lighthubert_s3prl.commands.export:main", "write a compact checkpoint holding one subnet"),
    "profile": ("lighthubert_s3prl.commands.profile:main", "parameters, MACs and real-time factor of a subnet"),
    "train": ("lighthubert_s3prl.training.cli:main", "stage-1 / stage-2 (once-for-all) / EKD distillation"),
    "search": ("lighthubert_s3prl.training.search:main", "search a subnet under a parameter or MAC budget"),
}


def _usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None, prog: str = "lighthubert-s3prl") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(prog))
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from ..model.checkpoint import CheckpointError
    from ..model.config import ConfigError

    try:
        return int(func(rest) or 0)
    except (CheckpointError, ConfigError) as err:
        print(f"{prog} {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
