"""Batch SUPERB runner behind ``scripts/run_superb.sh``: train and test any set of tasks for one upstream.

Every s3prl run goes through our launcher (``python -m lighthubert_s3prl.run_downstream``) in its own
process, so a crash in one task cannot take the batch down and each run can be resumed on its own.

Layout of an experiment root (``--exp-root``)::

    run_superb.json            what the root was made for (upstream, -k, -g, scale); guards against mixing
    configs/<task>.yaml        the config each task was built with (tasks.build_config)
    <task>/                    s3prl expdir of asr, asv, ks, ic, pr, sid
    er/fold1 .. er/fold5/      one expdir per ER fold (test_fold=foldN)
    asv/sweep/states-N/        ASV: evaluation of each saved checkpoint on the test trials
    logs/<unit>.{train,test}.log, logs/asv.sweep.log
    summary.json, summary.txt  the last run's outcome per unit, with where each result went

Inside each expdir, besides s3prl's own files, the runner keeps its state:
``superb_train_done.json`` (training finished), ``superb_result.json`` (the test result on the chosen
checkpoint), ``superb_done`` (written last, atomically: the unit is finished and is skipped on re-runs),
``superb_failed.json`` (the last failure), ``.superb_running.json`` (pid of a runner working on it), and
for ASV ``superb_asv_sweep.json`` (EER of every checkpoint and which one was kept).

A unit without ``superb_done`` is resumed: finished training is not repeated, interrupted training
continues from the latest ``states-*.ckpt`` (s3prl's ``-a``), and only the test is redone.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from lighthubert_s3prl.io_utils import atomic_write, atomic_write_text

if TYPE_CHECKING:  # both import torch or the task registry, which the runner loads lazily
    from lighthubert_s3prl.config import SubnetConfig
    from lighthubert_s3prl.superb.tasks import BatchPlan

LOG = logging.getLogger("lighthubert_s3prl.superb.runner")

TASK_ORDER: Tuple[str, ...] = ("pr", "ks", "ic", "sid", "er", "asr", "asv")  # the paper table's order
MANIFEST_NAME = "run_superb.json"
RESULT_FILE = "superb_result.json"
DONE_FILE = "superb_done"
TRAIN_DONE_FILE = "superb_train_done.json"
FAILED_FILE = "superb_failed.json"
LOCK_FILE = ".superb_running.json"
SWEEP_FILE = "superb_asv_sweep.json"
SUMMARY_JSON = "summary.json"
SUMMARY_TXT = "summary.txt"
LAUNCHER_MODULE = "lighthubert_s3prl.run_downstream"
# s3prl prints accuracy, EER and PER as fractions, ASR WER in percent; tables use percent throughout
PERCENT_FACTOR: Dict[str, float] = {"asr": 1.0}
_PARAMS_RE = re.compile(r"LightHuBERT \w+ subnet \(([\d,]+) parameters\)")
_STATES_RE = re.compile(r"states-(\d+)\.ckpt$")


class RunnerError(ValueError):
    """Bad input to the runner; the message says what is wrong and how to fix it."""


# ----------------------------------------------------------------------------------------------------
# small helpers shared with collect/package


def to_percent(task: str, value: float) -> float:
    return float(value) * PERCENT_FACTOR.get(task, 100.0)


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Union[str, Path], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Union[str, Path]) -> Optional[Any]:
    """The parsed file, or None when it is absent or unreadable (a half-written file counts as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def states_checkpoints(expdir: Union[str, Path]) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every ``states-<step>.ckpt`` in ``expdir``, oldest first."""
    found = []
    for path in Path(expdir).glob("states-*.ckpt"):
        match = _STATES_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_owner(expdir: Union[str, Path]) -> Optional[dict]:
    """The live runner working on ``expdir`` (same host), or None."""
    info = read_json(Path(expdir) / LOCK_FILE)
    if not isinstance(info, dict):
        return None
    if info.get("host") != socket.gethostname():
        return info  # cannot check another machine's pids: assume it is alive
    return info if isinstance(info.get("pid"), int) and pid_alive(info["pid"]) else None


def _tasks_module():
    from lighthubert_s3prl.superb import tasks  # imported lazily: --help must not wait for it

    return tasks


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
    folds = _tasks_module().ER_FOLDS
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
    from lighthubert_s3prl.hubconf import PRESET_OF  # imports torch: only when a rate is to be chosen

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
    from lighthubert_s3prl.config import resolve_subnet
    from lighthubert_s3prl.expert import UpstreamOptions

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
    from lighthubert_s3prl.checkpoint import load_checkpoint

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


# ----------------------------------------------------------------------------------------------------
# units


@dataclass(frozen=True)
class Unit:
    """One s3prl experiment: a task, or one fold of ER."""

    task: str
    fold: Optional[str]
    expdir: Path

    @property
    def name(self) -> str:
        return f"{self.task}_{self.fold}" if self.fold else self.task

    @property
    def label(self) -> str:
        return f"{self.task}/{self.fold}" if self.fold else self.task


def unit_expdir(exp_root: Union[str, Path], task: str, fold: Optional[str] = None) -> Path:
    return Path(exp_root) / task / fold if fold else Path(exp_root) / task


def make_units(exp_root: Path, tasks: Sequence[str], er_folds: Sequence[str]) -> List[Unit]:
    units = []
    for task in tasks:
        if task == "er":
            units += [Unit(task, fold, unit_expdir(exp_root, task, fold)) for fold in er_folds]
        else:
            units.append(Unit(task, None, unit_expdir(exp_root, task)))
    return units


def unit_is_done(unit: Unit) -> Optional[dict]:
    """The recorded result if the unit finished (done marker plus a readable result), else None."""
    if not (unit.expdir / DONE_FILE).is_file():
        return None
    result = read_json(unit.expdir / RESULT_FILE)
    return result if isinstance(result, dict) and "value" in result else None


@dataclass
class Outcome:
    unit: str
    task: str
    fold: Optional[str]
    status: str  # done | skipped | failed | planned | busy
    expdir: str
    value: Optional[float] = None  # as s3prl prints it
    percent: Optional[float] = None
    metric: Optional[str] = None
    seconds: float = 0.0
    message: str = ""
    logs: List[str] = field(default_factory=list)
    result_file: Optional[str] = None
    prediction_file: Optional[str] = None


# ----------------------------------------------------------------------------------------------------
# the runner


@dataclass
class RunOptions:
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
    dry_run: bool = False
    stream: bool = False
    fail_fast: bool = False
    test_during_training: bool = False
    python: str = sys.executable
    extra_args: List[str] = field(default_factory=list)  # added to training runs (e.g. -s, -l)


class SuperbRunner:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.root = opts.exp_root
        self.logs = self.root / "logs"
        self.configs = self.root / "configs"
        self.units = make_units(self.root, opts.tasks, opts.er_folds or list(_tasks_module().ER_FOLDS))

    # -- commands ------------------------------------------------------------------------------------

    def _launcher(self, distributed: bool) -> List[str]:
        if distributed and self.opts.gpus > 1:
            # s3prl only knows --local_rank; our launcher maps torchrun's LOCAL_RANK onto it
            return [self.opts.python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.opts.gpus}", "-m", LAUNCHER_MODULE]
        return [self.opts.python, "-m", LAUNCHER_MODULE]

    @staticmethod
    def _quoted(value: Union[str, Path]) -> str:
        text = str(value)
        # s3prl splits -o on ',,' and '=' and eval()s the value: such paths cannot be passed through it
        if any(bad in text for bad in ("=", ",,", '"', "\\")):
            raise RunnerError(f"path {text!r} contains '=', ',,', a double quote or a backslash, which s3prl's "
                              "-o cannot carry; choose another --exp-root")
        return f'"{text}"'

    def _upstream_args(self) -> List[str]:
        args = ["-u", self.opts.upstream]
        if self.opts.ckpt:
            args += ["-k", self.opts.ckpt]
        if self.opts.subnet:
            args += ["-g", self.opts.subnet]
        return args

    def train_command(self, unit: Unit) -> List[str]:
        spec = _tasks_module().get_task(unit.task)
        overrides = [f"args.expdir={self._quoted(unit.expdir)}"]  # pins the expdir when -a resumes a moved root
        if unit.fold:
            overrides.append(f'config.downstream_expert.datarc.test_fold="{unit.fold}"')
        cmd = self._launcher(distributed=True) + [
            "-m", "train", *self._upstream_args(), "-d", spec.downstream,
            "-c", str(self.configs / f"{unit.task}.yaml"), "-p", str(unit.expdir), "-a",
            "--device", self.opts.device, "-o", ",,".join(overrides)]
        if self.opts.seed is not None:
            cmd += ["--seed", str(self.opts.seed)]
        return cmd + list(self.opts.extra_args)

    def test_command(self, unit: Unit, ckpt: Path, split: str, outdir: Path) -> List[str]:
        # -e takes args+config from the checkpoint; -o args.expdir sends its prediction files to outdir
        return self._launcher(distributed=False) + [
            "-m", "evaluate", "-e", str(ckpt), "-t", split, "--device", self.opts.device,
            "-o", f"args.expdir={self._quoted(outdir)}"]

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # result lines reach the log in order with tqdm's stderr
        if not self.opts.stream:
            env.setdefault("TQDM_MININTERVAL", "10")  # keep logs of 200k-step runs small
        if self.opts.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.opts.threads)
        return env

    def _execute(self, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        """Run ``cmd`` appending its output to ``log_path``; return (exit code, this run's output)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            start = log.tell()
            log.write(f"\n===== {now_iso()} $ {shlex.join(cmd)}\n".encode())
            log.flush()
            if self.opts.stream:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=self._env(), cwd=self.root)
                assert proc.stdout is not None
                for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
                    log.write(chunk)
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                rc = proc.wait()
            else:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.root).returncode
            log.write(f"===== exit code {rc}\n".encode())
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode("utf-8", errors="replace")
        return rc, text.replace("\r", "\n")  # tqdm redraws with \r: the result line must start a line

    # -- preparation --------------------------------------------------------------------------------

    def check_identity(self) -> None:
        """Refuse to mix results of different models in one root."""
        wanted = self._identity()
        old = read_json(self.root / MANIFEST_NAME)
        if isinstance(old, dict):
            differs = {k: (old.get(k), v) for k, v in wanted.items() if old.get(k) != v}
            if differs:
                what = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differs.items())
                raise RunnerError(f"{self.root} holds runs of another model ({what}); choose another --exp-root")

    def _identity(self) -> Dict[str, Any]:
        return {"upstream": self.opts.upstream, "ckpt": self.opts.ckpt, "subnet": self.opts.subnet,
                "scale": self.opts.scale}

    def write_manifest(self) -> None:
        old = read_json(self.root / MANIFEST_NAME) or {}
        history = list(old.get("history", []))[-49:]
        history.append({"time": now_iso(), "argv": sys.argv, "tasks": self.opts.tasks})
        data = {**self._identity(), "created": old.get("created", now_iso()), "updated": now_iso(),
                "data": {t: self.opts.data[t] for t in self.opts.tasks}, "lr": self.opts.lr,
                "asv_cleaned_trials": self.opts.allow_cleaned_asv_trials,
                "sets": {t: v for t, v in self.opts.sets.items() if v}, "device": self.opts.device,
                "gpus": self.opts.gpus, "history": history,
                "tasks": sorted(set(old.get("tasks", [])) | set(self.opts.tasks), key=TASK_ORDER.index)}
        write_json(self.root / MANIFEST_NAME, data)

    def batch_plan(self, task: str) -> "BatchPlan":
        """``task``'s training batch on ``--gpus`` processes."""
        return batch_plan_for(task, self.opts.scale, self.opts.sets.get(task, {}), self.opts.gpus)

    @cached_property
    def sid_rate(self) -> Tuple[Optional[float], str]:
        """The SID learning rate to set (None: keep the config's) and why."""
        sets = self.opts.sets.get("sid", {})
        given = next((sets[k] for k in ("optimizer.lr", "lr") if k in sets), None)
        if given is not None or "sid" in self.opts.lr:
            return None, f"lr {given if given is not None else self.opts.lr['sid']}, given on the command line"
        config_lr = _tasks_module().load_task_config("sid", self.opts.scale)["optimizer"]["lr"]
        if self.opts.scale != "full":
            return None, f"lr {config_lr:g}, the {self.opts.scale} config's"
        try:
            subnet, how = run_subnet(self.opts.upstream, self.opts.ckpt, self.opts.subnet)
        except ValueError as err:  # a -g or checkpoint the model would refuse as well
            raise RunnerError(f"sid: cannot tell which subnet runs: {err}") from None
        lr, why = (None, how) if subnet is None else _tasks_module().sid_learning_rate(subnet)
        if lr is None:
            return None, (f"lr {config_lr:g}, the config's (the authors' rate for small): {why}; "
                          "the authors tuned SID per model, so consider --lr sid=LR")
        return lr, f"lr {lr:g}, {why} ({how}: {subnet.describe()})"

    def _overrides(self, task: str) -> Dict[str, Any]:
        tasks = _tasks_module()
        spec = tasks.get_task(task)
        out: Dict[str, Any] = {k: v for k, v in self.opts.data[task].items() if k != "root"}
        if not self.opts.test_during_training and spec.dev_split:
            # the test score is taken from the dev-best checkpoint afterwards: testing at every
            # eval_step during training only costs time (and its prediction files get overwritten)
            out["runner.eval_dataloaders"] = [spec.dev_split]
        if task in self.opts.lr:
            out["lr"] = self.opts.lr[task]
        elif task == "sid" and self.sid_rate[0] is not None:
            out["lr"] = self.sid_rate[0]
        out.update(self.opts.sets.get(task, {}))
        if self.opts.gpus > 1:  # after --set: its accumulation, too, is the one-process figure
            check_accumulation([task], self.opts.scale, self.opts.sets, self.opts.gpus)
            out["runner.gradient_accumulate_steps"] = self.batch_plan(task).accumulate_per_process
        return out

    def describe_task(self, task: str) -> List[str]:
        """What a run of ``task`` will use that is not in its config file as shipped: batch, SID rate."""
        plan = self.batch_plan(task)
        lines = [f"{task}: effective batch {plan.describe()}"]
        if plan.processes > 1:
            lines.append(f"{task}: --gpus {plan.processes}: gradient_accumulate_steps {plan.accumulate} -> "
                         f"{plan.accumulate_per_process} per process, because s3prl accumulates in every process; "
                         f"the effective batch stays {plan.effective}")
        if task == "sid":
            lines.append(f"sid: {self.sid_rate[1]}")
        return lines

    def build_configs(self, tasks_needed: Sequence[str]) -> None:
        """Write configs/<task>.yaml for every task with work left, before any training starts."""
        tasks = _tasks_module()
        for task in tasks_needed:
            path = self.configs / f"{task}.yaml"
            try:
                tasks.build_config(task, self.opts.data[task]["root"], path, scale=self.opts.scale,
                                   allow_cleaned_trials=self.opts.allow_cleaned_asv_trials, **self._overrides(task))
            except (tasks.TaskConfigError, ValueError) as err:
                raise RunnerError(str(err)) from None
            LOG.info("%s: config %s", task, path)
            for line in self.describe_task(task):
                LOG.info("%s", line)

    # -- one unit ------------------------------------------------------------------------------------

    def _fail(self, unit: Unit, stage: str, message: str, log: Optional[Path], started: float) -> Outcome:
        write_json(unit.expdir / FAILED_FILE, {"stage": stage, "message": message, "log": str(log) if log else None,
                                               "time": now_iso()})
        LOG.error("%s: %s failed: %s%s", unit.label, stage, message, f" (log: {log})" if log else "")
        return Outcome(unit.name, unit.task, unit.fold, "failed", str(unit.expdir), message=f"{stage}: {message}",
                       seconds=time.monotonic() - started, logs=[str(log)] if log else [])

    def _train(self, unit: Unit) -> Tuple[bool, str, Optional[int], float]:
        """(ok, message, parameter count, seconds) of training ``unit`` (or finding it already trained)."""
        marker = read_json(unit.expdir / TRAIN_DONE_FILE)
        if isinstance(marker, dict):
            return True, "trained earlier", marker.get("params"), 0.0
        log = self.logs / f"{unit.name}.train.log"
        previous = states_checkpoints(unit.expdir)
        if previous:
            LOG.info("%s: resuming training from %s", unit.label, previous[-1][1].name)
        else:
            LOG.info("%s: training (log: %s)", unit.label, log)
        started = time.monotonic()
        rc, text = self._execute(self.train_command(unit), log)
        seconds = time.monotonic() - started
        if rc != 0:
            return False, f"s3prl exited with code {rc}; last lines:\n{_tail(text)}", None, seconds
        found = _PARAMS_RE.findall(text) or _PARAMS_RE.findall(log.read_text(errors="replace"))
        params = int(found[-1].replace(",", "")) if found else None
        write_json(unit.expdir / TRAIN_DONE_FILE, {"time": now_iso(), "seconds": round(seconds, 1),
                                                   "params": params, "log": str(log),
                                                   "resumed_from": previous[-1][1].name if previous else None})
        return True, "trained", params, seconds

    def _test_best(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        spec = _tasks_module().get_task(unit.task)
        ckpt, note = unit.expdir / spec.best_ckpt, ""
        if not ckpt.is_file():
            # s3prl saves <dev>-best only when the dev score beats its initial best (accuracy 0, WER 100 %),
            # which a barely trained model may never do; then the last checkpoint is what training produced
            states = states_checkpoints(unit.expdir)
            if not states:
                return None, (f"neither {spec.best_ckpt} nor states-*.ckpt in {unit.expdir}: training saved no "
                              "checkpoint (is runner.save_step or eval_step larger than runner.total_steps?)"), None
            ckpt = states[-1][1]
            note = (f"no {spec.best_ckpt}: the {spec.dev_split} score never beat s3prl's initial best, so the last "
                    f"checkpoint {ckpt.name} was tested")
            LOG.warning("%s: %s", unit.label, note)
        split = spec.evaluate_splits[0]
        log = self.logs / f"{unit.name}.test.log"
        LOG.info("%s: testing %s on %s", unit.label, ckpt.name, split)
        rc, text = self._execute(self.test_command(unit, ckpt, split, unit.expdir), log)
        if rc != 0:
            return None, f"s3prl exited with code {rc}; last lines:\n{_tail(text)}", log
        value = spec.parse_result(text, split)
        if value is None:
            return None, f"no '{spec.result_template.format(split=split)}' line in the output", log
        pred = spec.prediction_path(unit.expdir, unit.fold)
        if not pred.is_file() or pred.stat().st_size == 0:
            return None, f"the evaluation wrote no predictions to {pred}", log
        return {"value": value, "split": split, "ckpt": ckpt.name, "prediction_file": pred.name,
                "prediction_sha256": sha256_of(pred), "test_log": str(log), "note": note}, "", log

    def _asv_sweep(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        """Evaluate every states-*.ckpt on the test trials, keep the best EER's predictions (no dev set)."""
        spec = _tasks_module().get_task("asv")
        ckpts = states_checkpoints(unit.expdir)
        if not ckpts:
            return None, f"no states-*.ckpt in {unit.expdir} to evaluate (runner.save_step > total_steps?)", None
        split = spec.evaluate_splits[0]
        log = self.logs / f"{unit.name}.sweep.log"
        scores: Dict[int, float] = {}
        for i, (step, ckpt) in enumerate(ckpts, 1):
            outdir = unit.expdir / "sweep" / f"states-{step}"
            cached = read_json(outdir / "result.json")
            stamp = [ckpt.stat().st_size, int(ckpt.stat().st_mtime)]  # a resumed run may rewrite states-N
            if isinstance(cached, dict) and cached.get("ckpt_stamp") == stamp \
                    and (outdir / spec.prediction_file).is_file():
                scores[step] = float(cached["value"])
                continue
            LOG.info("asv: sweep %d/%d: evaluating %s", i, len(ckpts), ckpt.name)
            outdir.mkdir(parents=True, exist_ok=True)
            rc, text = self._execute(self.test_command(unit, ckpt, split, outdir), log)
            if rc != 0:
                return None, f"evaluating {ckpt.name}: s3prl exited with code {rc}; last lines:\n{_tail(text)}", log
            value = spec.parse_result(text, split)
            pred = outdir / spec.prediction_file
            if value is None or not pred.is_file() or pred.stat().st_size == 0:
                return None, f"evaluating {ckpt.name} printed no EER or wrote no {pred.name}", log
            write_json(outdir / "result.json", {"step": step, "value": value, "ckpt": ckpt.name,
                                                "ckpt_stamp": stamp})
            scores[step] = value
        # lowest EER; on a tie the later checkpoint (trained longer)
        best = min(scores, key=lambda s: (scores[s], -s))
        chosen = unit.expdir / "sweep" / f"states-{best}" / spec.prediction_file
        target = unit.expdir / spec.prediction_file
        atomic_write(target, lambda f: f.write(chosen.read_bytes()))
        digest = sha256_of(target)
        write_json(unit.expdir / SWEEP_FILE, {
            "eer_by_step": {str(s): scores[s] for s in sorted(scores)}, "best_step": best,
            "best_ckpt": f"states-{best}.ckpt", "best_eer": scores[best], "prediction_file": target.name,
            "prediction_sha256": digest, "source": str(chosen), "time": now_iso()})
        LOG.info("asv: best EER %.4f at %s (of %d checkpoints)", scores[best], f"states-{best}.ckpt", len(scores))
        return {"value": scores[best], "split": split, "ckpt": f"states-{best}.ckpt", "prediction_file": target.name,
                "prediction_sha256": digest, "test_log": str(log), "sweep": {str(s): scores[s] for s in sorted(scores)}
                }, "", log

    def run_unit(self, unit: Unit) -> Outcome:
        started = time.monotonic()
        done = unit_is_done(unit)
        if done is not None:
            LOG.info("%s: skipped, finished earlier (%s %s)", unit.label, done.get("metric"), done.get("value"))
            return self._outcome_from_result(unit, done, "skipped", 0.0, "finished earlier")
        owner = lock_owner(unit.expdir)
        if owner is not None and owner.get("pid") != os.getpid():
            msg = f"another runner (pid {owner.get('pid')} on {owner.get('host')}) is working on {unit.expdir}"
            LOG.warning("%s: %s; leaving it alone", unit.label, msg)
            return Outcome(unit.name, unit.task, unit.fold, "busy", str(unit.expdir), message=msg)
        unit.expdir.mkdir(parents=True, exist_ok=True)
        write_json(unit.expdir / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()})
        try:
            ok, message, params, train_seconds = self._train(unit)
            train_log = self.logs / f"{unit.name}.train.log"
            if not ok:
                return self._fail(unit, "train", message, train_log, started)
            test_started = time.monotonic()
            result, message, test_log = (self._asv_sweep(unit) if unit.task == "asv" else self._test_best(unit))
            if result is None:
                return self._fail(unit, "test", message, test_log, started)
            spec = _tasks_module().get_task(unit.task)
            result.update({
                "task": unit.task, "fold": unit.fold, "metric": spec.metric, "higher_is_better": spec.higher_is_better,
                "percent": to_percent(unit.task, result["value"]), "params": params,
                "upstream": self.opts.upstream, "ckpt_file": self.opts.ckpt, "subnet": self.opts.subnet,
                "scale": self.opts.scale, "train_log": str(train_log), "train_seconds": round(train_seconds, 1),
                "test_seconds": round(time.monotonic() - test_started, 1), "finished": now_iso()})
            # result first, done marker last: a crash in between leaves a unit that is re-tested, never
            # one that is marked done without its number
            write_json(unit.expdir / RESULT_FILE, result)
            atomic_write_text(unit.expdir / DONE_FILE, f"{now_iso()}\n")
            (unit.expdir / FAILED_FILE).unlink(missing_ok=True)
            LOG.info("%s: %s %s = %.4f", unit.label, result["split"], spec.metric, result["value"])
            return self._outcome_from_result(unit, result, "done", time.monotonic() - started, "")
        finally:
            (unit.expdir / LOCK_FILE).unlink(missing_ok=True)

    def _outcome_from_result(self, unit: Unit, result: dict, status: str, seconds: float, message: str) -> Outcome:
        logs = [p for p in (result.get("train_log"), result.get("test_log")) if p]
        return Outcome(unit.name, unit.task, unit.fold, status, str(unit.expdir), value=result.get("value"),
                       percent=result.get("percent"), metric=result.get("metric"), seconds=seconds, message=message,
                       logs=logs, result_file=str(unit.expdir / RESULT_FILE),
                       prediction_file=str(unit.expdir / result["prediction_file"]) if result.get("prediction_file") else None)

    # -- dry run -------------------------------------------------------------------------------------

    def plan(self) -> List[Outcome]:
        """Print the commands a real run would execute now; touch nothing."""
        outcomes = []
        described = set()
        for unit in self.units:
            done = unit_is_done(unit)
            if done is not None:
                print(f"# {unit.label}: finished earlier ({done.get('metric')} {done.get('value')}), skipped")
                outcomes.append(self._outcome_from_result(unit, done, "skipped", 0.0, "finished earlier"))
                continue
            if unit.task not in described:
                described.add(unit.task)
                print("\n".join(f"# {line}" for line in self.describe_task(unit.task)))
            print(f"# {unit.label}: expdir {unit.expdir}")
            if (unit.expdir / TRAIN_DONE_FILE).is_file():
                print("#   training finished earlier")
            else:
                previous = states_checkpoints(unit.expdir)
                if previous:
                    print(f"#   resumes from {previous[-1][1].name} (-a)")
                print(shlex.join(self.train_command(unit)) + f"  > {self.logs / (unit.name + '.train.log')} 2>&1")
            spec = _tasks_module().get_task(unit.task)
            split = spec.evaluate_splits[0]
            if unit.task == "asv":
                print(f"#   then for every {unit.expdir}/states-N.ckpt (best EER kept):")
                print(shlex.join(self.test_command(unit, unit.expdir / "states-N.ckpt", split,
                                                   unit.expdir / "sweep" / "states-N")))
            else:
                print(shlex.join(self.test_command(unit, unit.expdir / spec.best_ckpt, split, unit.expdir))
                      + f"  > {self.logs / (unit.name + '.test.log')} 2>&1")
            outcomes.append(Outcome(unit.name, unit.task, unit.fold, "planned", str(unit.expdir)))
        return outcomes

    # -- whole run -----------------------------------------------------------------------------------

    def run(self) -> List[Outcome]:
        if self.opts.dry_run:
            return self.plan()
        self.check_identity()
        todo = [u for u in self.units if unit_is_done(u) is None]
        self.root.mkdir(parents=True, exist_ok=True)
        self.build_configs(sorted({u.task for u in todo}, key=TASK_ORDER.index))
        self.write_manifest()
        outcomes: List[Outcome] = []
        for i, unit in enumerate(self.units, 1):
            LOG.info("[%d/%d] %s", i, len(self.units), unit.label)
            outcome = self.run_unit(unit)
            outcomes.append(outcome)
            if outcome.status == "failed" and self.opts.fail_fast:
                LOG.error("stopping after the first failure (--fail-fast)")
                break
        self.write_summary(outcomes)
        return outcomes

    def write_summary(self, outcomes: Sequence[Outcome]) -> None:
        text = format_summary(outcomes, self.root)
        write_json(self.root / SUMMARY_JSON, {"time": now_iso(), "exp_root": str(self.root),
                                              "units": [asdict(o) for o in outcomes]})
        atomic_write_text(self.root / SUMMARY_TXT, text + "\n")


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def format_summary(outcomes: Sequence[Outcome], root: Path) -> str:
    rows = [("unit", "status", "metric", "value", "time", "where")]
    for o in outcomes:
        value = "" if o.value is None else f"{o.value:.4g}"
        where = o.prediction_file or o.expdir
        if o.status == "failed":
            where = (o.logs[0] if o.logs else o.expdir)
        rows.append((o.unit, o.status, o.metric or "", value, f"{o.seconds:.0f}s" if o.seconds else "", where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines.append("")
    lines.append("units: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"FAILED {o.unit}: {o.message.splitlines()[0] if o.message else ''}")
    lines.append(f"results: {root}/<task>/{RESULT_FILE} (ER: {root}/er/foldN/), logs: {root}/logs/, "
                 f"summary: {root}/{SUMMARY_TXT}")
    lines.append(f"table:   lighthubert-s3prl collect {root} -o {root}/results")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# command line


def default_exp_root(upstream: str, ckpt: Optional[str], subnet: Optional[str]) -> Path:
    parts = [upstream] + [Path(p).stem for p in (ckpt, subnet) if p]
    return Path("exp") / "superb" / "-".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_superb.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and test SUPERB tasks for one upstream through s3prl (via lighthubert-s3prl's\n"
                    "launcher): ER over 5 folds, an ASV checkpoint sweep, test on the dev-best checkpoint\n"
                    "elsewhere (ASR on test-clean). Re-running skips finished work and resumes interrupted\n"
                    "training. Per-unit logs go to EXP_ROOT/logs/, a summary to EXP_ROOT/summary.txt.",
        epilog="examples:\n"
               "  scripts/run_superb.sh -u lighthubert_small -k lighthubert_small.pt --tasks all --data /data/superb\n"
               "  scripts/run_superb.sh -u lighthubert_local -k tiny.pt --tasks ks,ic,er --data corpus --scale ci\n"
               "  scripts/run_superb.sh -u lighthubert_subnet -k base.pt -g subnet.yaml --tasks sid --lr 5e-2 \\\n"
               "      --data-config datasets.yaml --gpus 4 --exp-root exp/sid_base\n"
               "data YAML: {default: /data/superb, ks: /data/speech_commands, sid: {root: /data/VoxCeleb1, "
               "meta_data: /data/iden_split.txt}}")
    parser.add_argument("-u", "--upstream", required=True, help="s3prl -u name (ours: lighthubert_small, "
                        "lighthubert_base, lighthubert_stage1, lighthubert_local, lighthubert_subnet; or any s3prl name)")
    parser.add_argument("-k", "--ckpt", help="upstream checkpoint (s3prl -k)")
    parser.add_argument("-g", "--subnet", help="subnet/model config YAML (s3prl -g)")
    parser.add_argument("--tasks", default="all", help=f"comma-separated subset of {','.join(TASK_ORDER)}, or all "
                        "(default all)")
    parser.add_argument("--data", help="one root for every task: a corpus from `lighthubert-s3prl make-corpus`, or "
                        "a folder holding the real data sets under their usual names")
    parser.add_argument("--task-data", action="append", default=[], metavar="TASK=PATH",
                        help="data root of one task (repeatable); wins over --data and --data-config")
    parser.add_argument("--data-config", metavar="YAML", help="YAML mapping task (or default) -> data root, or -> "
                        "{root: PATH, <data key>: PATH} for keys tasks.build_config takes")
    parser.add_argument("--scale", choices=("full", "ci"), default="full",
                        help="full: the SUPERB configs; ci: a few steps per task for smoke tests (default full)")
    parser.add_argument("--lr", action="append", default=[], metavar="LR|TASK=LR",
                        help="learning rate for every task, or per task (sid=5e-3,ks=1e-4); repeatable")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="[TASK:]KEY=VALUE",
                        help="config override, e.g. runner.total_steps=1000 or asv:runner.save_step=500 (repeatable)")
    parser.add_argument("--er-folds", metavar="LIST", help="ER folds to run, e.g. 1,2 (default all five)")
    parser.add_argument("--asv-cleaned-trials", action="store_true",
                        help="let ASV score the cleaned VoxCeleb1-O list (veri_test2.txt, 37,611 trials); by default "
                             "it is refused, as SUPERB scores the original list (37,720 trials)")
    parser.add_argument("--exp-root", help="experiment root (default exp/superb/<upstream>[-<ckpt>][-<subnet>])")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs for training; >1 trains with torchrun (DDP) and divides each task's "
                             "gradient_accumulate_steps by N, so the effective batch stays SUPERB's (N must divide "
                             "it). Default: 1 if CUDA is available, else 0")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when --gpus > 0, else cpu")
    parser.add_argument("--seed", type=int, help="s3prl --seed (s3prl's default 1337)")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads per s3prl process")
    parser.add_argument("--s3prl-args", default="", metavar="'ARGS'",
                        help="extra s3prl flags for training, e.g. '-s hidden_states -l 6' or "
                             "'--upstream_feature_normalize' (evaluation takes them from the checkpoint)")
    parser.add_argument("--test-during-training", action="store_true",
                        help="keep s3prl's test evaluation at every eval_step (off: only dev, then test on dev-best)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run; change nothing")
    parser.add_argument("--stream", action="store_true", help="also copy s3prl's output to the terminal")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed unit")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    tasks = parse_task_list(args.tasks)
    er_folds = parse_folds(args.er_folds) if "er" in tasks else []
    if args.ckpt and not re.match(r"^[a-z]+://", args.ckpt):
        ckpt_path = Path(args.ckpt).expanduser()
        if not ckpt_path.is_file():
            raise RunnerError(f"checkpoint not found: {ckpt_path} (-k)")
        args.ckpt = str(ckpt_path.resolve())
    if args.subnet:
        subnet_path = Path(args.subnet).expanduser()
        if not subnet_path.is_file():
            raise RunnerError(f"subnet config not found: {subnet_path} (-g)")
        args.subnet = str(subnet_path.resolve())
    if args.upstream in ("lighthubert_local", "lighthubert_subnet", "lighthubert_url") and not args.ckpt:
        raise RunnerError(f"-u {args.upstream} needs a checkpoint: pass -k CKPT")
    if args.upstream == "lighthubert_subnet" and not args.subnet:
        raise RunnerError("-u lighthubert_subnet needs the subnet: pass -g subnet.yaml")
    gpus = args.gpus
    if gpus is not None and gpus < 0:
        raise RunnerError("--gpus must be 0 or more")
    if gpus is None or (args.device is None and gpus > 0):
        import torch

        has_cuda = torch.cuda.is_available()
        if gpus is None:
            gpus = 1 if has_cuda and args.device != "cpu" else 0
        elif not has_cuda and not args.dry_run:
            raise RunnerError(f"--gpus {gpus} needs CUDA, which this machine does not have")
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    if gpus > 1 and device != "cuda":
        raise RunnerError("--gpus > 1 trains with DDP on CUDA; drop --device cpu")
    exp_root = Path(args.exp_root).expanduser() if args.exp_root else default_exp_root(args.upstream, args.ckpt, args.subnet)
    sets = parse_sets(args.sets, tasks)
    check_accumulation(tasks, args.scale, sets, gpus)
    return RunOptions(
        upstream=args.upstream, tasks=tasks, exp_root=exp_root.resolve(), ckpt=args.ckpt, subnet=args.subnet,
        data=resolve_data(tasks, args.data, args.task_data, args.data_config), scale=args.scale,
        lr=parse_lr(args.lr, tasks), sets=sets, er_folds=er_folds, gpus=gpus, device=device,
        allow_cleaned_asv_trials=args.asv_cleaned_trials, seed=args.seed, threads=args.threads,
        dry_run=args.dry_run, stream=args.stream, fail_fast=args.fail_fast,
        test_during_training=args.test_during_training, extra_args=_s3prl_args(args.s3prl_args))


def batch_plan_for(task: str, scale: str, sets: Dict[str, Any], gpus: int) -> "BatchPlan":
    tasks = _tasks_module()
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


def _s3prl_args(text: str) -> List[str]:
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


def run_superb(opts: RunOptions) -> List[Outcome]:
    """Run (or with ``opts.dry_run`` print) every unit; returns one outcome per unit."""
    runner = SuperbRunner(opts)
    outcomes = runner.run()
    return outcomes


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s run_superb: %(message)s", datefmt="%H:%M:%S")
    try:
        opts = options_from_args(args)
        outcomes = run_superb(opts)
    except RunnerError as err:
        print(f"run_superb: error: {err}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(f"# dry run: {len(outcomes)} unit(s), nothing was run or written")
        return 0
    print()
    print(format_summary(outcomes, opts.exp_root))
    return 1 if any(o.status in ("failed", "busy") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
