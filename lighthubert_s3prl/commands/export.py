"""``lighthubert-s3prl export``: write one subnet of a supernet checkpoint as a compact checkpoint, or as a
SUPERB hidden-set folder.

The writing itself is :func:`lighthubert_s3prl.model.export.export_compact` and
:func:`lighthubert_s3prl.upstream.hidden_set.write_hidden_set_folder`; this module is the command line.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

from ..model.checkpoint import CheckpointError, load_checkpoint
from ..model.config import ConfigError, count_parameters, preset_names
from ..model.export import ExportError, describe_size, export_compact
from ..upstream.hidden_set import write_hidden_set_folder

SUBNET_HELP = (
    "which subnet: a preset (" + ", ".join(preset_names()) + "), random:SPACE:SEED, budget:SPACE:PARAMS "
    "or a subnet YAML/JSON file; default: the checkpoint's own subnet"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl export",
        description="Write one subnet of a LightHuBERT checkpoint as a compact checkpoint (only that subnet's "
                    "weights; loads with load_checkpoint and `-u lighthubert_local -k OUT`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet small -o small_compact.pt
              lighthubert-s3prl export --ckpt lighthubert_base.pt --subnet budget:base:50e6 -o b50.pt --dtype bfloat16
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet small --hidden-set submission/
            """),
    )
    parser.add_argument("--ckpt", required=True, help="supernet checkpoint (official format) or a compact export")
    parser.add_argument("--subnet", default=None, help=SUBNET_HELP)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", help="compact checkpoint to write")
    target.add_argument("--hidden-set", metavar="DIR",
                        help="write a SUPERB hidden-set folder (expert.py, model.pt, requirements.txt, README.md, "
                             ".gitattributes and the inference code it needs, so evaluators install only torch)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="storage dtype of the weights (default float32; loading computes in float32 unless "
                             "the upstream's dtype option says otherwise)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.hidden_set:
            folder = write_hidden_set_folder(args.ckpt, args.subnet, args.hidden_set, args.dtype, args.force)
            model_file = folder / "model.pt"
            loaded = load_checkpoint(model_file)
            print(f"hidden-set folder: {folder}")
            print(f"subnet:      {loaded.default_subnet.describe()}")
            print(f"parameters:  {count_parameters(loaded.default_subnet, loaded.model_cfg):,}")
            print(f"model.pt:    {describe_size(model_file.stat().st_size)}; "
                  f"source file: {describe_size(Path(args.ckpt).stat().st_size)}")
            return 0
        result = export_compact(args.ckpt, args.subnet, args.output, args.dtype, args.force)
    except (ExportError, CheckpointError, ConfigError) as err:
        print(f"lighthubert-s3prl export: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
