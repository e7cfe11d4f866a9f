"""What a batch SUPERB run is asked to do: :class:`RunOptions`, and the parsing and checks behind them.

The command line (:mod:`lighthubert_s3prl.superb.runner`) and the quickstart build their options with
these functions, so both refuse the same bad input with the same message.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from .units import TASK_ORDER, tasks_module

if TYPE_CHECKING:  # both import torch or the task registry, which the runner loads lazily
    from lighthubert_s3prl.model.config import SubnetConfig
    from lighthubert_s3prl.superb.tasks import BatchPlan


class RunnerError(ValueError):
    """Bad input to the runner; the message says what is wrong and how to fix it."""


@dataclass
class SlurmSettings:
    """What every unit job asks SLURM for (``--slurm-*`` options; GPUs per unit come from ``--gpus``)."""

    folder: Path  # submitit's job folder: submission scripts, pickles, each job's stdout/stderr
    partition: Optional[str] = None
    time_min: int = 24 * 60
    cpus_per_unit: Optional[int] = None
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None  # None: as many as SLURM allows
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    signal_delay_s: int = 120  # the warning before the time limit, for a clean stop and requeue
    extra: Dict[str, str] = field(default_factory=dict)  # any other sbatch option, without the dashes


def parse_extra(items: Sequence[str]) -> Dict[str, str]:
    """``--slurm-extra KEY=VALUE`` (repeatable) -> sbatch options."""
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunnerError(f"--slurm-extra {item!r}: expected KEY=VALUE, e.g. --slurm-extra exclude=node3")
        out[key.strip().lstrip("-")] = value.strip()
    return out


@dataclass
class RunOptions:
    """Everything a batch run needs, checked: the upstream, the tasks and their data, where results go."""

    upstream: str
    tasks: List[str]
    data: Dict[str, Dict[str, Any]]
    exp_root: Path
    ckpt: Optional[str] = None
    subnet: Optional[str] = None
    scale: str = "full"
    lr: Dict[str, float] = field(default_factory=dict)
    sets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    er_folds: List[str] = field(default_factory=list)
    gpus: int = 0
    allow_cleaned_asv_trials: bool = False
    device: str = "cpu"
    seed: Optional[int] = None
    threads: Optional[int] = None
    parallel: int = 1  # units at a time on this host (--executor local:N)
    slurm: Optional[SlurmSettings] = None  # --executor slurm: units as cluster jobs
    feature_cache_mb: Optional[float] = None  # None: feature_cache.SMALL_SCALE_CACHE_MB below the full scale
    dry_run: bool = False
    stream: bool = False
    fail_fast: bool = False
    test_during_training: bool = False
    python: str = sys.executable
    extra_args: List[str] = field(default_factory=list)  # added to training runs (e.g. -s, -l)


# ----------------------------------------------------------------------------------------------------
# parsing


def parse_task_list(text: Union[str, Iterable[str]]) -> List[str]:
    """``"all"`` or ``"ks,ic"`` (any order, repeats ignored) -> tasks in the paper-table order."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    if not items:
        raise RunnerError("no task given; use --tasks all or a comma-separated list of " + ",".join(TASK_ORDER))
    if "all" in items:
        return list(TASK_ORDER)
    unknown = [t for t in items if t not in TASK_ORDER]
    if unknown:
        raise RunnerError(f"unknown task(s) {', '.join(unknown)}; choose from {','.join(TASK_ORDER)} or all")
    return [t for t in TASK_ORDER if t in items]


def parse_folds(text: Optional[str]) -> List[str]:
    folds = tasks_module().ER_FOLDS
    if text is None:
        return list(folds)
    wanted = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name = item if item.startswith("fold") else f"fold{item}"
        if name not in folds:
            raise RunnerError(f"unknown ER fold {item!r}; use numbers 1-5 or fold1..fold5")
        wanted.append(name)
    return [f for f in folds if f in wanted]


