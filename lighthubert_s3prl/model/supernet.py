"""The LightHuBERT supernet: one 768-wide, 12-layer HuBERT whose weights every subnet slices.

Weights are sliced at each forward so gradients reach the shared tensors (what once-for-all training
needs). For inference of one chosen subnet, :mod:`lighthubert_s3prl.model.compact` materialises it instead.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hardware import slow_dtype_reason
from .config import HEAD_DIM, ModelConfig, SubnetConfig, kept_layers
from .fast_cnn import FoldedConvFeatureExtractor
from .modules import EncoderLayer, LayerDims, PositionalConv, conv_output_lengths

PADDING_MODES = ("exact", "reference")


@dataclass
class ModelOutput:
    """What one forward returns; every tensor is batch-first."""

    hidden_states: List[torch.Tensor]  # [projected CNN features] + [output of each kept layer], (B, T, E)
    padding_mask: Optional[torch.Tensor]  # (B, T) True on padded frames, or None
    layer_results: List[torch.Tensor] = field(default_factory=list)  # FFN output before the residual, per layer
    predictions: Dict[int, torch.Tensor] = field(default_factory=dict)  # distillation head outputs by layer
    features: Optional[torch.Tensor] = None  # CNN features after LayerNorm, before projection (B, T, C)

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]


def reference_frame_padding(sample_padding: torch.Tensor, frames: int) -> torch.Tensor:
    """The original frame mask: trim ``L % T`` samples, split into T blocks, padded if a whole block is."""
    extra = sample_padding.size(1) % frames
    if extra > 0:
        sample_padding = sample_padding[:, :-extra]
    return sample_padding.view(sample_padding.size(0), frames, -1).all(-1)


class LightHuBERTBackbone(nn.Module):
    """Front end, positional conv and encoder loop shared by the supernet and the compact model.

    Subclasses say which layers run at which sizes (:meth:`_plan`) and how wide the encoder is.
    """

    def __init__(self, cfg: ModelConfig, embed_dim: int, dense_pos_conv: bool) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        C = cfg.cnn_dim
        # the plain CNN while training; folded and chunked for inference (same weights and results)
        self.feature_extractor = FoldedConvFeatureExtractor(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(C)
        self.post_extract_proj = nn.Linear(C, embed_dim)
        self.mask_emb = nn.Parameter(torch.zeros(embed_dim))
        self.encoder = nn.Module()
        self.encoder.pos_conv = nn.ModuleList([PositionalConv(embed_dim, cfg.conv_pos, cfg.conv_pos_groups, dense_pos_conv)])
        self.encoder.layer_norm = nn.LayerNorm(embed_dim)
        self.downsample_rate = 1
        for _, _, stride in cfg.conv_layers:
            self.downsample_rate *= stride
        self._warned_dtype = False

    def _warn_if_slow_dtype(self) -> None:
        """Once per model: inference in a dtype this device only emulates (bf16 without AVX512-BF16/AMX,
        fp16 on CPU) is many times slower than float32, which nobody asking for it expects."""
        if self._warned_dtype:
            return
        self._warned_dtype = True
        weight = self.post_extract_proj.weight
        reason = slow_dtype_reason(weight.dtype, weight.device)
        if reason:
            warnings.warn(reason, RuntimeWarning, stacklevel=4)

    # subclasses fill these in
    def _plan(self, subnet: Optional[SubnetConfig]) -> Tuple[int, List[Tuple[EncoderLayer, LayerDims]]]:
        raise NotImplementedError

    def _set_dropouts(self) -> None:
        for layer in self.encoder.layers:
            layer.dropout = self.cfg.dropout
            layer.activation_dropout = self.cfg.activation_dropout

    def frame_padding(self, padding_mask: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
        if mode == "reference":
            return reference_frame_padding(padding_mask, frames)
        lengths = conv_output_lengths((~padding_mask).sum(-1), self.cfg.conv_layers)
        return torch.arange(frames, device=padding_mask.device)[None, :] >= lengths[:, None]

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        subnet: Optional[SubnetConfig] = None,
        mask_indices: Optional[torch.Tensor] = None,
        padding_mode: str = "exact",
        predict: bool = False,
    ) -> ModelOutput:
        """Run the model on (B, L) waveforms.

        ``padding_mask`` is True on padded samples (zero padding at the end). ``padding_mode="exact"``
        gives every utterance the result it would have alone; ``"reference"`` reproduces the original
        code, whose frame mask and CNN GroupNorm see the padding. ``mask_indices`` (B, T) replaces those
        frames with the learned mask embedding (training).
        """
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r}; allowed values: {PADDING_MODES}")
        self._warn_if_slow_dtype()
        E, plan = self._plan(subnet)
        lengths = None
        if padding_mask is not None and padding_mode == "exact":
            lengths = (~padding_mask).sum(-1)
        feats = self.feature_extractor(source, lengths).transpose(1, 2)
        feats = self.layer_norm(feats)
        frame_mask = None
        if padding_mask is not None:
            frame_mask = self.frame_padding(padding_mask, feats.size(1), padding_mode)
            if not frame_mask.any():
                frame_mask = None
        x = F.linear(feats, self.post_extract_proj.weight[:E], self.post_extract_proj.bias[:E])
        x = F.dropout(x, self.cfg.dropout_input, self.training)
        if mask_indices is not None:
            x = torch.where(mask_indices[..., None], self.mask_emb[:E].to(x.dtype), x)
        if frame_mask is not None:
            x = x.masked_fill(frame_mask[..., None], 0.0)
        hidden_states = [x]

        x = self._positional(x, E)
        T = x.size(1)
        pad = (-T) % self.cfg.required_seq_len_multiple
        key_padding = frame_mask
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            if key_padding is None:
                key_padding = torch.zeros(x.size(0), T, dtype=torch.bool, device=x.device)
            key_padding = F.pad(key_padding, (0, pad), value=True)
        attn_mask = None if key_padding is None else (~key_padding)[:, None, None, :]
        x = F.dropout(x, self.cfg.dropout, self.training)

        layer_results = []
        for layer, dims in plan:
            if self.training and self.cfg.encoder_layerdrop > 0 and random.random() < self.cfg.encoder_layerdrop:
                continue
            x, ffn_out = layer(x, attn_mask, dims)
            hidden_states.append(x[:, :T])
            layer_results.append(ffn_out[:, :T])
        x = x[:, :T]
        if self.cfg.layer_norm_first:
            # the hidden states stay un-normalised, as in the original; only the output is
            x = F.layer_norm(x, (E,), self.encoder.layer_norm.weight[:E], self.encoder.layer_norm.bias[:E], 1e-5)
        predictions = self._predict(x, E) if predict else {}
        return ModelOutput(hidden_states, frame_mask, layer_results, predictions, feats)

    def _positional(self, x: torch.Tensor, E: int) -> torch.Tensor:
        """The encoder's input: ``x`` plus its positional convolution, normalised here in a post-LN model."""
        x = x + self.encoder.pos_conv[0](x, E)
        if not self.cfg.layer_norm_first:
            x = F.layer_norm(x, (E,), self.encoder.layer_norm.weight[:E], self.encoder.layer_norm.bias[:E], 1e-5)
        return x

    def _predict(self, last: torch.Tensor, E: int) -> Dict[int, torch.Tensor]:
        heads = getattr(self, "layer_pred_heads", None)
        if heads is None or len(heads) == 0:
            return {}
        # released models have a single head on the last layer; it reads the final output
        return {int(k): F.linear(last, head.weight[:, :E]) for k, head in heads.items()}


