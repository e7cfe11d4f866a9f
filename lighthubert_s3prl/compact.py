"""A chosen subnet materialised as a plain dense model.

The supernet slices (and copies) weights at every forward; here each tensor is cut once, so a forward
costs only the subnet's own arithmetic and memory. Parameter names follow the released layout with the
subnet's shapes (``encoder.layers.{j}`` is the j-th *kept* layer), and a compact checkpoint holds just
these weights plus the config, loadable with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .config import HEAD_DIM, ConfigError, ModelConfig, SubnetConfig, kept_layers
from .modules import EncoderLayer, LayerDims, ffn_rows
from .supernet import LightHuBERTBackbone, LightHuBERTSupernet

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

    @classmethod
    def from_supernet(cls, supernet: LightHuBERTSupernet, subnet: Optional[SubnetConfig] = None) -> "CompactLightHuBERT":
        """Copy the subnet's slices out of ``supernet``."""
        subnet = subnet or supernet.subnet
        with torch.device("meta"):  # skip a random init that the copy would overwrite
            model = cls(supernet.cfg, subnet)
        model.load_state_dict(slice_state_dict(supernet, subnet), assign=True)
        return model.train(supernet.training)


@torch.no_grad()
def slice_state_dict(supernet: LightHuBERTSupernet, subnet: SubnetConfig) -> Dict[str, torch.Tensor]:
    """The compact model's state dict: every supernet tensor cut to ``subnet`` by the released rules."""
    subnet.validate_for(supernet.cfg)
    E, C = subnet.embed_dim, supernet.cfg.cnn_dim
    full = supernet.state_dict()
    out: Dict[str, torch.Tensor] = {k: v for k, v in full.items() if k.startswith(("feature_extractor.", "layer_norm."))}
    out["post_extract_proj.weight"] = full["post_extract_proj.weight"][:E, :C]
    out["post_extract_proj.bias"] = full["post_extract_proj.bias"][:E]
    out["mask_emb"] = full["mask_emb"][:E]
    pos = supernet.encoder.pos_conv[0]
    out["encoder.pos_conv.0.weight"] = pos.full_weight()[:E, : E // pos.groups]
    out["encoder.pos_conv.0.bias"] = full["encoder.pos_conv.0.bias"][:E]
    out["encoder.layer_norm.weight"] = full["encoder.layer_norm.weight"][:E]
    out["encoder.layer_norm.bias"] = full["encoder.layer_norm.bias"][:E]
    for j, (i, h, Fd) in enumerate(zip(kept_layers(subnet.layer_num, supernet.cfg.encoder_layers),
                                       subnet.heads_num, subnet.ffn_embed)):
        src, dst = f"encoder.layers.{i}.", f"encoder.layers.{j}."
        A = HEAD_DIM * h
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"{dst}self_attn.{proj}.weight"] = full[f"{src}self_attn.{proj}.weight"][:A, :E]
            out[f"{dst}self_attn.{proj}.bias"] = full[f"{src}self_attn.{proj}.bias"][:A]
        out[f"{dst}self_attn.out_proj.weight"] = full[f"{src}self_attn.out_proj.weight"][:E, :A]
        out[f"{dst}self_attn.out_proj.bias"] = full[f"{src}self_attn.out_proj.bias"][:E]
        rows = ffn_rows(E, Fd, supernet.cfg.encoder_embed_dim, supernet.cfg.encoder_ffn_embed_dim)
        out[f"{dst}fc1.weight"] = torch.cat([full[f"{src}fc1.weight"][a:b, :E] for a, b in rows])
        out[f"{dst}fc1.bias"] = torch.cat([full[f"{src}fc1.bias"][a:b] for a, b in rows])
        out[f"{dst}fc2.weight"] = torch.cat([full[f"{src}fc2.weight"][:E, a:b] for a, b in rows], dim=1)
        out[f"{dst}fc2.bias"] = full[f"{src}fc2.bias"][:E]
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            for p in ("weight", "bias"):
                out[f"{dst}{norm}.{p}"] = full[f"{src}{norm}.{p}"][:E]
    return {k: v.clone().contiguous() for k, v in out.items()}


def compact_payload(model: CompactLightHuBERT, source: str = "") -> Dict[str, Any]:
    """A self-describing compact checkpoint: only plain types and tensors, so ``weights_only`` loads it."""
    return {
        "format": COMPACT_FORMAT,
        "version": COMPACT_VERSION,
        "cfg": {"model": model.cfg.to_checkpoint_cfg()},
        "subnet": model.subnet.to_dict(),
        "source": source,
        "model": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
    }


def read_compact_payload(path: Path, data: Mapping[str, Any]):  # -> LoadedCheckpoint (import cycle)
    from .checkpoint import CheckpointError, LoadedCheckpoint

    if data.get("version") != COMPACT_VERSION:
        raise CheckpointError(f"{path}: compact format version {data.get('version')!r} is not supported "
                              f"(this package reads version {COMPACT_VERSION}); export it again")
    try:
        model_cfg = ModelConfig.from_checkpoint_cfg(data["cfg"]["model"])
        subnet = SubnetConfig.from_dict(data["subnet"])
        subnet.validate_for(model_cfg)
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path}: broken compact checkpoint config ({err}); export it again") from None
    state = data.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: compact checkpoint has no 'model' state dict; export it again")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CompactLightHuBERT(model_cfg, subnet).state_dict().items()}
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or wrong:
        raise CheckpointError(
            f"{path}: compact checkpoint weights do not match its subnet (missing: {missing[:5]}, "
            f"mis-shaped: {wrong[:5]}); export it again"
        )
    return LoadedCheckpoint(path, "compact", model_cfg, dict(state), dict(data["cfg"]), subnet, None,
                            {"source": data.get("source", "")})


def build_compact(ckpt: Any) -> CompactLightHuBERT:
    """The compact model of a loaded compact checkpoint."""
    with torch.device("meta"):
        model = CompactLightHuBERT(ckpt.model_cfg, ckpt.default_subnet)
    model.load_state_dict({k: v.clone() for k, v in ckpt.state_dict.items()}, assign=True)
    return model