def _parse_scalar(text: str) -> Any:
    """``4`` -> int, ``1e-3`` -> float (YAML 1.1 would keep it a string), else YAML (lists, bools...)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_executor(text: str) -> Tuple[str, int]:
    """``--executor``: ``local`` (one unit at a time), ``local:N`` (N at once) or ``slurm`` (cluster jobs);
    returns the kind and the units at once on this host."""
    kind, sep, count = text.strip().partition(":")
    if kind in ("local", "slurm") and not sep:
        return kind, 1
    if kind == "local" and count.isdigit() and int(count) >= 1:
        return kind, int(count)
    raise RunnerError(f"--executor {text!r}: use local (one unit at a time), local:N (N units at once, N >= 1) "
                      "or slurm (each unit a SLURM job, through submitit)")


def gpu_slots(parallel: int, gpus: int, visible: Optional[str], device_count: int) -> List[str]:
    """``CUDA_VISIBLE_DEVICES`` of each of ``parallel`` concurrent units taking ``gpus`` GPUs each.

    ``visible`` is the runner's own ``CUDA_VISIBLE_DEVICES`` (None: all ``device_count`` devices); the slots
    are disjoint runs of it, so concurrent units never share a GPU.
    """
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else \
        [str(i) for i in range(device_count)]
    need = parallel * gpus
    if need > len(devices):
        raise RunnerError(f"--executor local:{parallel} with --gpus {gpus} needs {need} GPU(s), one set per unit "
                          f"at a time; {len(devices)} visible ({','.join(devices) or 'none'}). Lower N or --gpus")
    return [",".join(devices[i * gpus:(i + 1) * gpus]) for i in range(parallel)]


def parse_lr(values: Sequence[str], tasks: Sequence[str]) -> Dict[str, float]:
    """``--lr 1e-3`` (every task) and/or ``--lr sid=5e-3,ks=1e-4`` -> {task: lr}."""
    out: Dict[str, float] = {}
    for value in values:
        for item in (s.strip() for s in value.split(",") if s.strip()):
            task, sep, number = item.rpartition("=")
            try:
                lr = float(number)
            except ValueError:
                raise RunnerError(f"--lr {item!r}: {number!r} is not a number (e.g. --lr 1e-4 or --lr sid=5e-3)") from None
            if lr <= 0:
                raise RunnerError(f"--lr {item!r}: the learning rate must be positive")
            if not sep:
                out.update({t: lr for t in tasks})
            elif task.lower() in TASK_ORDER:
                out[task.lower()] = lr
            else:
                raise RunnerError(f"--lr {item!r}: unknown task {task!r}; choose from {','.join(TASK_ORDER)}")
    return out


def parse_sets(values: Sequence[str], tasks: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``--set runner.total_steps=4`` (every task) or ``--set asv:runner.save_step=2`` -> {task: {key: value}}."""
    out: Dict[str, Dict[str, Any]] = {t: {} for t in tasks}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise RunnerError(f"--set {value!r}: expected KEY=VALUE or TASK:KEY=VALUE, e.g. --set runner.total_steps=100")
        task, colon, key = key.strip().rpartition(":")
        targets = tasks if not colon else [task.lower()]
        if colon and task.lower() not in TASK_ORDER:
            raise RunnerError(f"--set {value!r}: unknown task {task!r}; choose from {','.join(TASK_ORDER)}")
        for t in targets:
            if t in out:
                out[t][key] = _parse_scalar(raw.strip())
    return out


LIGHTHUBERT_ENTRIES = ("lighthubert", "lighthubert_small", "lighthubert_base", "lighthubert_stage1",
                       "lighthubert_local", "lighthubert_subnet", "lighthubert_url")


def _lighthubert_presets() -> Dict[str, str]:
    from lighthubert_s3prl.upstream.hubconf import PRESET_OF  # imports torch: only when a rate is to be chosen

    return {"lighthubert": "small", **PRESET_OF}  # -u lighthubert is s3prl's alias of lighthubert_small


