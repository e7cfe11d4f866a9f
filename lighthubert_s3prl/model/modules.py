"""Building blocks shared by the supernet and the compact model.

Every block keeps the parameter names of the released checkpoints, so ``state_dict`` keys match the
official files. Blocks that the supernet slices take the wanted sizes at call time; when the sizes equal
the stored ones, slicing returns the parameters themselves (no copy), which is what the compact model
relies on.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import HEAD_DIM

LN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------------
# CNN feature extractor (never sliced)
class _Transpose(nn.Module):
    """Placeholder that keeps the released key layout ``conv_layers.{i}.2.1.*`` for layer_norm mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


def conv_output_lengths(lengths: torch.Tensor, conv_layers: Sequence[Tuple[int, int, int]]) -> torch.Tensor:
    """Frames a waveform of ``lengths`` samples yields through the CNN (floor((L - k) / s) + 1 per conv)."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class ConvFeatureExtractor(nn.Module):
    """wav2vec2/HuBERT CNN: ``default`` mode (GroupNorm after conv 0) or ``layer_norm`` mode (LN after each)."""

    def __init__(self, conv_layers: Sequence[Tuple[int, int, int]], mode: str, conv_bias: bool) -> None:
        super().__init__()
        self.mode = mode
        self.conv_spec = list(conv_layers)
        blocks = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            conv = nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=conv_bias)
            if mode == "layer_norm":
                norm = nn.Sequential(_Transpose(), nn.LayerNorm(dim), _Transpose())
                block = nn.Sequential(conv, nn.Dropout(0.0), norm, nn.GELU())
            elif i == 0:
                block = nn.Sequential(conv, nn.Dropout(0.0), nn.GroupNorm(dim, dim, affine=True), nn.GELU())
            else:
                block = nn.Sequential(conv, nn.Dropout(0.0), nn.GELU())
            blocks.append(block)
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) samples to (B, C, T) features.

        With ``lengths``, the GroupNorm of ``default`` mode takes its statistics over each utterance's own
        frames, so padding a batch does not change any utterance's features.
        """
        x = wav.unsqueeze(1)
        for i, block in enumerate(self.conv_layers):
            x = block[0](x)
            norm = block[2] if len(block) == 4 else None
            if isinstance(norm, nn.GroupNorm):
                x = self._group_norm(x, norm, None if lengths is None else conv_output_lengths(lengths, self.conv_spec[:1]))
            elif norm is not None:
                x = self._layer_norm(x, norm[1])
            x = F.gelu(x)
        return x

    @staticmethod
    def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
        """Channel LayerNorm of ``layer_norm`` mode, in float32 as the original."""
        y = F.layer_norm(x.transpose(1, 2).float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
        return y.type_as(x).transpose(1, 2)

    @staticmethod
    def _group_norm(x: torch.Tensor, norm: nn.GroupNorm, frames: Optional[torch.Tensor]) -> torch.Tensor:
        xf = x.float()
        if frames is None:
            y = F.group_norm(xf, norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
            return y.type_as(x)
        # one group per channel: normalise each channel over the utterance's valid frames only
        valid = (torch.arange(x.size(-1), device=x.device)[None, :] < frames[:, None]).unsqueeze(1)
        count = valid.sum(-1, keepdim=True).clamp(min=1)
        mean = (xf * valid).sum(-1, keepdim=True) / count
        var = (((xf - mean) * valid) ** 2).sum(-1, keepdim=True) / count
        y = (xf - mean) * torch.rsqrt(var + norm.eps)
        y = y * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
        return y.type_as(x)


# ---------------------------------------------------------------------------------------------------
class PositionalConv(nn.Module):
    """Grouped convolutional position embedding with weight norm over each kernel tap (dim=2).

    The supernet keeps ``weight_g``/``weight_v`` as stored; the weight is normalised on the full tensor
    and then sliced to ``[:E, :E // groups]`` with the group count unchanged. A compact model stores the
    already-sliced weight in ``weight`` instead.
    """

    def __init__(self, dim: int, kernel: int, groups: int, dense: bool = False) -> None:
        super().__init__()
        self.kernel, self.groups = kernel, groups
        if dense:
            self.weight = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        else:
            self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
            self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))

    def full_weight(self) -> torch.Tensor:
        if hasattr(self, "weight"):
            return self.weight
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor, embed_dim: int) -> torch.Tensor:
        """(B, T, E) to (B, T, E): GELU(conv(x)) with the trailing frame of the even kernel dropped."""
        weight = self.full_weight()
        if embed_dim != weight.size(0):
            weight = weight[:embed_dim, : embed_dim // self.groups]
        y = F.conv1d(x.transpose(1, 2), weight, self.bias[:embed_dim], padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------
class LayerDims(NamedTuple):
    embed: int
    atten: int
    ffn: int


class SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, atten_dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(embed_dim, atten_dim)
        self.k_proj = nn.Linear(embed_dim, atten_dim)
        self.v_proj = nn.Linear(embed_dim, atten_dim)
        self.out_proj = nn.Linear(atten_dim, embed_dim)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], E: int, A: int,
                segments: Optional[Sequence[Tuple[int, int]]] = None) -> torch.Tensor:
        """``segments``: ``x`` (batch 1) holds several utterances' frames one after another, ``[a, b)`` each; every
        frame attends to its own utterance only, so the projections run as one large product for all of them."""
        B, T, _ = x.shape
        h = A // HEAD_DIM

        def project(lin: nn.Linear) -> torch.Tensor:
            y = F.linear(x, _lead(lin.weight, A, E), _lead(lin.bias, A))
            return y.view(B, T, h, HEAD_DIM).transpose(1, 2)

        # dropout inside attention is never applied by the original model, in training either
        q, k, v = project(self.q_proj), project(self.k_proj), project(self.v_proj)
        if segments is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
                             for a, b in segments], dim=2)
        out = out.transpose(1, 2).reshape(B, T, A)
        return F.linear(out, _lead(self.out_proj.weight, E, A), _lead(self.out_proj.bias, E))


