"""Distillation targets and losses.

Targets: a chosen set of teacher layers (by default the last 8 FFN outputs, as LightHuBERT following
data2vec), each optionally normalised, then averaged. EKD: the same per-layer normalisation, then the
teachers' layers are averaged or concatenated head by head. Losses are means over the selected frames.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..model.config import ConfigError
from .config import TargetConfig, parse_layer_spec


def resolve_layers(spec, available: int, what: str, key: str) -> List[int]:
    """Turn a layer spec into non-negative indices of a list of ``available`` entries, or explain the mismatch."""
    picked = []
    for i in parse_layer_spec(spec, key):
        j = i + available if i < 0 else i
        if not 0 <= j < available:
            raise ConfigError(
                f"{key}={spec!r} asks for {what} index {i}, but the teacher has {available} {what} "
                f"(valid indices 0..{available - 1} or -{available}..-1); choose layers it has"
            )
        picked.append(j)
    return picked


def masked_instance_norm(x: torch.Tensor, valid: Optional[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel over the valid frames of each utterance (data2vec's instance norm, padding-aware)."""
    if valid is None:
        return F.instance_norm(x.transpose(1, 2).float(), eps=eps).transpose(1, 2)
    w = valid[..., None].float()
    count = w.sum(1, keepdim=True).clamp(min=1)
    mean = (x * w).sum(1, keepdim=True) / count
    var = (((x - mean) * w) ** 2).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * w


def normalise(x: torch.Tensor, kind: str, valid: Optional[torch.Tensor]) -> torch.Tensor:
    if kind == "instance":
        return masked_instance_norm(x, valid)
    if kind == "layer":
        return F.layer_norm(x.float(), x.shape[-1:])
    return x


def layer_average(layers: Sequence[torch.Tensor], cfg: TargetConfig, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """The stage-1/2 target: per-layer norm, mean over layers, final norm."""
    stacked = [normalise(x, cfg.per_layer_norm, valid) for x in layers]
    target = torch.stack(stacked).mean(0)
    return normalise(target, cfg.final_norm, valid)


def aggregate(per_teacher: Sequence[torch.Tensor], mode: str) -> torch.Tensor:
    """EKD: combine one layer of each teacher: ``average`` (same width needed) or ``concat`` along features."""
    if mode == "average":
        widths = {x.size(-1) for x in per_teacher}
        if len(widths) != 1:
            raise ConfigError(
                f"ekd.aggregation=average needs teachers of equal width, got widths {sorted(widths)}; "
                f"use ekd.aggregation=concat or separate"
            )
        return torch.stack(list(per_teacher)).mean(0)
    return torch.cat(list(per_teacher), dim=-1)


def distill_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    frames: Optional[torch.Tensor],
    kind: str = "l1",
    cos_weight: float = 1.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean loss over the frames selected by ``frames`` (B, T) (all when None); returns (loss, stats).

    ``l1_cos`` is DistilHuBERT's: mean |pred - target| minus ``cos_weight`` x log sigmoid(cosine), both
    averaged over frames.
    """
    pred, target = pred.float(), target.float()
    if frames is not None:
        pred, target = pred[frames], target[frames]
    else:
        pred, target = pred.reshape(-1, pred.size(-1)), target.reshape(-1, target.size(-1))
    if pred.numel() == 0:  # no frame selected in this batch: contribute nothing, keep the graph
        zero = pred.sum() * 0.0
        return zero, {"l1": zero.detach()}
    stats: Dict[str, torch.Tensor] = {}
    l1 = (pred - target).abs().mean()
    stats["l1"] = l1.detach()
    if kind == "l1":
        loss = l1
    elif kind == "l2":
        loss = F.mse_loss(pred, target)
    elif kind == "smooth_l1":
        loss = F.smooth_l1_loss(pred, target)
    elif kind == "l1_cos":
        cos = F.cosine_similarity(pred, target, dim=-1)
        stats["cos"] = cos.mean().detach()
        loss = l1 - cos_weight * F.logsigmoid(cos).mean()
    else:
        raise ConfigError(f"loss.type={kind!r} is not allowed; allowed values: ['l1', 'l2', 'smooth_l1', 'l1_cos']")
    return loss, stats


def frame_selection(valid: torch.Tensor, mask: Optional[torch.Tensor], which: str) -> torch.Tensor:
    """Frames that count in the loss: valid ones, restricted to the masked or unmasked ones if asked."""
    if mask is None or which == "all":
        return valid
    return valid & mask if which == "masked" else valid & ~mask