def _local_checkpoint(ckpt: str) -> Optional[Path]:
    """``ckpt`` as a file: itself, or for a URL the copy s3prl's downloader keeps (None if not fetched yet)."""
    if not re.match(r"^[a-z]+://", ckpt):
        return Path(ckpt)
    try:
        from s3prl.util.download import _urls_to_filepaths

        cached = Path(_urls_to_filepaths(ckpt, download=False))
    except Exception:  # noqa: BLE001 - s3prl missing or changed: treat as not downloaded
        return None
    return cached if cached.is_file() else None


def run_subnet(upstream: str, ckpt: Optional[str],
               model_config: Optional[str]) -> Tuple[Optional["SubnetConfig"], str]:
    """The subnet ``-u upstream -k ckpt -g model_config`` will run, and how that was found.

    Mirrors the hub entries: ``-g``'s subnet wins; without one the official names run their released
    subnet and the other entries the checkpoint's own. ``(None, reason)`` when it cannot be known yet.
    """
    if upstream not in LIGHTHUBERT_ENTRIES:
        return None, f"-u {upstream} is not a LightHuBERT entry"
    from lighthubert_s3prl.model.config import resolve_subnet
    from lighthubert_s3prl.upstream.expert import UpstreamOptions

    spec = UpstreamOptions.from_file(model_config).subnet if model_config else None
    if spec is not None:
        return resolve_subnet(spec), f"the subnet of -g {model_config}"
    presets = _lighthubert_presets()
    # an official entry without -k loads the released file, whose own subnet is the released one
    if upstream in presets and (model_config is None or ckpt is None):
        return resolve_subnet(presets[upstream]), f"-u {upstream} runs the released {presets[upstream]} subnet"
    if not ckpt:
        return None, f"-u {upstream} without -k names no checkpoint"
    local = _local_checkpoint(ckpt)
    if local is None:
        return None, f"{ckpt} is not downloaded yet, so its subnet is unknown"
    from lighthubert_s3prl.model.checkpoint import load_checkpoint

    return load_checkpoint(local).subnet(None), f"checkpoint {local.name}'s own subnet"


