"""Supernet architecture, subnet configurations and the LightHuBERT search spaces.

A *supernet* is the full weight-sharing model stored in every checkpoint (768 wide, 12 layers for the
released files). A *subnet* picks one embedding width for the whole encoder, a depth, and per kept layer
a number of heads and an FFN width. The dict format of :meth:`SubnetConfig.to_dict` is the one the
authors' ``set_sample_config`` takes, so configs move freely between this package and theirs.
"""
from __future__ import annotations

import ast
import itertools
import json
import operator
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

HEAD_DIM = 64
STANDARD_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# Which supernet layers a subnet of a given depth keeps (1 = keep). Taken from the released model:
# shallower subnets skip layers spread through the stack rather than the last ones only.
DEPTH_MAPS: Dict[int, Tuple[int, ...]] = {
    6: (1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0),
    7: (1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0),
    8: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0),
    9: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0),
    10: (1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0),
    11: (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0),
    12: (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
}


class ConfigError(ValueError):
    """An invalid subnet, search space or architecture description."""


def kept_layers(layer_num: int, supernet_layers: int = 12) -> List[int]:
    """Indices of the supernet layers that a subnet of depth ``layer_num`` runs."""
    if supernet_layers != 12:
        if not 1 <= layer_num <= supernet_layers:
            raise ConfigError(
                f"layer_num={layer_num} is not allowed for a {supernet_layers}-layer supernet; "
                f"allowed values: 1..{supernet_layers}"
            )
        return list(range(layer_num))
    if layer_num not in DEPTH_MAPS:
        raise ConfigError(
            f"layer_num={layer_num} is not allowed; allowed values: {sorted(DEPTH_MAPS)}"
        )
    return [i for i, keep in enumerate(DEPTH_MAPS[layer_num]) if keep]


# ---------------------------------------------------------------------------------------------------
# conv_feature_layers is stored in checkpoints as a Python expression. It is evaluated here with a
# whitelist of list/tuple/int literals and the + and * operators, so a checkpoint can never run code.
_SAFE_BINOPS = {ast.Add: operator.add, ast.Mult: operator.mul}


def _safe_eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_safe_eval(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_BINOPS:
        left, right = _safe_eval(node.left), _safe_eval(node.right)
        if isinstance(node.op, ast.Mult):
            if isinstance(left, int) and isinstance(right, int):
                return left * right
            count = right if isinstance(right, int) else left
            if not isinstance(count, int) or count > 64:
                raise ValueError("list repetition must be by a small integer")
        return _SAFE_BINOPS[type(node.op)](left, right)
    raise ValueError(f"unsupported syntax {type(node).__name__}")


def parse_conv_layers(spec: Union[str, Sequence[Sequence[int]]]) -> List[Tuple[int, int, int]]:
    """Parse ``"[(512,10,5)] + [(512,3,2)] * 4 + ..."`` into (dim, kernel, stride) triples, safely."""
    if isinstance(spec, str):
        try:
            value = _safe_eval(ast.parse(spec, mode="eval"))
        except (SyntaxError, ValueError) as err:
            raise ConfigError(
                f"conv_feature_layers={spec!r} is not a list of (dim, kernel, stride) tuples: {err}. "
                f"Expected something like {STANDARD_CONV_LAYERS!r}"
            ) from None
    else:
        value = spec
    layers = []
    for item in value if isinstance(value, (list, tuple)) else [None]:
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and all(isinstance(v, int) and v > 0 for v in item)):
            raise ConfigError(
                f"conv_feature_layers={spec!r}: every entry must be a (dim, kernel, stride) triple "
                f"of positive ints, got {item!r}"
            )
        layers.append(tuple(item))
    if not layers:
        raise ConfigError(f"conv_feature_layers={spec!r} is empty")
    return layers


# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a LightHuBERT supernet, as stored in ``ckpt['cfg']['model']``."""

    extractor_mode: str = "default"
    conv_feature_layers: str = STANDARD_CONV_LAYERS
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    pos_conv_depth: int = 1
    required_seq_len_multiple: int = 2
    teacher_embed_dim: int = 768
    layer_pred_num: str = "0,0,0,0,0,0,0,0,0,0,0,1"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    mask_prob: float = 0.65
    mask_length: int = 10

    @classmethod
    def from_checkpoint_cfg(cls, model_cfg: Mapping[str, Any]) -> "ModelConfig":
        """Take the known fields of a checkpoint's ``cfg['model']``; unknown fields are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in model_cfg.items() if k in known}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_checkpoint_cfg(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def conv_layers(self) -> List[Tuple[int, int, int]]:
        return parse_conv_layers(self.conv_feature_layers)

    @property
    def cnn_dim(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def pred_layers(self) -> Dict[int, int]:
        """{layer index: number of teacher-sized outputs} of the distillation heads."""
        counts = [max(int(n), 0) for n in str(self.layer_pred_num).split(",")]
        if len(counts) != self.encoder_layers:
            raise ConfigError(
                f"layer_pred_num={self.layer_pred_num!r} has {len(counts)} entries; it needs one per "
                f"encoder layer ({self.encoder_layers})"
            )
        return {i: n for i, n in enumerate(counts) if n > 0}

    def validate(self) -> None:
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ConfigError(
                f"extractor_mode={self.extractor_mode!r} is not supported; allowed values: 'default', 'layer_norm'"
            )
        self.conv_layers  # parses and validates
        if self.encoder_attention_heads * HEAD_DIM != self.encoder_embed_dim:
            raise ConfigError(
                f"encoder_attention_heads={self.encoder_attention_heads} times head size {HEAD_DIM} must equal "
                f"encoder_embed_dim={self.encoder_embed_dim}"
            )
        if self.encoder_ffn_embed_dim % self.encoder_embed_dim:
            raise ConfigError(
                f"encoder_ffn_embed_dim={self.encoder_ffn_embed_dim} must be a multiple of "
                f"encoder_embed_dim={self.encoder_embed_dim}"
            )
        if self.pos_conv_depth != 1:
            raise ConfigError(
                f"pos_conv_depth={self.pos_conv_depth} is not supported; released checkpoints use 1"
            )
        if self.layer_norm_first not in (True, False):
            raise ConfigError(f"layer_norm_first={self.layer_norm_first!r} must be true or false")
        if self.activation_fn != "gelu":
            raise ConfigError(f"activation_fn={self.activation_fn!r} is not supported; allowed values: 'gelu'")
        if self.embed_dim_max % self.conv_pos_groups:
            raise ConfigError(
                f"conv_pos_groups={self.conv_pos_groups} must divide encoder_embed_dim={self.encoder_embed_dim}"
            )
        self.pred_layers

    @property
    def embed_dim_max(self) -> int:
        return self.encoder_embed_dim

    @property
    def ffn_chunks(self) -> int:
        return self.encoder_ffn_embed_dim // self.encoder_embed_dim


# ---------------------------------------------------------------------------------------------------
def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"subnet field {name!r} must be an integer, got {value!r}")
    return int(value)


def _per_layer(name: str, value: Any, layer_num: int) -> List[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != layer_num:
            raise ConfigError(
                f"subnet field {name!r} has {len(value)} entries but layer_num is {layer_num}; "
                f"give one value per kept layer or a single value for all"
            )
        return list(value)
    return [value] * layer_num


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: a single embedding width, a depth, and per kept layer heads and FFN width."""

    embed_dim: int
    layer_num: int
    heads_num: Tuple[int, ...]
    ffn_embed: Tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads_num", tuple(self.heads_num))
        object.__setattr__(self, "ffn_embed", tuple(self.ffn_embed))
        if len(self.heads_num) != self.layer_num or len(self.ffn_embed) != self.layer_num:
            raise ConfigError(
                f"heads_num and ffn_embed need layer_num={self.layer_num} entries, got "
                f"{len(self.heads_num)} and {len(self.ffn_embed)}"
            )

    @property
    def atten_dim(self) -> Tuple[int, ...]:
        return tuple(HEAD_DIM * h for h in self.heads_num)

    @property
    def ffn_ratio(self) -> Tuple[float, ...]:
        return tuple(f / self.embed_dim for f in self.ffn_embed)

    @classmethod
    def uniform(cls, embed_dim: int, heads_num: int, ffn_embed: int, layer_num: int) -> "SubnetConfig":
        return cls(embed_dim, layer_num, (heads_num,) * layer_num, (ffn_embed,) * layer_num)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SubnetConfig":
        """Read the official dict format; a single value may stand for every layer.

        ``ffn_ratio`` may replace ``ffn_embed`` (``ffn_embed = int(ratio * embed_dim)``), and ``atten_dim``
        and ``slide_wsz`` are checked rather than trusted.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a subnet must be a mapping of fields, got {type(d).__name__}")
        allowed = {"embed_dim", "layer_num", "heads_num", "ffn_embed", "ffn_ratio", "atten_dim", "slide_wsz"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"unknown subnet field(s) {unknown}; allowed fields: {sorted(allowed)}")
        for required in ("embed_dim", "layer_num", "heads_num"):
            if required not in d:
                raise ConfigError(f"subnet field {required!r} is missing")
        embed_dim = _as_int("embed_dim", d["embed_dim"])
        layer_num = _as_int("layer_num", d["layer_num"])
        heads = [_as_int("heads_num", h) for h in _per_layer("heads_num", d["heads_num"], layer_num)]
        if "ffn_embed" in d:
            ffn = [_as_int("ffn_embed", f) for f in _per_layer("ffn_embed", d["ffn_embed"], layer_num)]
            if "ffn_ratio" in d:
                ratios = _per_layer("ffn_ratio", d["ffn_ratio"], layer_num)
                for i, (f, r) in enumerate(zip(ffn, ratios)):
                    if int(float(r) * embed_dim) != f:
                        raise ConfigError(
                            f"subnet layer {i}: ffn_embed={f} disagrees with ffn_ratio={r} at embed_dim={embed_dim} "
                            f"(expected {int(float(r) * embed_dim)}); give only one of them"
                        )
        elif "ffn_ratio" in d:
            ffn = [int(float(r) * embed_dim) for r in _per_layer("ffn_ratio", d["ffn_ratio"], layer_num)]
        else:
            raise ConfigError("subnet field 'ffn_embed' (or 'ffn_ratio') is missing")
        if "atten_dim" in d:
            for i, (a, h) in enumerate(zip(_per_layer("atten_dim", d["atten_dim"], layer_num), heads)):
                if _as_int("atten_dim", a) != HEAD_DIM * h:
                    raise ConfigError(
                        f"subnet layer {i}: atten_dim={a} must equal heads_num*{HEAD_DIM}={HEAD_DIM * h}"
                    )
        if "slide_wsz" in d:
            for i, w in enumerate(_per_layer("slide_wsz", d["slide_wsz"], layer_num)):
                if w != "global":
                    raise ConfigError(
                        f"subnet layer {i}: slide_wsz={w!r} is not supported; allowed values: ['global'] "
                        f"(no released LightHuBERT model uses sliding-window attention)"
                    )
        return cls(embed_dim, layer_num, tuple(heads), tuple(ffn))

    def to_dict(self) -> Dict[str, Any]:
        """The official ``set_sample_config`` dict."""
        return {
            "atten_dim": list(self.atten_dim),
            "embed_dim": self.embed_dim,
            "ffn_embed": list(self.ffn_embed),
            "heads_num": list(self.heads_num),
            "layer_num": self.layer_num,
            "slide_wsz": ["global"] * self.layer_num,
        }

    def validate_for(self, model: ModelConfig) -> None:
        """Check that this subnet is a slice of ``model``; errors name the field and the allowed values."""
        E_max, heads_max = model.encoder_embed_dim, model.encoder_attention_heads
        if not 0 < self.embed_dim <= E_max:
            raise ConfigError(f"subnet field 'embed_dim'={self.embed_dim} is not allowed; allowed values: 1..{E_max}")
        if self.embed_dim % model.conv_pos_groups:
            raise ConfigError(
                f"subnet field 'embed_dim'={self.embed_dim} is not allowed; it must be a multiple of "
                f"conv_pos_groups={model.conv_pos_groups}"
            )
        kept_layers(self.layer_num, model.encoder_layers)
        for i, (h, f) in enumerate(zip(self.heads_num, self.ffn_embed)):
            if not 0 < h <= heads_max:
                raise ConfigError(
                    f"subnet field 'heads_num'[{i}]={h} is not allowed; allowed values: 1..{heads_max}"
                )
            f_max = model.ffn_chunks * self.embed_dim
            if not 0 < f <= f_max:
                raise ConfigError(
                    f"subnet field 'ffn_embed'[{i}]={f} is not allowed at embed_dim={self.embed_dim}; "
                    f"allowed values: 1..{f_max} ({model.ffn_chunks} x embed_dim)"
                )

    def describe(self) -> str:
        def compact(values: Sequence[Any]) -> str:
            return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))

        return (
            f"embed_dim={self.embed_dim} layers={self.layer_num} heads={compact(self.heads_num)} "
            f"ffn={compact(self.ffn_embed)}"
        )


# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """A LightHuBERT search space; ``default`` is the released subnet of that space."""

    name: str
    embed_dim: Tuple[int, ...]
    heads_num: Tuple[int, ...]
    ffn_ratio: Tuple[float, ...]
    layer_num: Tuple[int, ...]
    default: SubnetConfig

    @property
    def size(self) -> int:
        """Number of distinct subnets (the authors' ``search_space_size``)."""
        per_layer = len(self.ffn_ratio) * len(self.heads_num)
        return len(self.embed_dim) * sum(per_layer ** d for d in self.layer_num)

    def max_subnet(self) -> SubnetConfig:
        E = max(self.embed_dim)
        return SubnetConfig.uniform(E, max(self.heads_num), int(max(self.ffn_ratio) * E), max(self.layer_num))

    def min_subnet(self) -> SubnetConfig:
        E = min(self.embed_dim)
        return SubnetConfig.uniform(E, min(self.heads_num), int(min(self.ffn_ratio) * E), min(self.layer_num))

    def sample(self, rng: Union[int, random.Random, None] = None) -> SubnetConfig:
        """Uniform sample, drawing in the authors' order so a seeded ``random`` gives their subnet."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        layer_num = rng.choice(self.layer_num)
        E = rng.choice(self.embed_dim)
        ffn = [int(rng.choice(self.ffn_ratio) * E) for _ in range(layer_num)]
        heads = [rng.choice(self.heads_num) for _ in range(layer_num)]
        return SubnetConfig(E, layer_num, tuple(heads), tuple(ffn))

    def contains(self, subnet: SubnetConfig) -> bool:
        return (
            subnet.embed_dim in self.embed_dim
            and subnet.layer_num in self.layer_num
            and all(h in self.heads_num for h in subnet.heads_num)
            and all(f in {int(r * subnet.embed_dim) for r in self.ffn_ratio} for f in subnet.ffn_embed)
        )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "SearchSpace":
        """Inverse of :meth:`to_dict`, for custom spaces (e.g. of a non-standard width)."""
        lists: Dict[str, Tuple[Any, ...]] = {}
        for key, cast in (("embed_dim", int), ("heads_num", int), ("ffn_ratio", float), ("layer_num", int)):
            values = spec.get(key)
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"space.{key} must be a non-empty list (e.g. embed_dim: [256, 384, 512]), got {values!r}")
            try:
                lists[key] = tuple(sorted({cast(v) for v in values}))
            except (TypeError, ValueError):
                raise ConfigError(f"space.{key}={values!r} must hold numbers") from None
        E = max(lists["embed_dim"])
        default = SubnetConfig.uniform(E, max(lists["heads_num"]), int(max(lists["ffn_ratio"]) * E), max(lists["layer_num"]))
        if spec.get("default") is not None:
            try:
                default = resolve_subnet(spec["default"])
            except ConfigError as err:
                raise ConfigError(f"space.default: {err}") from None
        space = cls(str(spec.get("name", "custom")), lists["embed_dim"], lists["heads_num"], lists["ffn_ratio"],
                    lists["layer_num"], default)
        if not space.contains(default):
            raise ConfigError(f"space.default ({default.describe()}) is not a member of the space it defaults")
        return space

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "embed_dim": list(self.embed_dim),
            "heads_num": list(self.heads_num),
            "ffn_ratio": list(self.ffn_ratio),
            "layer_num": list(self.layer_num),
            "default": self.default.to_dict(),
        }


SEARCH_SPACES: Dict[str, SearchSpace] = {
    "base": SearchSpace(
        "base", (512, 640, 768), (8, 10, 12), (3.5, 4.0), (12,), SubnetConfig.uniform(640, 10, 2560, 12)
    ),
    "small": SearchSpace(
        "small", (256, 384, 512), (4, 6, 8), (3.0, 3.5, 4.0), (10, 11, 12), SubnetConfig.uniform(384, 6, 1536, 12)
    ),
}


def get_search_space(name: str) -> SearchSpace:
    try:
        return SEARCH_SPACES[name]
    except KeyError:
        raise ConfigError(f"unknown search space {name!r}; allowed values: {sorted(SEARCH_SPACES)}") from None


def preset_names() -> List[str]:
    names = ["small", "base", "stage1"]
    for space in SEARCH_SPACES:
        names += [f"{space}-max", f"{space}-min"]
    return names


def get_preset(name: str) -> SubnetConfig:
    """``small``/``base`` (released subnets), ``stage1`` (the full 768 model), ``{space}-max``/``-min``."""
    key = name.lower().replace("_", "-")
    if key in SEARCH_SPACES:
        return SEARCH_SPACES[key].default
    if key == "stage1":
        return SEARCH_SPACES["base"].max_subnet()
    space, _, end = key.rpartition("-")
    if space in SEARCH_SPACES and end in ("max", "min"):
        s = SEARCH_SPACES[space]
        return s.max_subnet() if end == "max" else s.min_subnet()
    raise ConfigError(f"unknown subnet preset {name!r}; allowed values: {preset_names()}")


def load_subnet_file(path: Union[str, Path], _seen: Tuple[Path, ...] = ()) -> SubnetConfig:
    """Read a subnet from YAML or JSON. The file may hold the dict itself, ``{subnet: {...}}``, or, as the
    upstream's ``-g`` options do, ``{subnet: SPEC}`` with a preset, ``random:``/``budget:`` or a file beside it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"subnet config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - parser errors vary by library
        raise ConfigError(f"subnet config file {str(path)!r} cannot be parsed: {err}") from None
    if isinstance(data, Mapping) and "subnet" in data and isinstance(data["subnet"], Mapping):
        data = data["subnet"]
    elif isinstance(data, Mapping) and isinstance(data.get("subnet"), str):
        # the -g options form, `subnet: small` (or random:/budget: or a file beside this one), read alike here
        spec = data["subnet"]
        beside = path.parent / spec
        if beside.suffix.lower() in (".yaml", ".yml", ".json") and beside.is_file():
            seen = _seen + (path.resolve(),)
            if beside.resolve() in seen:
                raise ConfigError(f"subnet config file {str(path)!r} refers back to {str(beside)!r}: a loop")
            return load_subnet_file(beside, seen)
        try:
            return resolve_subnet(spec)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if isinstance(data, Mapping) and set(data) == {"preset"}:
        return get_preset(str(data["preset"]))
    try:
        return SubnetConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save_subnet_file(subnet: SubnetConfig, path: Union[str, Path], **extra: Any) -> None:
    """Write a subnet as YAML (or JSON by suffix), atomically; ``extra`` fields go beside ``subnet``."""
    from ..io_utils import atomic_write_text

    path = Path(path)
    data = {"subnet": subnet.to_dict(), **extra}
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)


