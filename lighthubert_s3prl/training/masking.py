"""Span masking of student input frames (HuBERT/data2vec style), written from the description only.

Each utterance gets ``round_random(prob * T / length)`` spans (at least ``min_spans``) of ``length``
frames with uniformly drawn starts inside its valid frames; spans may overlap, so the masked fraction is
below ``prob`` (as in the original recipe). All draws come from the caller's generator, so masks are
reproducible step by step.
"""
from __future__ import annotations

from typing import Optional

import torch


def sample_span_mask(
    frame_lengths: torch.Tensor,
    max_frames: int,
    prob: float = 0.65,
    length: int = 10,
    min_spans: int = 2,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(B, max_frames) bool mask, True on masked frames; padded frames are never masked."""
    lengths = frame_lengths.detach().to("cpu", torch.long).clamp(min=0, max=max_frames)
    B = lengths.numel()
    mask = torch.zeros(B, max_frames, dtype=torch.bool)
    if prob <= 0 or B == 0 or max_frames == 0:
        return mask
    span = torch.clamp(torch.minimum(torch.full_like(lengths, length), lengths - 1), min=1)
    # probabilistic rounding keeps the expected number of spans at prob * T / length
    expected = prob * lengths.double() / length
    counts = (expected + torch.rand(B, generator=generator, dtype=torch.float64)).floor().long()
    counts = torch.maximum(counts, torch.full_like(counts, min_spans))
    counts = torch.where(lengths > 1, counts, torch.zeros_like(counts))
    most = int(counts.max())
    if most == 0:
        return mask
    room = (lengths - span + 1).clamp(min=1)  # number of valid start positions
    starts = (torch.rand(B, most, generator=generator, dtype=torch.float64) * room[:, None]).floor().long()
    used = torch.arange(most)[None, :] < counts[:, None]
    frames = torch.arange(max_frames)
    for j in range(most):  # `most` is small (T * prob / length); a loop keeps memory at B x T
        s = starts[:, j: j + 1]
        inside = (frames[None, :] >= s) & (frames[None, :] < s + span[:, None]) & used[:, j: j + 1]
        mask |= inside
    return mask & (frames[None, :] < lengths[:, None])


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """A generator fixed by (seed, step, micro-batch, rank): masks need no saved state to resume exactly."""
    mixed = ((seed * 1_000_003 + step) * 1_009 + micro) * 10_007 + rank
    return torch.Generator().manual_seed(mixed % (2**63 - 1))