def _lead(t: torch.Tensor, *sizes: int) -> torch.Tensor:
    """Leading slice ``t[:s0, :s1]``; the tensor itself when nothing is cut."""
    if all(s == d for s, d in zip(sizes, t.shape)):
        return t
    return t[tuple(slice(0, s) for s in sizes)]


def ffn_rows(embed: int, ffn: int, chunk: int, full_ffn: int) -> List[Tuple[int, int]]:
    """Row ranges of the FFN hidden units a subnet uses: a leading part of each ``chunk``-sized block.

    The supernet's 3072 hidden units are 4 blocks of 768; an ``(E, F)`` subnet takes
    ``[chunk*i, chunk*i + min(E, F - i*E))`` for each block i it needs.
    """
    if ffn == full_ffn:
        return [(0, full_ffn)]
    ranges = []
    i = 0
    while i * embed < ffn:
        start = chunk * i
        ranges.append((start, start + min(embed, ffn - i * embed)))
        i += 1
    return ranges


class EncoderLayer(nn.Module):
    """Post-LN (or pre-LN) transformer layer with sliceable width, heads and FFN."""

    def __init__(self, embed_dim: int, atten_dim: int, ffn_dim: int, layer_norm_first: bool) -> None:
        super().__init__()
        self.embed_dim, self.ffn_dim = embed_dim, ffn_dim
        self.layer_norm_first = layer_norm_first
        self.dropout = 0.0  # set from the model config by the owning model
        self.activation_dropout = 0.0
        self.self_attn = SelfAttention(embed_dim, atten_dim)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def _ffn(self, x: torch.Tensor, E: int, Fd: int) -> torch.Tensor:
        rows = ffn_rows(E, Fd, self.embed_dim, self.ffn_dim)
        w1, b1, w2 = self.fc1.weight, self.fc1.bias, self.fc2.weight
        if rows != [(0, self.ffn_dim)]:
            w1 = torch.cat([w1[a:b] for a, b in rows])
            b1 = torch.cat([b1[a:b] for a, b in rows])
            w2 = torch.cat([w2[:, a:b] for a, b in rows], dim=1)
        hidden = F.linear(x, _lead(w1, w1.size(0), E), b1)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        hidden = F.dropout(hidden, self.activation_dropout, self.training)
        return F.linear(hidden, _lead(w2, E, w2.size(1)), _lead(self.fc2.bias, E))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], dims: LayerDims,
                segments: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the layer output and the FFN output before its residual add (data2vec-style target);
        ``segments`` as in :meth:`SelfAttention.forward` (every other step works frame by frame)."""
        E, A, Fd = dims
        ln1 = lambda t: F.layer_norm(t, (E,), _lead(self.self_attn_layer_norm.weight, E),  # noqa: E731
                                     _lead(self.self_attn_layer_norm.bias, E), LN_EPS)
        ln2 = lambda t: F.layer_norm(t, (E,), _lead(self.final_layer_norm.weight, E),  # noqa: E731
                                     _lead(self.final_layer_norm.bias, E), LN_EPS)
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        if self.layer_norm_first:
            x = x + drop(self.self_attn(ln1(x), attn_mask, E, A, segments))
            ffn_out = self._ffn(ln2(x), E, Fd)
            return x + drop(ffn_out), ffn_out
        x = ln1(x + drop(self.self_attn(x, attn_mask, E, A, segments)))
        ffn_out = self._ffn(x, E, Fd)
        return ln2(x + drop(ffn_out)), ffn_out
