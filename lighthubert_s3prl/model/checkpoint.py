"""Reading and writing LightHuBERT checkpoints in the released format, safely.

Released files are ``{'cfg': {'model': {...}}, 'model': state_dict}`` with fp32 tensors. They are read
with ``weights_only=True`` on CPU: a file that would need to run code to unpickle is refused, and nothing
in it is executed. ``conv_feature_layers`` is parsed, never ``eval``-ed. Compact exports
(:func:`~lighthubert_s3prl.model.compact.compact_payload`) are read here as well, so that one module knows
every file format a user may pass with ``-k``.
"""
from __future__ import annotations

import logging
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ..io_utils import atomic_write
from .config import (
    SEARCH_SPACES,
    ConfigError,
    ModelConfig,
    SearchSpace,
    SubnetConfig,
    get_preset,
    resolve_subnet,
)
from .compact import COMPACT_FORMAT, COMPACT_VERSION, CompactLightHuBERT
from .supernet import LightHuBERTSupernet

logger = logging.getLogger(__name__)

SUPERNET_NAMES = ("hubert_pruner", "student_hubert", "ekd_student")
# s3prl's own LightHuBERT upstream accepts the first two; "ekd_student" is ours, for students that upstream
# would run wrongly (it asserts the kind, so such a file is refused there rather than run as another model)
# keys present in the released files that no inference path uses
IGNORED_KEYS = ("label_embs_concat", "final_proj.weight", "final_proj.bias")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class LoadedCheckpoint:
    path: Path
    kind: str  # "hubert_pruner", "student_hubert", "ekd_student" or "compact"
    model_cfg: ModelConfig
    state_dict: Dict[str, torch.Tensor]
    raw_cfg: Dict[str, Any] = field(default_factory=dict)
    default_subnet: Optional[SubnetConfig] = None
    search_space: Optional[SearchSpace] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    def subnet(self, spec: Any = None) -> SubnetConfig:
        """Resolve ``spec`` (None = this checkpoint's own subnet) and check that it is a slice of this model."""
        chosen = resolve_subnet(spec, self.default_subnet)
        try:
            chosen.validate_for(self.model_cfg)
        except ConfigError as err:
            raise ConfigError(f"subnet does not fit checkpoint {self.path}: {err}") from None
        return chosen


_ZIP_MAGIC = b"PK\x03\x04"
_DOS_DIRECTORY_ATTRIBUTE = 0x10


def _damaged(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is truncated or corrupted and cannot be read ({detail}); download or write it again"
    )


def verify_archive(path: Path) -> None:
    """Refuse a damaged checkpoint archive before ``torch.load`` reads it.

    ``torch.save`` writes a zip archive with a CRC-32 per record, but ``torch.load`` never checks them: a file
    whose tensor bytes were flipped on disk or in a download loads without error, with wrong weights. So
    every record is read once and checked against its CRC-32 (about 0.3 s for the 381 MB official file).
    The zip reader torch uses also treats a record whose folder attribute is set as empty, and returns
    zeros for that tensor, which no CRC covers; a checkpoint never holds folders, so that bit is refused
    too. Files in torch's legacy (non-zip) format carry no checksum and go straight to ``torch.load``.
    """
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.external_attr & _DOS_DIRECTORY_ATTRIBUTE:
                    raise _damaged(path, f"record {info.filename} is marked as a folder")
                with archive.open(info) as record:  # zipfile raises BadZipFile on a CRC-32 mismatch
                    while record.read(1 << 20):
                        pass
    except CheckpointError:  # a ValueError itself: keep it as it is
        raise
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError, struct.error) as err:
        # a damaged directory or header fails in many ways inside zipfile; all of them mean the same here
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _damaged(path, f"zip archive check failed: {reason}") from None