def load_data_config(path: Union[str, Path]) -> Dict[str, Dict[str, Any]]:
    """Read a data YAML: ``{default: ROOT, ks: ROOT, sid: {root: ROOT, meta_data: PATH}, ...}``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RunnerError(f"--data-config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RunnerError(f"--data-config {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise RunnerError(f"--data-config {path}: expected a mapping of task -> dataset path")
    out: Dict[str, Dict[str, Any]] = {}
    for key, value in raw.items():
        key = str(key).lower()
        if key not in TASK_ORDER and key not in ("default", "data_root"):
            raise RunnerError(f"--data-config {path}: unknown key {key!r}; use default or one of {','.join(TASK_ORDER)}")
        if isinstance(value, (str, Path)):
            entry = {"root": str(value)}
        elif isinstance(value, dict) and "root" in value:
            entry = {str(k): v for k, v in value.items()}
        else:
            raise RunnerError(f"--data-config {path}: {key} must be a path or a mapping with a 'root' key")
        base = path.parent  # relative paths in the file are relative to the file
        for k, v in list(entry.items()):
            if isinstance(v, str) and (k == "root" or "/" in v) and not os.path.isabs(os.path.expanduser(v)):
                entry[k] = str((base / v).resolve())
        out["default" if key == "data_root" else key] = entry
    return out


def resolve_data(tasks: Sequence[str], data: Optional[str], task_data: Sequence[str],
                 data_config: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """{task: {"root": path, **build_config data overrides}}; precedence: --task-data, YAML, --data."""
    from_yaml = load_data_config(data_config) if data_config else {}
    explicit: Dict[str, Dict[str, Any]] = {}
    for item in task_data:
        task, sep, root = item.partition("=")
        if not sep or not root:
            raise RunnerError(f"--task-data {item!r}: expected TASK=PATH, e.g. --task-data ks=/data/speech_commands")
        if task.lower() not in TASK_ORDER:
            raise RunnerError(f"--task-data {item!r}: unknown task {task!r}; choose from {','.join(TASK_ORDER)}")
        explicit[task.lower()] = {"root": root}
    out: Dict[str, Dict[str, Any]] = {}
    missing = []
    for task in tasks:
        entry = explicit.get(task) or from_yaml.get(task) or from_yaml.get("default") or (
            {"root": data} if data else None)
        if entry is None:
            missing.append(task)
            continue
        entry = dict(entry)
        root = Path(str(entry["root"])).expanduser()
        if not root.is_dir():
            raise RunnerError(
                f"{task}: data root {root} does not exist. Create the mini corpus there with "
                f"`lighthubert-s3prl make-corpus {root} --preset ci`, or point --data/--task-data at the real data set")
        entry["root"] = str(root.resolve())
        out[task] = entry
    if missing:
        raise RunnerError(
            f"no data root for task(s) {', '.join(missing)}: pass --data ROOT (a corpus from "
            "`lighthubert-s3prl make-corpus`), --task-data TASK=PATH, or --data-config FILE.yaml")
    return out


def default_exp_root(upstream: str, ckpt: Optional[str], subnet: Optional[str]) -> Path:
    parts = [upstream] + [Path(p).stem for p in (ckpt, subnet) if p]
    return Path("exp") / "superb" / "-".join(parts)


def batch_plan_for(task: str, scale: str, sets: Dict[str, Any], gpus: int) -> "BatchPlan":
    tasks = tasks_module()
    try:
        return tasks.batch_plan(task, scale, sets, processes=gpus)
    except (tasks.TaskConfigError, KeyError, TypeError, ValueError) as err:
        raise RunnerError(f"{task}: cannot read the training batch from its config ({err}); check --set") from None


def check_accumulation(tasks: Sequence[str], scale: str, sets: Dict[str, Dict[str, Any]], gpus: int) -> None:
    """Refuse ``--gpus N`` for tasks whose gradient accumulation N does not divide (the batch would change)."""
    if gpus <= 1:
        return
    problems = []
    for task in tasks:
        if not tasks_module().get_task(task).trains:
            continue
        plan = batch_plan_for(task, scale, sets.get(task, {}), gpus)
        if not plan.divides:
            fits = [str(n) for n in range(1, plan.accumulate + 1) if plan.accumulate % n == 0]
            problems.append(
                f"{task}: gradient_accumulate_steps {plan.accumulate} (effective batch {plan.effective}) is not "
                f"divisible by --gpus {gpus}; run {task} separately with --gpus {' or '.join(fits)}, or take a "
                f"{gpus}x larger effective batch on purpose with "
                f"--set {task}:runner.gradient_accumulate_steps={plan.accumulate * gpus}")
    if problems:
        raise RunnerError("s3prl accumulates gradients in every DDP process, so --gpus N divides each task's "
                          "accumulation by N to keep SUPERB's effective batch:\n  " + "\n  ".join(problems))


def parse_s3prl_args(text: str) -> List[str]:
    """``--s3prl-args``: extra s3prl training flags; refuses those the runner sets per unit itself."""
    try:
        extra = shlex.split(text)
    except ValueError as err:
        raise RunnerError(f"--s3prl-args {text!r}: {err}") from None
    # these are set per unit by the runner; passing them again would point runs at the wrong place
    owned = {"-m", "--mode", "-u", "--upstream", "-k", "--upstream_ckpt", "-g", "--upstream_model_config", "-d",
             "--downstream", "-c", "--config", "-p", "--expdir", "-n", "--expname", "-e", "--past_exp", "-o",
             "--override", "--device", "-a", "--auto_resume", "-t", "--evaluate_split"}
    clash = [a for a in extra if a.split("=", 1)[0] in owned]
    if clash:
        raise RunnerError(f"--s3prl-args: {', '.join(clash)} is set by the runner; use its own options "
                          "(-u/-k/-g, --set for config values, --exp-root, --device)")
    return extra
