"""Students: building them (from scratch, from a checkpoint, or DistilHuBERT-style from a teacher's first
layers), initialising their weights, and writing them in the official checkpoint format.

Every student is a :class:`~lighthubert_s3prl.model.supernet.LightHuBERTSupernet`, so every output loads with
``lighthubert_local`` (and, at the standard width, with s3prl's own LightHuBERT upstream).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..model.checkpoint import build_supernet, load_checkpoint, save_checkpoint, supernet_payload, tiny_model_config
from ..model.config import ConfigError, ModelConfig, SearchSpace, SubnetConfig
from ..model.supernet import LightHuBERTSupernet

logger = logging.getLogger(__name__)

# keys recorded in cfg['model'] of the checkpoints we write (the loader reads the first two)
DEFAULT_SUBNET_KEY = "default_subnet"
SPACE_DEF_KEY = "search_space_def"


def model_config_from(spec: Any, key: str = "student.model") -> ModelConfig:
    """``"base"`` (HuBERT Base shape), ``"tiny"`` (tests), or a mapping of ModelConfig fields, optionally on a ``preset``."""
    if spec is None or isinstance(spec, str):
        name = spec or "base"
        if name not in ("base", "tiny"):
            raise ConfigError(f"{key}={name!r} is unknown; allowed values: 'base', 'tiny', or a mapping of model fields")
        return ModelConfig() if name == "base" else tiny_model_config()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key} must be 'base', 'tiny' or a mapping of model fields, got {spec!r}")
    values = dict(spec)
    base = model_config_from(values.pop("preset", "base"), f"{key}.preset")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown} in {key}; allowed: {sorted(known)}")
    cfg = dataclasses.replace(base, **values)
    try:
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None
    return cfg


def _head_layout(layers: int, heads_at_last: bool) -> str:
    return ",".join(["0"] * (layers - 1) + ["1" if heads_at_last else "0"])


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """BERT-style initialisation (as fairseq's HuBERT), from a private generator so every process agrees."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight_v"):  # positional conv, weight-normed per kernel tap
            kernel = p.size(-1)
            p.normal_(0.0, math.sqrt(4.0 / (kernel * p.size(0))), generator=gen)
        elif name.endswith("weight_g"):
            continue  # set from weight_v below
        elif name == "mask_emb":
            p.uniform_(0.0, 1.0, generator=gen)
        elif name.startswith("feature_extractor") and p.dim() == 3:
            nn.init.kaiming_normal_(p, generator=gen)
        elif p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=gen)
        elif name.endswith("weight") and ("norm" in name or name.startswith("layer_norm") or ".2." in name):
            p.fill_(1.0)  # LayerNorm / GroupNorm scale
        else:
            p.zero_()
    for module in model.modules():
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            module.weight_g.copy_(module.weight_v.norm(dim=(0, 1), keepdim=True))
    return model


def stage_student(init: Optional[str], model_spec: Any, teacher_dim: int, seed: int) -> LightHuBERTSupernet:
    """Stages 1 and 2: the supernet, with one prediction head on the last layer sized to the teacher's target."""
    if init:
        loaded = load_checkpoint(init)
        if loaded.kind == "compact":
            raise ConfigError(f"student.init={init} is a compact export of one subnet; training needs a supernet "
                              f"checkpoint (model.pt of a stage-1/2 run, or an official file)")
        model = build_supernet(loaded)
        model.subnet = model.max_subnet()
        if model.cfg.teacher_embed_dim != teacher_dim or len(model.layer_pred_heads) != 1:
            logger.warning("student.init %s predicts %d-wide targets; the teacher's are %d wide: new prediction head",
                           init, model.cfg.teacher_embed_dim, teacher_dim)
            model = _with_new_head(model, teacher_dim, seed)
        return model
    cfg = model_config_from(model_spec)
    cfg = dataclasses.replace(cfg, teacher_embed_dim=teacher_dim,
                              layer_pred_num=_head_layout(cfg.encoder_layers, True))
    return init_weights(LightHuBERTSupernet(cfg), seed)