def _torch_load(path: Path) -> Any:
    verify_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        wanted = re.search(r"GLOBAL ([\w.]+)", text)
        if wanted or "Unsupported global" in text:
            culprit = f" (it asks for {wanted.group(1)})" if wanted else ""
            raise CheckpointError(
                f"refusing to load {path}: unpickling it would need to import or run code{culprit}. "
                f"Nothing in the file was executed. LightHuBERT checkpoints hold only dicts and tensors; "
                f"re-save a trusted file as {{'cfg': ..., 'model': state_dict}} or use the official file."
            ) from None
        # any other unpickler complaint (an unknown opcode, say) means the bytes are not a valid pickle
        raise _damaged(path, "not a valid checkpoint pickle") from None
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise _damaged(path, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None


def expected_shapes(cfg: ModelConfig) -> Dict[str, torch.Size]:
    """Parameter shapes of the full supernet described by ``cfg`` (the released layout)."""
    with torch.device("meta"):
        model = LightHuBERTSupernet(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _infer_extractor_mode(cfg_mode: Optional[str], state_dict: Mapping[str, Any]) -> Optional[str]:
    has_ln = "feature_extractor.conv_layers.0.2.1.weight" in state_dict
    has_gn = "feature_extractor.conv_layers.0.2.weight" in state_dict
    from_keys = "layer_norm" if has_ln else "default" if has_gn else None
    if cfg_mode and from_keys and cfg_mode != from_keys:
        logger.warning("cfg says extractor_mode=%r but the weights are in %r layout; using the weights' layout",
                       cfg_mode, from_keys)
        return from_keys
    return from_keys or cfg_mode


def _space_from_pruner(model_cfg: Mapping[str, Any]) -> Optional[str]:
    name = str(model_cfg.get("pruner_supernet", "")).lower()
    if name.endswith("small.yaml"):
        return "small"
    if name.endswith("base.yaml"):
        return "base"
    return None


def check_state_dict(state_dict: Mapping[str, torch.Tensor], cfg: ModelConfig, path: Union[str, Path]) -> None:
    """Raise if weights are missing or mis-shaped for the architecture ``cfg`` describes."""
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in state_dict and not k.startswith("layer_pred_heads.")]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{path} lacks {len(missing)} weight(s) the model needs: {shown}. The file is incomplete or "
            f"not a LightHuBERT supernet checkpoint; download or write it again"
        )
    wrong = [
        f"{k} has shape {tuple(state_dict[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path} has mis-shaped weight(s) for the architecture in its cfg: " + "; ".join(wrong[:5])
            + ". The weights do not belong to this cfg; use the matching checkpoint"
        )


def read_compact_payload(path: Path, data: Mapping[str, Any]) -> LoadedCheckpoint:
    """Validate a loaded compact export (:func:`~lighthubert_s3prl.model.compact.compact_payload`'s dict)."""
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
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: compact checkpoint has no 'model' state dict of tensors; export it again")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CompactLightHuBERT(model_cfg, subnet).state_dict().items()}
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or wrong:
        raise CheckpointError(
            f"{path}: compact checkpoint weights do not match its subnet (missing: {missing[:5]}, "
            f"mis-shaped: {wrong[:5]}); export it again"
        )
    extras = {"source": data.get("source", ""), "storage_dtype": data.get("storage_dtype", "float32")}
    return LoadedCheckpoint(path, "compact", model_cfg, dict(state), dict(data["cfg"]), subnet, None, extras)


def load_checkpoint(path: Union[str, Path]) -> LoadedCheckpoint:
    """Load and validate a LightHuBERT checkpoint (official supernet or a compact export)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (pass it with -k / --ckpt)")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pt file inside it")
    data = _torch_load(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} is not a LightHuBERT checkpoint: it holds a {type(data).__name__}, "
                              f"not a dict with 'cfg' and 'model'")
    if data.get("format") == COMPACT_FORMAT:
        return read_compact_payload(path, data)
    if "cfg" not in data or "model" not in data or not isinstance(data["cfg"], Mapping):
        keys = sorted(map(str, data))[:8]
        raise CheckpointError(
            f"{path} is not a LightHuBERT checkpoint: expected top-level keys 'cfg' and 'model', found {keys}"
        )
    raw_model_cfg = data["cfg"].get("model")
    name = raw_model_cfg.get("_name") if isinstance(raw_model_cfg, Mapping) else None
    if name not in SUPERNET_NAMES:
        raise CheckpointError(
            f"{path} is not a LightHuBERT checkpoint: cfg['model']['_name'] is {name!r}, expected one of "
            f"{list(SUPERNET_NAMES)}"
        )
    state_dict = data["model"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'model' must be a state dict of tensors")
    values = dict(raw_model_cfg)
    mode = _infer_extractor_mode(values.get("extractor_mode"), state_dict)
    if mode is not None:
        values["extractor_mode"] = mode
    try:
        model_cfg = ModelConfig.from_checkpoint_cfg(values)
    except ConfigError as err:
        raise CheckpointError(f"{path}: unsupported architecture in cfg['model']: {err}") from None
    check_state_dict(state_dict, model_cfg, path)

    space_name = values.get("search_space") if isinstance(values.get("search_space"), str) else None
    if name == "hubert_pruner":
        space_name = space_name or _space_from_pruner(values) or "base"
        default = get_preset(space_name) if space_name in SEARCH_SPACES else None
    else:
        space_name = space_name or "base"
        default = SubnetConfig.uniform(model_cfg.encoder_embed_dim, model_cfg.encoder_attention_heads,
                                       model_cfg.encoder_ffn_embed_dim, model_cfg.encoder_layers)
    if isinstance(values.get("default_subnet"), Mapping):  # written by our own training code
        default = SubnetConfig.from_dict(values["default_subnet"])
    space = SEARCH_SPACES.get(space_name)
    if isinstance(values.get("search_space_def"), Mapping):  # a custom space recorded by our training code
        space = SearchSpace.from_dict(values["search_space_def"])
    if default is not None:
        try:
            default.validate_for(model_cfg)
        except ConfigError:
            default = None
    extras = {k: v for k, v in data.items() if k not in ("cfg", "model")}
    return LoadedCheckpoint(path, name, model_cfg, dict(state_dict), dict(data["cfg"]), default, space, extras)


def stock_s3prl_runs_as_trained(model_cfg: ModelConfig, subnet: SubnetConfig) -> bool:
    """Whether s3prl's own LightHuBERT upstream would run this model as ``subnet`` when written as
    ``student_hubert``: it builds the standard 768-wide, 12-layer supernet whatever the file says and runs its
    largest subnet."""
    standard = ModelConfig()
    same_shape = all(getattr(model_cfg, f) == getattr(standard, f) for f in (
        "extractor_mode", "conv_feature_layers", "conv_bias", "encoder_layers", "encoder_embed_dim",
        "encoder_ffn_embed_dim", "encoder_attention_heads", "layer_norm_first", "conv_pos", "conv_pos_groups"))
    largest = SubnetConfig.uniform(standard.encoder_embed_dim, standard.encoder_attention_heads,
                                   standard.encoder_ffn_embed_dim, standard.encoder_layers)
    return same_shape and subnet == largest


def build_supernet(ckpt: LoadedCheckpoint) -> LightHuBERTSupernet:
    """The supernet with the checkpoint's weights; unused released extras are dropped."""
    with torch.device("meta"):  # skip a random init that loading overwrites
        model = LightHuBERTSupernet(ckpt.model_cfg, ckpt.default_subnet)
    state = {k: v for k, v in ckpt.state_dict.items() if k not in IGNORED_KEYS}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    for name, head in model.layer_pred_heads.items():  # absent in some files: give them real storage
        if head.weight.is_meta:
            head.weight = torch.nn.Parameter(torch.zeros(head.weight.shape))
    missing = [k for k in missing if not k.startswith("layer_pred_heads.")]
    if missing:  # check_state_dict already guarantees this; kept as a guard against layout drift
        raise CheckpointError(f"{ckpt.path}: weights missing after loading: {missing[:5]}")
    if unexpected:
        logger.info("ignoring %d unused tensors in %s: %s", len(unexpected), ckpt.path, unexpected[:5])
    return model


