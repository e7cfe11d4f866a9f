"""s3prl upstream for EKD / DistilHuBERT-style students: ``distiller_local -k model.pt``.

An EKD output is an ordinary LightHuBERT checkpoint (so ``lighthubert_local`` loads it too) plus its
prediction heads under the top-level key ``ekd_heads``. This entry adds what s3prl's own DistilHuBERT
upstream offers: ``paper`` (the last layer) and ``pred_heads`` (each head's output, select one with
``-s pred_heads -l N``), beside the usual ``hidden_states``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

from ..model.checkpoint import CheckpointError
from .expert import UpstreamExpert


class DistillerExpert(UpstreamExpert):
    def __init__(self, ckpt: Union[str, Path], model_config: Optional[Union[str, Path]] = None, **kwargs: Any) -> None:
        super().__init__(ckpt, model_config=model_config, **kwargs)
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
        heads: Dict[str, torch.Tensor] = data.get("ekd_heads") or {}
        self.pred_heads = nn.ModuleList()
        count = len({k.split(".")[0] for k in heads})
        for i in range(count):
            weight, bias = heads[f"{i}.weight"], heads.get(f"{i}.bias")
            if weight.size(1) != self.subnet.embed_dim:  # heads were trained on one subnet's width only
                self.pred_heads = nn.ModuleList()
                break
            head = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
            with torch.no_grad():
                head.weight.copy_(weight)
                if bias is not None:
                    head.bias.copy_(bias)
            self.pred_heads.append(head)
        self.pred_heads.to(self.compute_dtype)
        self.head_info = (data.get("ekd") or {}).get("heads", [])

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, Any]:
        out = super().forward(wavs)
        last = out["last_hidden_state"]
        out["paper"] = last
        if len(self.pred_heads):
            out["pred_heads"] = [head(last.to(self.compute_dtype)).float() for head in self.pred_heads]
        return out


def distiller_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs: Any) -> DistillerExpert:
    """An EKD / distilled student written by ``lighthubert-s3prl train ekd`` (-k PATH)."""
    if not ckpt:
        raise CheckpointError("distiller_local needs a checkpoint: pass -k /path/to/model.pt (an EKD run's output)")
    kwargs.pop("refresh", None)
    return DistillerExpert(ckpt, model_config=model_config, **kwargs)
