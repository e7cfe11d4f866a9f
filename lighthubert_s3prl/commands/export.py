"""``lighthubert-s3prl export``: write one subnet of a checkpoint in the form the user's next tool wants: a
compact checkpoint (this package, s3prl), a SUPERB hidden-set folder, a ``transformers`` HubertModel folder,
or an ONNX graph.

The writing itself is :mod:`lighthubert_s3prl.model.export`, :mod:`~lighthubert_s3prl.model.hf_export`,
:mod:`~lighthubert_s3prl.model.onnx_export` and :mod:`lighthubert_s3prl.upstream.hidden_set`; this module is
the command line.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import List, Optional, Tuple

from ..model.checkpoint import CheckpointError, load_checkpoint
from ..model.config import ConfigError, count_parameters, preset_names
from ..model.export import ExportError, describe_size, export_compact
from ..model.hf_export import export_hf
from ..model.onnx_export import DEFAULT_OPSET, OPSETS, export_onnx
from ..upstream.hidden_set import write_hidden_set_folder

SUBNET_HELP = (
    "which subnet: a preset (" + ", ".join(preset_names()) + "), random:SPACE:SEED, budget:SPACE:PARAMS "
    "or a subnet YAML/JSON file; default: the checkpoint's own subnet"
)


FORMATS = ("compact", "hidden-set", "hf", "onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl export",
        description="Write one subnet of a LightHuBERT checkpoint as a compact checkpoint (only that subnet's "
                    "weights; loads with load_checkpoint and `-u lighthubert_local -k OUT`), a SUPERB hidden-set "
                    "folder, a transformers HubertModel folder, or an ONNX graph.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            formats:
              compact     a checkpoint holding only the subnet (default)
              hidden-set  a SUPERB hidden-set folder (expert.py, model.pt, requirements.txt, README.md,
                          .gitattributes and the inference code it needs, so evaluators install only torch)
              hf          a folder HubertModel.from_pretrained() loads (config.json, model.safetensors,
                          preprocessor_config.json); subnets with the same heads and FFN width in every layer
                          only; needs: pip install 'lighthubert-s3prl[hf]'
              onnx        one .onnx file, any subnet: waveforms and lengths in, every hidden state out, dynamic
                          batch and length; needs: pip install 'lighthubert-s3prl[onnx]'

            examples:
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet small -o small_compact.pt
              lighthubert-s3prl export --ckpt lighthubert_base.pt --subnet budget:base:50e6 -o b50.pt --dtype bfloat16
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet small --format hidden-set submission/
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet small --format hf hubert_small/
              lighthubert-s3prl export --ckpt lighthubert_small.pt --subnet random:small:7 --format onnx s7.onnx
            """),
    )
    parser.add_argument("--ckpt", required=True, help="supernet checkpoint (official format) or a compact export")
    parser.add_argument("--subnet", default=None, help=SUBNET_HELP)
    parser.add_argument("--format", choices=FORMATS, default=None, help="what to write (default compact)")
    parser.add_argument("output", nargs="?", help="file (compact, onnx) or folder (hidden-set, hf) to write")
    parser.add_argument("-o", "--output", dest="output_option", metavar="OUTPUT", help="the same as OUTPUT")
    parser.add_argument("--hidden-set", metavar="DIR", help="the same as --format hidden-set DIR")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="storage dtype of a compact or hidden-set export's weights (default float32; loading "
                             "computes in float32 unless the upstream's dtype option says otherwise)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=OPSETS, metavar="N",
                        help=f"ONNX opset of --format onnx ({OPSETS[0]}-{OPSETS[-1]}, default {DEFAULT_OPSET})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    return parser


def _target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tuple[str, str]:
    """(format, output) from the ways the command line can say them; a contradiction is a usage error."""
    outputs = [o for o in (args.output, args.output_option, args.hidden_set) if o]
    if len(outputs) != 1:
        parser.error("give exactly one output: OUTPUT, -o OUTPUT or --hidden-set DIR")
    fmt = args.format or ("hidden-set" if args.hidden_set else "compact")
    if args.hidden_set and fmt != "hidden-set":
        parser.error(f"--hidden-set writes a hidden-set folder; it cannot be combined with --format {fmt}")
    if fmt in ("hf", "onnx") and args.dtype != "float32":
        parser.error(f"--dtype applies to compact and hidden-set exports; --format {fmt} writes float32")
    return fmt, outputs[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt, output = _target(parser, args)
    try:
        if fmt == "hidden-set":
            folder = write_hidden_set_folder(args.ckpt, args.subnet, output, args.dtype, args.force)
            model_file = folder / "model.pt"
            loaded = load_checkpoint(model_file)
            print(f"hidden-set folder: {folder}")
            print(f"subnet:      {loaded.default_subnet.describe()}")
            print(f"parameters:  {count_parameters(loaded.default_subnet, loaded.model_cfg):,}")
            print(f"model.pt:    {describe_size(model_file.stat().st_size)}; "
                  f"source file: {describe_size(Path(args.ckpt).stat().st_size)}")
            return 0
        if fmt == "hf":
            result = export_hf(args.ckpt, args.subnet, output, force=args.force)
        elif fmt == "onnx":
            result = export_onnx(args.ckpt, args.subnet, output, force=args.force, opset=args.opset)
        else:
            result = export_compact(args.ckpt, args.subnet, output, args.dtype, args.force)
    except (ExportError, CheckpointError, ConfigError) as err:
        print(f"lighthubert-s3prl export: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