def _with_new_head(model: LightHuBERTSupernet, teacher_dim: int, seed: int) -> LightHuBERTSupernet:
    cfg = dataclasses.replace(model.cfg, teacher_embed_dim=teacher_dim,
                              layer_pred_num=_head_layout(model.cfg.encoder_layers, True))
    fresh = LightHuBERTSupernet(cfg, model.subnet)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layer_pred_heads.")}
    fresh.load_state_dict(state, strict=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in fresh.layer_pred_heads.values():
            head.weight.normal_(0.0, 0.02, generator=gen)
    return fresh


def ekd_backbone(student_type: str, source: Optional[LightHuBERTSupernet], source_subnet: Optional[SubnetConfig],
                 model_spec: Any, layers: int, subnet_spec: Any, seed: int) -> Tuple[LightHuBERTSupernet, SubnetConfig]:
    """EKD students: a DistilHuBERT-style shallow model, or a LightHuBERT supernet trained at one subnet.

    ``source`` is the model ``student.init`` names (a LightHuBERT checkpoint or a HuBERT teacher) and
    ``source_subnet`` the subnet it runs; without one the student starts from ``model_spec`` at random.
    ``distiller`` keeps the first ``layers`` layers and copies the CNN, projection, positional conv and those
    layers from ``source`` (DistilHuBERT initialises from its teacher the same way).
    """
    from ..model.config import resolve_subnet

    if student_type == "distiller":
        if source is not None:
            if layers > source.cfg.encoder_layers:
                raise ConfigError(f"student.layers={layers} exceeds the {source.cfg.encoder_layers} layers of student.init")
            cfg = dataclasses.replace(source.cfg, encoder_layers=layers, layer_pred_num=_head_layout(layers, False))
            model = init_weights(LightHuBERTSupernet(cfg), seed)
            keep = {k: v for k, v in source.state_dict().items()
                    if not k.startswith(("encoder.layers.", "layer_pred_heads."))
                    or (k.startswith("encoder.layers.") and int(k.split(".")[2]) < layers)}
            model.load_state_dict(keep, strict=False)
        else:
            cfg = model_config_from(model_spec)
            cfg = dataclasses.replace(cfg, encoder_layers=layers, layer_pred_num=_head_layout(layers, False))
            model = init_weights(LightHuBERTSupernet(cfg), seed)
        return model, model.max_subnet()
    if source is not None:
        model = source
        subnet = resolve_subnet(subnet_spec, source_subnet)
    else:
        model = init_weights(LightHuBERTSupernet(model_config_from(model_spec)), seed)
        subnet = resolve_subnet(subnet_spec, model.max_subnet())
    try:
        subnet.validate_for(model.cfg)
    except ConfigError as err:
        raise ConfigError(f"student.subnet does not fit the student: {err}") from None
    model.subnet = subnet
    return model, subnet


def space_record(space: Optional[SearchSpace]) -> Dict[str, Any]:
    if space is None:
        return {}
    return {"search_space": space.name, SPACE_DEF_KEY: space.to_dict()}


def export_model(
    model: LightHuBERTSupernet,
    path: Union[str, Path],
    kind: str,
    default_subnet: SubnetConfig,
    space: Optional[SearchSpace] = None,
    training: Optional[Mapping[str, Any]] = None,
    extra_top: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model`` in the released layout (loadable by ``lighthubert_local`` and s3prl's LightHuBERT).

    ``cfg['model']`` also records the subnet the upstream should run (``default_subnet``) and, for
    stage 2, the search space (``search_space`` name and ``search_space_def``), so custom spaces survive.
    """
    extra: Dict[str, Any] = {DEFAULT_SUBNET_KEY: default_subnet.to_dict(), **space_record(space)}
    if training:
        extra["training"] = dict(training)
    space_name = space.name if space is not None else "base"
    payload = supernet_payload(model, kind, space_name, extra)
    if extra_top:
        payload.update(extra_top)
    return save_checkpoint(path, payload)
