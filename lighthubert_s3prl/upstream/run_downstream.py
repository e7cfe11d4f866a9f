"""Run s3prl's own ``run_downstream`` with the LightHuBERT entries registered.

s3prl resolves ``-u NAME`` with ``getattr(s3prl.hub, NAME)`` and has no plugin discovery, so the names
are added to that module in this process before s3prl parses its arguments. Every s3prl flag passes
through unchanged::

    python -m lighthubert_s3prl.run_downstream -m train -u lighthubert_small -d speech_commands -n ks
    lighthubert-s3prl-downstream -m train -u lighthubert_subnet -k ckpt.pt -g subnet.yaml -d fluent_commands -n ic
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from .registration import register

logger = logging.getLogger(__name__)


def prepare_runtime() -> None:
    """Fixes s3prl 0.4.18 needs on current torch, applied once per process."""
    import torch

    # s3prl checkpoints pickle argparse.Namespace; torch>=2.6 loads with weights_only=True by default,
    # which refuses it, breaking -e (evaluate/resume) and -a (auto-resume)
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        from . import recipe_patches
    except ImportError:
        return
    recipe_patches.apply()


def prepare_hub() -> None:
    """s3prl's hub as our launcher sees it: only the asked-for upstream imported, our entries registered,
    the runtime fixes applied. Call before ``s3prl.hub`` is imported."""
    from . import lazy_hub

    lazy_hub.install_unless_disabled()
    prepare_runtime()
    register()


def _normalise_distributed_args(argv: List[str]) -> List[str]:
    """s3prl only knows ``--local_rank N``: map torch.distributed.launch's ``--local-rank=N`` and torchrun's env."""
    out: List[str] = []
    for arg in argv:
        if arg.startswith("--local-rank="):
            out += ["--local_rank", arg.split("=", 1)[1]]
        elif arg == "--local-rank":
            out.append("--local_rank")
        else:
            out.append(arg)
    if "--local_rank" not in out and "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        out += ["--local_rank", os.environ["LOCAL_RANK"]]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prepare_hub()
    from s3prl import run_downstream

    saved = sys.argv
    sys.argv = ["run_downstream.py"] + _normalise_distributed_args(argv)
    try:
        run_downstream.main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
