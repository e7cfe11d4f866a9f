"""Training configuration: a YAML file, ``--override key=value`` edits, and a checked schema.

Every section is a dataclass; an unknown key, a wrong type or an impossible value raises
:class:`~lighthubert_s3prl.model.config.ConfigError` with the full dotted key and the allowed values, so a typo
never silently falls back to a default. Relative paths are taken from the current directory.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from ..model.config import SEARCH_SPACES, ConfigError, SearchSpace

STAGES = ("stage1", "stage2", "ekd")


@dataclass
class SyntheticData:
    """Generated harmonic 'speech' for smoke tests and CI; no files needed."""

    utterances: int = 64
    valid_utterances: int = 16
    seconds: float = 2.0
    seed: int = 0


@dataclass
class DataConfig:
    train: Optional[str] = None  # a folder of audio, a list file (one path per line), or "synthetic"
    valid: Optional[str] = None  # held-out audio for validation and subnet search; same forms
    extensions: List[str] = field(default_factory=lambda: [".wav", ".flac"])
    sample_rate: int = 16000
    crop_seconds: float = 2.0  # longer files are randomly cropped to this
    min_seconds: float = 0.5  # shorter files are skipped
    batch_size: int = 8  # per process
    num_workers: int = 0
    valid_batches: int = 8  # at most this many held-out batches are used
    synthetic: SyntheticData = field(default_factory=SyntheticData)

    def validate(self, where: str) -> None:
        _positive(where, "crop_seconds", self.crop_seconds)
        _positive(where, "batch_size", self.batch_size)
        _positive(where, "valid_batches", self.valid_batches)
        if self.min_seconds > self.crop_seconds:
            raise ConfigError(f"{where}.min_seconds={self.min_seconds} exceeds {where}.crop_seconds={self.crop_seconds}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}.num_workers={self.num_workers} must be >= 0")


@dataclass
class TeacherConfig:
    """A frozen teacher: an s3prl upstream by ``name`` (e.g. hubert_base, or hubert_local + ckpt), or,
    with only ``ckpt``, a LightHuBERT checkpoint. LightHuBERT teachers (a bare ckpt, or our names such as
    lighthubert_local / lighthubert_small) run our model directly, so they also expose the FFN outputs.
    """

    name: Optional[str] = None
    ckpt: Optional[str] = None
    model_config: Optional[str] = None
    subnet: Any = None  # LightHuBERT teachers: which subnet runs (default: the checkpoint's own)
    layers: Any = None  # EKD: hidden-state indices this teacher contributes, e.g. [4, 8, 12]
    # the teacher's own precision, whatever train.amp the student uses: targets are not rounded to bf16/fp16
    # unless asked (a half-precision teacher saves memory and time on a GPU)
    dtype: str = "float32"

    def validate(self, where: str) -> None:
        if not self.name and not self.ckpt:
            raise ConfigError(
                f"{where} names no teacher: give 'name' (an s3prl upstream such as hubert_base) or 'ckpt' "
                f"(a LightHuBERT checkpoint)"
            )
        _choice(where, "dtype", self.dtype, TEACHER_DTYPES)

    @property
    def label(self) -> str:
        return self.name or Path(str(self.ckpt)).stem


@dataclass
class TargetConfig:
    """What the student regresses in stages 1 and 2 (and how EKD teacher layers are normalised)."""

    source: str = "layer_results"  # FFN outputs before the residual (data2vec style) or hidden_states
    layers: Any = "last:8"  # "last:N", one index, or a list of indices into source
    # none | instance | layer, applied to each layer before averaging. Unset: instance for layer_results
    # (data2vec's instance_norm_target_layer, whose target LightHuBERT's authors say they follow), none for
    # hidden_states (DistilHuBERT and EKD regress them as they are)
    per_layer_norm: Optional[str] = None
    final_norm: str = "none"  # none | instance | layer, applied to the average

    def __post_init__(self) -> None:  # also when the section is absent from the file
        if self.per_layer_norm is None:
            self.per_layer_norm = "instance" if self.source == "layer_results" else "none"

    def validate(self, where: str) -> None:
        _choice(where, "source", self.source, ("layer_results", "hidden_states"))
        _choice(where, "per_layer_norm", self.per_layer_norm, NORMS)
        _choice(where, "final_norm", self.final_norm, NORMS)
        parse_layer_spec(self.layers, f"{where}.layers")


NORMS = ("none", "instance", "layer")
TEACHER_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class MaskConfig:
    enabled: bool = True
    prob: float = 0.65
    length: int = 10
    min_spans: int = 2

    def validate(self, where: str) -> None:
        if not 0.0 <= self.prob < 1.0:
            raise ConfigError(f"{where}.prob={self.prob} must be in [0, 1)")
        _positive(where, "length", self.length)


@dataclass
class LossConfig:
    type: str = "l1"  # l1 | l2 | smooth_l1 | l1_cos (DistilHuBERT: L1 - cos_weight * log sigmoid(cos))
    cos_weight: float = 1.0
    frames: str = "masked"  # which frames count: masked | unmasked | all
    # EKD heads: sum their losses (DistilHuBERT's paper, Eq. 1: a sum over the predicted layers) or mean them
    # (s3prl's DistilHuBERT pre-training code, which averages over heads); the scale meets the gradient clip
    heads: str = "sum"

    def validate(self, where: str) -> None:
        _choice(where, "type", self.type, LOSS_TYPES)
        _choice(where, "frames", self.frames, ("masked", "unmasked", "all"))
        _choice(where, "heads", self.heads, ("sum", "mean"))


LOSS_TYPES = ("l1", "l2", "smooth_l1", "l1_cos")


@dataclass
class StudentConfig:
    type: str = "supernet"  # supernet | distiller (EKD only: a few-layer HuBERT-shaped model)
    # checkpoint to start from (stage 2: the stage-1 model.pt, required). EKD also takes an s3prl HuBERT
    # checkpoint file or teacher:N / teacher:LABEL (that HuBERT-family teacher's weights, DistilHuBERT style)
    init: Optional[str] = None
    model: Any = None  # from scratch: "base", "tiny" or a mapping of ModelConfig fields
    subnet: Any = None  # EKD with a LightHuBERT student: the subnet trained (preset, file or dict)
    layers: int = 2  # distiller depth

    def validate(self, where: str) -> None:
        _choice(where, "type", self.type, ("supernet", "distiller"))
        _positive(where, "layers", self.layers)


@dataclass
class SamplingConfig:
    """Stage 2: which subnets each step trains."""

    strategy: str = "uniform"  # uniform (as released: one random subnet) | sandwich (max + min + random)
    random_subnets: int = 1  # random subnets per step (sandwich adds max and min)
    # True: each process and micro-batch draws its own subnet(s) (still fixed by seed, step, micro-batch and
    # rank), as the released code's unseeded per-GPU draw does; an update then averages gradients over several
    # subnets. False: every process and micro-batch of an update trains the same one. Measured in miniature
    # (docs/training.md §9), per_rank was no worse anywhere and better for the largest subnet on IC.
    per_rank: bool = True

    def validate(self, where: str) -> None:
        _choice(where, "strategy", self.strategy, ("uniform", "sandwich"))
        if self.random_subnets < 0 or (self.strategy == "uniform" and self.random_subnets < 1):
            raise ConfigError(f"{where}.random_subnets={self.random_subnets} must be >= 1 (>= 0 with sandwich)")


@dataclass
class EKDConfig:
    aggregation: str = "average"  # average | concat of the teachers' layers per head, or separate heads

    def validate(self, where: str) -> None:
        _choice(where, "aggregation", self.aggregation, ("average", "concat", "separate"))


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    min_lr_ratio: float = 0.0
    grad_clip: float = 10.0  # 0 disables

    def validate(self, where: str) -> None:
        _positive(where, "lr", self.lr)
        _choice(where, "schedule", self.schedule, ("linear", "cosine", "constant"))
        if len(self.betas) != 2:
            raise ConfigError(f"{where}.betas must hold two numbers, got {self.betas}")


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer updates in total
    accumulate: int = 1  # batches per update
    amp: str = "none"  # none | bf16 | fp16 (fp16 needs CUDA)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    output_dir: str = "runs/train"
    log_every: int = 10
    save_every: int = 500
    eval_every: int = 0  # 0: never (needs data.valid)
    resume: str = "auto"  # auto (continue if output_dir holds a state) | never | PATH to a state file
    stop_after: Optional[int] = None  # stop, resumable, after this many updates in this run
    tensorboard: bool = True
    progress: bool = True
    save_state: bool = True  # write the resume state (optimizer etc.) beside the model

    def validate(self, where: str) -> None:
        _positive(where, "steps", self.steps)
        _positive(where, "accumulate", self.accumulate)
        _positive(where, "log_every", self.log_every)
        _positive(where, "save_every", self.save_every)
        _choice(where, "amp", self.amp, ("none", "bf16", "fp16"))
        _choice(where, "device", self.device, ("auto", "cpu", "cuda"))
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"{where}.stop_after={self.stop_after} must be >= 1 (or null)")


@dataclass
class TrainingConfig:
    stage: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: Optional[TeacherConfig] = None  # stages 1 and 2 (sugar for a one-element teachers list)
    teachers: List[TeacherConfig] = field(default_factory=list)
    target: TargetConfig = field(default_factory=TargetConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    space: Any = None  # stage 2 / search: small | base | {name, embed_dim, heads_num, ffn_ratio, layer_num, default}
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ekd: EKDConfig = field(default_factory=EKDConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def validate(self, where: str = "") -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r} is not a training stage; allowed values: {list(STAGES)}")
        if self.teacher is not None:
            if self.teachers:
                raise ConfigError("give either 'teacher' or 'teachers', not both")
            self.teachers = [self.teacher]
            self.teacher = None
        if not self.teachers:
            raise ConfigError("no teacher: set teacher.name (an s3prl upstream, e.g. hubert_base) or teacher.ckpt")
        if self.stage in ("stage1", "stage2") and len(self.teachers) != 1:
            raise ConfigError(f"{self.stage} distils from exactly one teacher, got {len(self.teachers)}; "
                              f"several teachers are for stage 'ekd'")
        if self.stage == "stage2" and not self.student.init:
            raise ConfigError(
                "stage2 initialises the supernet from a stage-1 checkpoint: set student.init=PATH "
                "(the model.pt a stage-1 run wrote)"
            )
        if self.stage != "ekd" and str(self.student.init or "").startswith("teacher:"):
            raise ConfigError(f"student.init={self.student.init} (a teacher's weights) is for stage 'ekd'; "
                              f"{self.stage} starts from a LightHuBERT checkpoint file")
        if self.stage != "ekd" and self.student.type != "supernet":
            raise ConfigError(f"student.type={self.student.type!r} is only for stage 'ekd'; {self.stage} trains the supernet")
        if self.stage == "ekd":
            for i, t in enumerate(self.teachers):
                if t.layers is None:
                    raise ConfigError(f"teachers.{i}.layers is missing: EKD needs the teacher layers to predict, e.g. [4, 8, 12]")
                parse_layer_spec(t.layers, f"teachers.{i}.layers")
            if self.ekd.aggregation != "separate":
                counts = {len(parse_layer_spec(t.layers, "")) for t in self.teachers}
                if len(counts) != 1:
                    raise ConfigError(
                        f"ekd.aggregation={self.ekd.aggregation} pairs the teachers' layers head by head, so every "
                        f"teachers.N.layers list needs the same length; use ekd.aggregation=separate otherwise"
                    )
        if self.stage in ("stage2",) or self.space is not None:
            resolve_space(self.space if self.space is not None else "small")
        if not self.mask.enabled and self.loss.frames != "all":
            raise ConfigError(f"loss.frames={self.loss.frames} needs input masking, but mask.enabled is false; "
                              f"set loss.frames=all or mask.enabled=true")
        if self.train.eval_every and not self.data.valid:
            raise ConfigError("train.eval_every is set but data.valid is not; give held-out audio or set train.eval_every=0")
        if not self.data.train:
            raise ConfigError("data.train is missing: give a folder of .wav/.flac files, a list file, or 'synthetic'")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# per-stage defaults, applied beneath the user's values
STAGE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "stage1": {},
    "stage2": {"space": "small"},
    # DistilHuBERT/EKD: no input masking, every frame counts, L1 - log sigmoid(cos)
    "ekd": {"mask": {"enabled": False}, "loss": {"type": "l1_cos", "frames": "all"},
            "target": {"source": "hidden_states"}},
}


def parse_layer_spec(spec: Any, where: str) -> List[int]:
    """``"last:8"`` -> [-8..-1]; an int -> [int]; a list -> itself. Negative indices count from the end."""
    if isinstance(spec, bool):
        raise ConfigError(f"{where}={spec!r} is not a layer spec; use 'last:N', an index or a list of indices")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("last:") and text[5:].isdigit() and int(text[5:]) > 0:
            return list(range(-int(text[5:]), 0))
        if text.lstrip("-").isdigit():
            return [int(text)]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        return list(spec)
    raise ConfigError(f"{where}={spec!r} is not a layer spec; use 'last:N' (e.g. 'last:8'), an index, or a list like [4, 8, 12]")


def resolve_space(spec: Any) -> SearchSpace:
    """A released space by name, or a custom one from a mapping (for non-standard widths such as tiny models)."""
    if isinstance(spec, SearchSpace):
        return spec
    if isinstance(spec, str):
        if spec not in SEARCH_SPACES:
            raise ConfigError(f"space={spec!r} is unknown; allowed names: {sorted(SEARCH_SPACES)}, or a mapping "
                              f"with embed_dim, heads_num, ffn_ratio and layer_num lists")
        return SEARCH_SPACES[spec]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"space must be a name {sorted(SEARCH_SPACES)} or a mapping, got {spec!r}")
    allowed = {"name", "embed_dim", "heads_num", "ffn_ratio", "layer_num", "default"}
    _reject_unknown(spec, allowed, "space")
    return SearchSpace.from_dict(spec)


def space_from_dict(data: Mapping[str, Any]) -> SearchSpace:
    """Inverse of ``SearchSpace.to_dict`` (what checkpoints record as ``search_space_def``)."""
    return resolve_space(dict(data))


# ---------------------------------------------------------------------------------------------------
def _positive(where: str, key: str, value: float) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{where}.{key}={value!r} must be > 0")


def _choice(where: str, key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}.{key}={value!r} is not allowed; allowed values: {list(allowed)}")


def _reject_unknown(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
            raise ConfigError(f"unknown config key {_join(where, key)!r}{hint} Allowed keys"
                              f"{' in ' + repr(where) if where else ''}: {sorted(allowed)}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if dataclasses.is_dataclass(typ):
        return build_section(typ, value, where)
    if origin in (list, List):
        (item,) = typing.get_args(typ) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}.{i}") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):
            try:  # YAML reads "2e-4" as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def build_section(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; ``where`` is the dotted key."""
    if data is None:
        data = {}
    if cls is TeacherConfig and isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _reject_unknown(data, names, where)
    values = {}
    for name in names:
        if name not in data:
            continue
        key = _join(where, name)
        if cls is TrainingConfig and name == "teachers":
            if not isinstance(data[name], (list, tuple)):
                raise ConfigError(f"teachers must be a list of teacher mappings, got {data[name]!r}")
            values[name] = [build_section(TeacherConfig, t, f"teachers.{i}") for i, t in enumerate(data[name])]
        elif cls is TrainingConfig and name == "teacher":
            values[name] = None if data[name] is None else build_section(TeacherConfig, data[name], key)
        else:
            values[name] = _coerce(data[name], hints[name], key)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None and cls is not TrainingConfig:
        validate(where)
    return obj