def save_checkpoint(path: Union[str, Path], payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically: the file is either complete or not there."""
    return atomic_write(path, lambda f: torch.save(dict(payload), f))


def supernet_payload(
    model: LightHuBERTSupernet,
    kind: str = "hubert_pruner",
    space: str = "small",
    extra_cfg: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """``{'cfg', 'model'}`` in the released layout, loadable by this package and by s3prl's own upstream."""
    if kind not in SUPERNET_NAMES:
        raise ValueError(f"kind={kind!r}; allowed values: {SUPERNET_NAMES}")
    model_cfg = model.cfg.to_checkpoint_cfg()
    model_cfg["_name"] = kind
    if kind == "hubert_pruner":
        # the reference upstream picks the space from this path's file name
        model_cfg["pruner_supernet"] = f"config/supernet/Supernet-{space.capitalize()}.yaml"
    model_cfg.update(extra_cfg or {})
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    return {"cfg": {"model": model_cfg, "task": {"normalize": True}}, "model": state}


def write_random_checkpoint(
    path: Union[str, Path],
    kind: str = "small",
    seed: int = 0,
    model_cfg: Optional[ModelConfig] = None,
    with_released_extras: bool = True,
) -> Path:
    """Write a seeded random supernet in the official format.

    ``kind`` is ``small`` or ``base`` (a ``hubert_pruner`` file of that space) or ``stage1``
    (``student_hubert``). ``model_cfg`` gives a non-standard (e.g. tiny) architecture for fast tests.
    """
    if kind not in ("small", "base", "stage1"):
        raise ValueError(f"kind={kind!r}; allowed values: small, base, stage1")
    cfg = model_cfg or ModelConfig()
    model = LightHuBERTSupernet(cfg).reset_parameters(seed)
    extra: Dict[str, Any] = {}
    if model_cfg is not None and model_cfg.encoder_embed_dim != ModelConfig().encoder_embed_dim:
        # a non-standard width cannot use the released spaces: record a subnet that fits
        extra["default_subnet"] = model.max_subnet().to_dict()
    payload = supernet_payload(model, "student_hubert" if kind == "stage1" else "hubert_pruner",
                               "base" if kind == "stage1" else kind, extra)
    if with_released_extras:
        gen = torch.Generator().manual_seed(seed + 1)
        E = cfg.encoder_embed_dim
        payload["model"]["label_embs_concat"] = torch.randn(504, 256, generator=gen)
        payload["model"]["final_proj.weight"] = torch.randn(256, E, generator=gen)
        payload["model"]["final_proj.bias"] = torch.zeros(256)
    return save_checkpoint(path, payload)


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """A small supernet (128 wide, 2 heads, 12 layers, 64-channel CNN) for fast tests and demos."""
    values: Dict[str, Any] = dict(
        conv_feature_layers="[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2",
        encoder_embed_dim=128,
        encoder_ffn_embed_dim=512,
        encoder_attention_heads=2,
        conv_pos=16,
        conv_pos_groups=4,
        teacher_embed_dim=128,
    )
    values.update(overrides)
    return ModelConfig(**values)
