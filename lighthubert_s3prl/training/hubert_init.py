"""A LightHuBERT-shaped copy of a fairseq-style HuBERT (or wav2vec 2.0) model, for DistilHuBERT-style starts.

DistilHuBERT, which EKD builds on, initialises its student from the teacher: the CNN, the feature
projection, the positional convolution and the first transformer layers. s3prl's HuBERT-family upstreams
hold a fairseq-layout model whose parameter names are our supernet's, so the copy is a state-dict load once
the architecture is read off the modules. A model that differs (WavLM's relative position bias, a head size
other than 64) is refused with the reason, never loaded partially.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from ..model.config import ConfigError, ModelConfig
from ..model.supernet import LightHuBERTSupernet

# fairseq HuBERT parameters with no place in the student: the pre-training label embeddings and projection
_PRETRAINING_ONLY = ("label_embs_concat", "final_proj.", "target_glu.", "project_q.", "quantizer.")


def find_hubert_model(module: nn.Module, label: str) -> nn.Module:
    """The fairseq-style model inside an s3prl upstream (the module with a CNN and a transformer encoder)."""
    for candidate in module.modules():
        encoder = getattr(candidate, "encoder", None)
        if hasattr(candidate, "feature_extractor") and hasattr(encoder, "layers") and hasattr(encoder, "pos_conv"):
            return candidate
    raise ConfigError(f"{label} holds no fairseq-style HuBERT / wav2vec 2.0 model (a CNN feature extractor and a "
                      f"transformer encoder with a positional convolution); initialise the student from a "
                      f"LightHuBERT checkpoint or a HuBERT teacher instead")


def _conv_layers(model: nn.Module) -> Tuple[List[Tuple[int, int, int]], str, bool]:
    blocks = list(model.feature_extractor.conv_layers)
    convs = [next(m for m in block.modules() if isinstance(m, nn.Conv1d)) for block in blocks]
    layers = [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]
    has_layer_norm = any(isinstance(m, nn.LayerNorm) for m in blocks[0].modules())
    return layers, "layer_norm" if has_layer_norm else "default", convs[0].bias is not None


def model_config_of(model: nn.Module, label: str) -> ModelConfig:
    """Our ModelConfig for a fairseq-style model, read from its modules."""
    layers, mode, conv_bias = _conv_layers(model)
    encoder = model.encoder
    first = encoder.layers[0]
    pos = next(m for m in encoder.pos_conv.modules() if isinstance(m, nn.Conv1d))
    if not (hasattr(first, "self_attn") and hasattr(first, "fc1")):
        raise ConfigError(f"{label}: its encoder layers are not HuBERT's (self_attn, fc1, fc2)")
    activation = getattr(first.activation_fn, "__name__", str(first.activation_fn))
    if "gelu" not in activation:
        raise ConfigError(f"{label}: its FFN activation is {activation}, the student's is GELU")
    cfg = ModelConfig(
        extractor_mode=mode,
        conv_feature_layers=repr(layers),
        conv_bias=conv_bias,
        encoder_layers=len(encoder.layers),
        encoder_embed_dim=first.fc1.in_features,
        encoder_ffn_embed_dim=first.fc1.out_features,
        encoder_attention_heads=first.self_attn.num_heads,
        layer_norm_first=bool(getattr(encoder, "layer_norm_first", False)),
        conv_pos=pos.kernel_size[0],
        conv_pos_groups=pos.groups,
        required_seq_len_multiple=int(getattr(encoder, "required_seq_len_multiple", 1)),
        layer_pred_num=",".join(["0"] * len(encoder.layers)),
    )
    try:
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{label} does not fit a LightHuBERT student: {err}") from None
    return cfg


def supernet_from_hubert(module: nn.Module, label: str) -> LightHuBERTSupernet:
    """A supernet holding exactly ``module``'s HuBERT-family weights (dropout as the student config sets later)."""
    model = find_hubert_model(module, label)
    cfg = model_config_of(model, label)
    state: Dict[str, torch.Tensor] = {k: v.detach().float().cpu() for k, v in model.state_dict().items()
                                      if not k.startswith(_PRETRAINING_ONLY)}
    student = LightHuBERTSupernet(cfg)
    want = {k for k in student.state_dict() if not k.startswith("layer_pred_heads.")}
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise ConfigError(f"{label}'s weights do not map onto a LightHuBERT student: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]} (a HuBERT or wav2vec 2.0 model is needed; WavLM's "
                          f"relative attention has no counterpart)")
    student.load_state_dict(state, strict=False)
    return student


def load_s3prl_hubert_file(path: str) -> nn.Module:
    """A HuBERT checkpoint in s3prl's converted layout (what ``hubert_local`` reads), built by s3prl's own code."""
    from s3prl.upstream.hubert.convert import load_converted_model

    try:
        model, _task = load_converted_model(path)
    except ValueError as err:  # s3prl names the missing key
        raise ConfigError(f"student.init={path} is neither a LightHuBERT checkpoint nor an s3prl HuBERT checkpoint: "
                          f"{err}") from None
    return model