def resolve_subnet(
    spec: Union[None, str, Path, Mapping[str, Any], SubnetConfig],
    default: Optional[SubnetConfig] = None,
) -> SubnetConfig:
    """Turn a preset name, ``random:SPACE:SEED``, ``budget:SPACE:PARAMS``, a file path or a dict into a subnet.

    ``None`` gives ``default`` (the checkpoint's own subnet).
    """
    if spec is None or spec == "":
        if default is None:
            raise ConfigError("no subnet given and the checkpoint names none")
        return default
    if isinstance(spec, SubnetConfig):
        return spec
    if isinstance(spec, Mapping):
        return SubnetConfig.from_dict(spec)
    text = str(spec)
    if text.startswith("random:"):
        parts = text.split(":")
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise ConfigError(f"subnet spec {text!r} must look like 'random:SPACE:SEED', e.g. 'random:small:0'")
        return get_search_space(parts[1]).sample(int(parts[2]))
    if text.startswith("budget:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"subnet spec {text!r} must look like 'budget:SPACE:PARAMS', e.g. 'budget:small:30e6'")
        try:
            budget = int(float(parts[2]))
        except ValueError:
            raise ConfigError(f"subnet spec {text!r}: budget {parts[2]!r} is not a number") from None
        return largest_subnet_under_budget(get_search_space(parts[1]), budget)
    if Path(text).suffix.lower() in (".yaml", ".yml", ".json") or Path(text).is_file():
        return load_subnet_file(text)
    return get_preset(text)


# ---------------------------------------------------------------------------------------------------
def count_parameters(subnet: SubnetConfig, model: ModelConfig = ModelConfig()) -> int:
    """Parameters of a subnet, counted as the authors' ``calc_sampled_param_num``.

    The CNN, its LayerNorm and ``mask_emb`` count in full; the positional conv counts its sliced weight
    and bias (not ``weight_g``); prediction heads are excluded.
    """
    subnet.validate_for(model)
    E = subnet.embed_dim
    return _shared_parameters(E, model) + sum(
        _layer_parameters(E, HEAD_DIM * h, f) for h, f in zip(subnet.heads_num, subnet.ffn_embed)
    )


def _shared_parameters(E: int, model: ModelConfig) -> int:
    """Everything outside the transformer layers at embedding width ``E``."""
    cnn = 0
    in_dim = 1
    for i, (dim, kernel, _) in enumerate(model.conv_layers):
        cnn += dim * in_dim * kernel + (dim if model.conv_bias else 0)
        if model.extractor_mode == "layer_norm" or i == 0:
            cnn += 2 * dim
        in_dim = dim
    C = model.cnn_dim
    total = cnn + model.encoder_embed_dim + 2 * C  # CNN, mask_emb, layer_norm
    total += E * C + E  # post_extract_proj
    total += E * (E // model.conv_pos_groups) * model.conv_pos + E  # pos_conv
    return total + 2 * E  # encoder.layer_norm


def _layer_parameters(E: int, A: int, F: int) -> int:
    return 3 * (A * E + A) + (E * A + E) + (F * E + F) + (E * F + E) + 4 * E


def largest_subnet_under_budget(
    space: SearchSpace,
    max_params: int,
    model: ModelConfig = ModelConfig(),
) -> SubnetConfig:
    """The subnet of ``space`` with the most parameters not above ``max_params``.

    Given the width and depth, layers are independent, so every multiset of per-layer (heads, FFN)
    choices is tried: the answer is exact. Ties go to the narrower, shallower subnet found first;
    bigger layers are placed first.
    """
    best: Optional[Tuple[int, SubnetConfig]] = None
    for E in sorted(space.embed_dim):
        options = sorted(
            (
                (_layer_parameters(E, HEAD_DIM * h, int(r * E)), h, int(r * E))
                for h in space.heads_num
                for r in space.ffn_ratio
            ),
            reverse=True,
        )
        shared = _shared_parameters(E, model)
        for layer_num in sorted(space.layer_num):
            for combo in itertools.combinations_with_replacement(range(len(options)), layer_num):
                total = shared + sum(options[i][0] for i in combo)
                if total <= max_params and (best is None or total > best[0]):
                    chosen = [options[i] for i in combo]
                    best = (total, SubnetConfig(E, layer_num, tuple(c[1] for c in chosen), tuple(c[2] for c in chosen)))
    if best is None:
        smallest = count_parameters(space.min_subnet(), model)
        raise ConfigError(
            f"no subnet of the {space.name!r} space fits in {max_params:,} parameters; the smallest has {smallest:,}"
        )
    best[1].validate_for(model)
    return best[1]
