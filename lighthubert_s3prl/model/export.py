"""Writing one subnet of a checkpoint as a compact checkpoint.

A compact checkpoint holds only the chosen subnet's weights (a released small subnet is ~28% of the
official 381 MB file in float32, half that in bfloat16) plus its architecture, in a plain dict that
``torch.load(..., weights_only=True)`` reads. :func:`~lighthubert_s3prl.model.checkpoint.load_checkpoint`
and the ``lighthubert_local -k FILE`` upstream accept it like an official file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .compact import CompactLightHuBERT, compact_payload
from .config import SubnetConfig, count_parameters

STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why and what to do."""


@dataclass
class ExportResult:
    output: Path
    subnet: SubnetConfig
    parameters: int  # counted as the authors' calc_sampled_param_num
    stored_tensors: int  # numbers actually stored in the file
    source_bytes: int
    output_bytes: int
    dtype: str

    def summary(self) -> str:
        ratio = self.output_bytes / self.source_bytes if self.source_bytes else float("nan")
        return "\n".join([
            f"subnet:      {self.subnet.describe()}",
            f"parameters:  {self.parameters:,} ({self.parameters / 1e6:.2f}M, counted as calc_sampled_param_num)",
            f"stored:      {self.stored_tensors:,} numbers as {self.dtype}",
            f"source file: {describe_size(self.source_bytes)}",
            f"output file: {describe_size(self.output_bytes)} ({ratio:.1%} of the source) -> {self.output}",
        ])


def describe_size(n: int) -> str:
    """``n`` bytes as MiB with the exact count beside it."""
    return f"{n / 2**20:.1f} MiB ({n:,} bytes)"


def _storage_dtype(name: str) -> torch.dtype:
    try:
        return STORAGE_DTYPES[str(name).lower()]
    except KeyError:
        raise ExportError(f"dtype {name!r} is not supported; allowed values: float32, float16, bfloat16") from None


def _check_output(output: Path, force: bool) -> None:
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name such as {output / 'model.pt'}")
    if output.exists() and not force:
        raise ExportError(f"output {output} already exists; pass --force to overwrite it")


def build_compact_for(ckpt: Union[str, Path], subnet: Any = None) -> CompactLightHuBERT:
    """Load ``ckpt`` (supernet or compact) and return the dense model of ``subnet`` (a spec or config)."""
    loaded = load_checkpoint(ckpt)
    return CompactLightHuBERT.from_checkpoint(loaded, loaded.subnet(subnet))


def export_compact(
    ckpt: Union[str, Path],
    subnet: Any = None,
    output: Union[str, Path] = "compact.pt",
    dtype: str = "float32",
    force: bool = False,
) -> ExportResult:
    """Write ``subnet`` of ``ckpt`` as a compact checkpoint at ``output`` (atomically)."""
    output = Path(output)
    storage = _storage_dtype(dtype)
    _check_output(output, force)
    source = Path(ckpt)
    model = build_compact_for(source, subnet)
    payload = compact_payload(model, source=source.name, dtype=storage)
    save_checkpoint(output, payload)
    return ExportResult(
        output=output,
        subnet=model.subnet,
        parameters=count_parameters(model.subnet, model.cfg),
        stored_tensors=sum(t.numel() for t in payload["model"].values()),
        source_bytes=source.stat().st_size,
        output_bytes=output.stat().st_size,
        dtype=str(storage).replace("torch.", ""),
    )
