"""A chosen subnet materialised as a plain dense model.

The supernet slices (and copies) weights at every forward; here each tensor is cut once, so a forward
costs only the subnet's own arithmetic and memory. Parameter names follow the released layout with the
subnet's shapes (``encoder.layers.{j}`` is the j-th *kept* layer), and a compact checkpoint holds just
these weights plus the config, loadable with ``weights_only=True``.

Two forwards are offered:

* :meth:`CompactLightHuBERT.forward` takes a padded batch and mirrors the supernet's forward exactly
  (padded frames included), for both padding modes.
* :meth:`CompactLightHuBERT.forward_utterances` takes a list of waveforms and runs each one alone. That
  is what ``padding_mode="exact"`` means anyway, and it skips all the work and memory spent on padding:
  the CNN, whose first layer output is 512 x 3200 floats per second of audio, dominates both. Padded
  frames of its outputs are zero.

Inference dtypes: float32 is the reference. bfloat16 runs everywhere, but is faster only where the hardware
has it (AVX512-BF16 or AMX CPUs, CUDA GPUs from compute capability 8.0); elsewhere it is emulated, tens of
times slower than float32. float16 is fine on CUDA; on CPU its convolutions fall back to slow kernels.
Either slow case warns once per model (:mod:`lighthubert_s3prl.hardware`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import HEAD_DIM, ConfigError, ModelConfig, SubnetConfig, kept_layers
from .fast_cnn import receptive_field_and_hop
from .modules import EncoderLayer, LayerDims, conv_output_lengths, ffn_rows
from .supernet import LightHuBERTBackbone, LightHuBERTSupernet, ModelOutput

# a tag stored in every compact file (the module path it once matched): changing it would orphan old exports
COMPACT_FORMAT = "lighthubert_s3prl.compact"
COMPACT_VERSION = 1


class CompactLightHuBERT(LightHuBERTBackbone):
    """Dense model of one subnet; ``forward`` matches the supernet's on that subnet."""

    def __init__(self, cfg: ModelConfig, subnet: SubnetConfig) -> None:
        subnet.validate_for(cfg)
        super().__init__(cfg, subnet.embed_dim, dense_pos_conv=True)
        self.subnet = subnet
        E = subnet.embed_dim
        self.encoder.layers = nn.ModuleList(
            [EncoderLayer(E, HEAD_DIM * h, f, cfg.layer_norm_first) for h, f in zip(subnet.heads_num, subnet.ffn_embed)]
        )
        self._set_dropouts()

    def _plan(self, subnet: Optional[SubnetConfig]) -> Tuple[int, List[Tuple[EncoderLayer, LayerDims]]]:
        if subnet is not None and subnet != self.subnet:
            raise ConfigError(
                f"this compact model holds only the subnet {self.subnet.describe()}; load the supernet "
                f"checkpoint to run {subnet.describe()}"
            )
        E = self.subnet.embed_dim
        return E, [(layer, LayerDims(E, HEAD_DIM * h, f))
                   for layer, h, f in zip(self.encoder.layers, self.subnet.heads_num, self.subnet.ffn_embed)]

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_state(cls, cfg: ModelConfig, subnet: SubnetConfig, state: Mapping[str, torch.Tensor],
                   dtype: Optional[torch.dtype] = None) -> "CompactLightHuBERT":
        """Build around a compact state dict without initialising random weights first.

        The module is created on the meta device and the given tensors are adopted (``assign=True``), so
        loading costs no extra copy of the weights (except a dtype conversion when ``dtype`` asks).
        """
        with torch.device("meta"):
            model = cls(cfg, subnet)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        # assign=True adopts tensors as they are, so make sure none is a view pinning a larger storage
        state = {k: v if v.is_contiguous() and v.storage_offset() == 0 and v.untyped_storage().nbytes()
                 == v.numel() * v.element_size() else v.clone().contiguous() for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        return model.eval()

    @classmethod
    def from_supernet(cls, supernet: LightHuBERTSupernet, subnet: Optional[SubnetConfig] = None) -> "CompactLightHuBERT":
        """Copy the subnet's slices out of ``supernet``; the result holds no reference to it."""
        subnet = subnet or supernet.subnet
        model = cls.from_state(supernet.cfg, subnet, slice_state_dict(supernet, subnet))
        return model.train(supernet.training)

    @classmethod
    def from_checkpoint(cls, ckpt: Any, subnet: Optional[SubnetConfig] = None,
                        dtype: Optional[torch.dtype] = None) -> "CompactLightHuBERT":
        """From a :class:`~lighthubert_s3prl.model.checkpoint.LoadedCheckpoint` (supernet or compact export).

        A supernet's weights are sliced straight from its state dict: no supernet module is ever built,
        which halves the peak memory of loading an official file and saves its random initialisation.
        """
        subnet = subnet or ckpt.default_subnet
        if subnet is None:
            raise ConfigError(f"{ckpt.path}: no subnet given and the checkpoint names none")
        if ckpt.kind == "compact":
            if subnet != ckpt.default_subnet:
                raise ConfigError(
                    f"{ckpt.path} is a compact export of {ckpt.default_subnet.describe()}; it cannot run "
                    f"{subnet.describe()}. Pass the supernet checkpoint instead"
                )
            return cls.from_state(ckpt.model_cfg, subnet, ckpt.state_dict, dtype=dtype or torch.float32)
        state = slice_supernet_state(ckpt.state_dict, ckpt.model_cfg, subnet)
        return cls.from_state(ckpt.model_cfg, subnet, state, dtype=dtype)

    # -- inference -----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.post_extract_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_extract_proj.weight.device

    def forward_utterances(self, wavs: Sequence[torch.Tensor]) -> ModelOutput:
        """Run each 1-D waveform alone and return batch-first, zero-padded hidden states.

        The result equals ``forward(padded, padding_mask, padding_mode="exact")`` on every valid frame;
        padded frames are 0 and ``padding_mask`` (True = padded) is None when no frame is padded. Only
        ``hidden_states`` and ``padding_mask`` are filled. Waveforms are cast to the model's dtype and
        device.
        """
        if len(wavs) == 0:
            raise ValueError("forward_utterances needs at least one waveform")
        for i, w in enumerate(wavs):
            if w.dim() != 1:
                raise ValueError(f"waveform {i} has shape {tuple(w.shape)}; expected a 1-D tensor of samples")
        self._warn_if_slow_dtype()
        lengths = torch.tensor([w.numel() for w in wavs])
        frames = conv_output_lengths(lengths, self.cfg.conv_layers).tolist()
        T = max(frames)
        if T <= 0:
            raise ValueError(
                f"every waveform is shorter than the CNN's receptive field ({receptive_field(self.cfg)} samples); "
                f"got lengths {lengths.tolist()}"
            )
        B, E, depth = len(wavs), self.subnet.embed_dim, self.subnet.layer_num
        # outputs are filled utterance by utterance, so nothing batch-sized is allocated but these
        hidden = [torch.zeros(B, T, E, dtype=self.dtype, device=self.device) for _ in range(1 + depth)]
        present = [(i, n) for i, n in enumerate(frames) if n > 0]  # shorter than a frame: all padding
        if self.training:  # layer drop and the like live in forward(): keep to it
            for i, n in present:
                out = super().forward(wavs[i].to(device=self.device, dtype=self.dtype)[None])
                for buf, h in zip(hidden, out.hidden_states):
                    buf[i, :n] = h[0]
                del out
        else:
            self._packed_encoder(wavs, present, hidden)
        mask = None
        if min(frames) < T:
            mask = torch.arange(T, device=self.device)[None, :] >= torch.tensor(frames, device=self.device)[:, None]
        return ModelOutput(hidden, mask)

    def _packed_encoder(self, wavs: Sequence[torch.Tensor], present: Sequence[Tuple[int, int]],
                        hidden: List[torch.Tensor]) -> None:
        """Fill ``hidden`` for the utterances ``present`` ((index, frames) pairs), in inference.

        The CNN and the positional convolution run per utterance (they see its borders); the transformer
        layers then run on all utterances' frames laid end to end, with attention kept inside each one. That
        is the per-utterance result (nothing is padded, no frame sees another utterance), but every linear
        layer is one product over the whole batch's frames instead of one per utterance: larger matrices run
        nearer the machine's matmul rate, and each is one parallel region per batch instead of one per
        utterance (fewer waits for a descheduled thread on a busy CPU).
        """
        E, plan = self._plan(None)
        pieces, segments, start = [], [], 0
        for i, n in present:
            wav = wavs[i].to(device=self.device, dtype=self.dtype)[None]
            feats = self.layer_norm(self.feature_extractor(wav).transpose(1, 2))
            x = F.linear(feats, self.post_extract_proj.weight[:E], self.post_extract_proj.bias[:E])
            hidden[0][i, :n] = x[0]
            pieces.append(self._positional(x, E)[0])
            segments.append((start, start + n))
            start += n
        x = torch.cat(pieces)[None]
        del pieces
        for depth, (layer, dims) in enumerate(plan, start=1):
            x, _ = layer(x, None, dims, segments)
            for (i, n), (a, b) in zip(present, segments):
                hidden[depth][i, :n] = x[0, a:b]


def receptive_field(cfg: ModelConfig) -> int:
    """Samples one output frame of the CNN sees (400 for the standard layers)."""
    return receptive_field_and_hop(cfg.conv_layers)[0]


# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def slice_supernet_state(state: Mapping[str, torch.Tensor], cfg: ModelConfig,
                         subnet: SubnetConfig) -> Dict[str, torch.Tensor]:
    """The compact state dict of ``subnet`` cut from a supernet state dict by the released rules.

    Every tensor is a fresh contiguous copy, so the result never keeps the supernet's storage alive.
    Extra keys (prediction heads, ``final_proj``...) are ignored.
    """
    subnet.validate_for(cfg)
    E, C = subnet.embed_dim, cfg.cnn_dim
    out: Dict[str, torch.Tensor] = {k: v for k, v in state.items() if k.startswith(("feature_extractor.", "layer_norm."))}
    out["post_extract_proj.weight"] = state["post_extract_proj.weight"][:E, :C]
    out["post_extract_proj.bias"] = state["post_extract_proj.bias"][:E]
    out["mask_emb"] = state["mask_emb"][:E]
    # weight norm over each kernel tap is taken on the full tensor, then sliced (groups stay the same)
    g, v = state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    full = v * (g / v.norm(dim=(0, 1), keepdim=True))
    out["encoder.pos_conv.0.weight"] = full[:E, : E // cfg.conv_pos_groups]
    out["encoder.pos_conv.0.bias"] = state["encoder.pos_conv.0.bias"][:E]
    out["encoder.layer_norm.weight"] = state["encoder.layer_norm.weight"][:E]
    out["encoder.layer_norm.bias"] = state["encoder.layer_norm.bias"][:E]
    for j, (i, h, Fd) in enumerate(zip(kept_layers(subnet.layer_num, cfg.encoder_layers),
                                       subnet.heads_num, subnet.ffn_embed)):
        src, dst = f"encoder.layers.{i}.", f"encoder.layers.{j}."
        A = HEAD_DIM * h
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"{dst}self_attn.{proj}.weight"] = state[f"{src}self_attn.{proj}.weight"][:A, :E]
            out[f"{dst}self_attn.{proj}.bias"] = state[f"{src}self_attn.{proj}.bias"][:A]
        out[f"{dst}self_attn.out_proj.weight"] = state[f"{src}self_attn.out_proj.weight"][:E, :A]
        out[f"{dst}self_attn.out_proj.bias"] = state[f"{src}self_attn.out_proj.bias"][:E]
        rows = ffn_rows(E, Fd, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim)
        out[f"{dst}fc1.weight"] = torch.cat([state[f"{src}fc1.weight"][a:b, :E] for a, b in rows])
        out[f"{dst}fc1.bias"] = torch.cat([state[f"{src}fc1.bias"][a:b] for a, b in rows])
        out[f"{dst}fc2.weight"] = torch.cat([state[f"{src}fc2.weight"][:E, a:b] for a, b in rows], dim=1)
        out[f"{dst}fc2.bias"] = state[f"{src}fc2.bias"][:E]
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            for p in ("weight", "bias"):
                out[f"{dst}{norm}.{p}"] = state[f"{src}{norm}.{p}"][:E]
    return {k: v.clone(memory_format=torch.contiguous_format) for k, v in out.items()}