def _deep_merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(data: Dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` in place; the value is parsed as YAML (``3``, ``1e-4``, ``[4, 8]``, ``null``)."""
    if "=" not in override:
        raise ConfigError(f"--override {override!r} must look like key.sub=value, e.g. train.steps=100")
    key, _, raw = override.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--override {override!r}: the value cannot be parsed as YAML ({err})") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise ConfigError(f"--override {override!r}: {'.'.join(parts[:i + 1])} is not a valid list index")
            if int(part) == len(node):  # one past the end adds an entry, e.g. teachers.1.name=...
                node.append([] if nxt.isdigit() else {})
            node = node[int(part)]
            continue
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        elif isinstance(node[part], str) and part == "teacher":
            node[part] = {"name": node[part]}  # allow teacher.ckpt=... after teacher: NAME
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise ConfigError(f"--override {override!r}: {last} is not a valid list index")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--override {override!r}: {'.'.join(parts[:-1])} is not a section")


def load_config(
    source: Union[str, Path, Mapping[str, Any], None],
    overrides: Sequence[str] = (),
    stage: Optional[str] = None,
) -> TrainingConfig:
    """Read a YAML file (or take a dict), apply overrides and stage defaults, and check everything."""
    if source is None:
        data: Dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"training config {str(path)!r} does not exist; pass a YAML file such as "
                              f"configs/train/stage1_tiny.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"training config {path} is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"training config {path} must hold a mapping of sections, got {type(data).__name__}")
        data = dict(data)
    for item in overrides:
        apply_override(data, item)
    file_stage = data.get("stage")
    if stage is not None and file_stage is not None and stage != file_stage:
        raise ConfigError(f"the command asks for {stage!r} but the config says stage: {file_stage}; "
                          f"run 'train {file_stage} ...' or change the config")
    chosen = stage or file_stage
    if chosen not in STAGES:
        raise ConfigError(f"stage={chosen!r} is not a training stage; allowed values: {list(STAGES)}")
    data["stage"] = chosen
    data = _deep_merge(STAGE_DEFAULTS[chosen], data)
    cfg = build_section(TrainingConfig, data, "")
    cfg.validate()
    return cfg