class LightHuBERTSupernet(LightHuBERTBackbone):
    """The full weight-sharing model with the released checkpoints' parameter names and shapes."""

    def __init__(self, cfg: ModelConfig = ModelConfig(), subnet: Optional[SubnetConfig] = None) -> None:
        super().__init__(cfg, cfg.encoder_embed_dim, dense_pos_conv=False)
        E, A, Fd = cfg.encoder_embed_dim, cfg.encoder_attention_heads * HEAD_DIM, cfg.encoder_ffn_embed_dim
        self.encoder.layers = nn.ModuleList(
            [EncoderLayer(E, A, Fd, cfg.layer_norm_first) for _ in range(cfg.encoder_layers)]
        )
        self.layer_pred_heads = nn.ModuleDict(
            {str(i): nn.Linear(E, cfg.teacher_embed_dim * n, bias=False) for i, n in cfg.pred_layers.items()}
        )
        self._set_dropouts()
        self.subnet = subnet or self.max_subnet()

    def max_subnet(self) -> SubnetConfig:
        c = self.cfg
        return SubnetConfig.uniform(c.encoder_embed_dim, c.encoder_attention_heads, c.encoder_ffn_embed_dim, c.encoder_layers)

    @property
    def subnet(self) -> SubnetConfig:
        return self._subnet

    @subnet.setter
    def subnet(self, subnet: SubnetConfig) -> None:
        subnet.validate_for(self.cfg)
        self._subnet = subnet

    def _plan(self, subnet: Optional[SubnetConfig]) -> Tuple[int, List[Tuple[EncoderLayer, LayerDims]]]:
        subnet = subnet or self._subnet
        if subnet is not self._subnet:
            subnet.validate_for(self.cfg)
        layers = kept_layers(subnet.layer_num, self.cfg.encoder_layers)
        plan = [
            (self.encoder.layers[i], LayerDims(subnet.embed_dim, HEAD_DIM * h, f))
            for i, h, f in zip(layers, subnet.heads_num, subnet.ffn_embed)
        ]
        return subnet.embed_dim, plan

    def reset_parameters(self, seed: int = 0) -> "LightHuBERTSupernet":
        """Seeded random weights with non-trivial norms and biases, so that every slice matters in tests."""
        gen = torch.Generator().manual_seed(seed)

        def fill(p: torch.Tensor, values: torch.Tensor) -> None:
            p.copy_(values)

        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                    fill(module.weight, 1.0 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                    fill(module.bias, 0.1 * torch.randn(module.bias.shape, generator=gen))
                elif isinstance(module, nn.Conv1d):  # He init keeps CNN activations in range
                    fan_in = module.weight[0].numel()
                    fill(module.weight, torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                elif isinstance(module, nn.Linear):
                    fill(module.weight, 0.02 * torch.randn(module.weight.shape, generator=gen))
                    if module.bias is not None:
                        fill(module.bias, 0.02 * torch.randn(module.bias.shape, generator=gen))
                elif isinstance(module, PositionalConv):
                    fill(module.weight_g, torch.rand(module.weight_g.shape, generator=gen) + 0.5)
                    fill(module.weight_v, torch.randn(module.weight_v.shape, generator=gen))
                    fill(module.bias, 0.02 * torch.randn(module.bias.shape, generator=gen))
            fill(self.mask_emb, torch.rand(self.mask_emb.shape, generator=gen))
        return self