@torch.no_grad()
def slice_state_dict(supernet: LightHuBERTSupernet, subnet: SubnetConfig) -> Dict[str, torch.Tensor]:
    """The compact model's state dict: every supernet tensor cut to ``subnet`` by the released rules."""
    return slice_supernet_state(supernet.state_dict(), supernet.cfg, subnet)


# ---------------------------------------------------------------------------------------------------
def compact_payload(model: CompactLightHuBERT, source: str = "",
                    dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """A self-describing compact checkpoint: only plain types and tensors, so ``weights_only`` loads it.

    ``dtype`` (e.g. ``torch.bfloat16``) sets the *storage* type of floating tensors; loading converts them
    back to float32 unless the caller asks for another compute dtype.
    """
    def store(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous()

    return {
        "format": COMPACT_FORMAT,
        "version": COMPACT_VERSION,
        "cfg": {"model": model.cfg.to_checkpoint_cfg()},
        "subnet": model.subnet.to_dict(),
        "source": source,
        "storage_dtype": str(dtype or model.dtype).replace("torch.", ""),
        "model": {k: store(v) for k, v in model.state_dict().items()},
    }


def build_compact(ckpt: Any, dtype: Optional[torch.dtype] = torch.float32) -> CompactLightHuBERT:
    """The compact model of a loaded compact checkpoint, computing in ``dtype`` (float32 by default,
    whatever the storage dtype; ``None`` keeps the stored one)."""
    return CompactLightHuBERT.from_state(ckpt.model_cfg, ckpt.default_subnet, ckpt.state_dict, dtype=dtype)
