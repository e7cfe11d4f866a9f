"""Planning a batch SUPERB run: its units, the state each keeps on disk, and the dry run.

A unit is one s3prl experiment: a task, or one fold of ER. Its expdir holds the runner's state files
beside s3prl's own (see :mod:`lighthubert_s3prl.superb.runner` for the layout); the functions here read
that state, so a re-run knows what is finished, what to resume and who else is working on a unit. The
small JSON helpers are shared with collect and package, which read the same files.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from lighthubert_s3prl.io_utils import atomic_write_text

TASK_ORDER: Tuple[str, ...] = ("pr", "ks", "ic", "sid", "er", "asr", "asv", "sd", "qbe", "sf")  # the leaderboard's order
MANIFEST_NAME = "run_superb.json"
RESULT_FILE = "superb_result.json"
DONE_FILE = "superb_done"
TRAIN_DONE_FILE = "superb_train_done.json"
FAILED_FILE = "superb_failed.json"
LOCK_FILE = ".superb_running.json"
SWEEP_FILE = "superb_asv_sweep.json"
LAYERS_FILE = "superb_qbe_layers.json"  # QbE: hidden-state count and the dev MTWV of each layer
# s3prl prints accuracy, EER, PER and SF's F1/CER as fractions (our DER too), ASR WER in percent; tables use
# percent throughout, except QbE, whose MTWV the leaderboard shows as it is
PERCENT_FACTOR: Dict[str, float] = {"asr": 1.0, "qbe": 1.0}
_STATES_RE = re.compile(r"states-(\d+)\.ckpt$")


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


def prediction_sha256(path: Union[str, Path]) -> Optional[str]:
    """sha256 of a prediction file, or of a folder of them (SD) over names and contents; None if empty."""
    path = Path(path)
    if path.is_file():
        return sha256_of(path) if path.stat().st_size else None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + bytes.fromhex(sha256_of(f)))
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


#: set in a cluster job to its job id (``12345`` or ``12345_3`` in an array): recorded in the unit's lock and
#: result, and lets a requeued job take over the lock its earlier run left (maybe on another node)
JOB_ID_ENV = "LIGHTHUBERT_S3PRL_JOB_ID"


def lock_owner(expdir: Union[str, Path]) -> Optional[dict]:
    """The live runner working on ``expdir`` (same host), or None. A lock left by this very cluster job (an
    earlier run of it, before a requeue) is not an owner."""
    info = read_json(Path(expdir) / LOCK_FILE)
    if not isinstance(info, dict):
        return None
    job = os.environ.get(JOB_ID_ENV)
    if job and info.get("job") == job:
        return None
    if info.get("host") != socket.gethostname():
        return info  # cannot check another machine's pids: assume it is alive
    return info if isinstance(info.get("pid"), int) and pid_alive(info["pid"]) else None


def tasks_module():
    """:mod:`lighthubert_s3prl.superb.tasks`, imported on first use: ``--help`` must not wait for it."""
    from lighthubert_s3prl.superb import tasks

    return tasks


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
    """What became of one unit in a run (``planned`` in a dry run); the summary lists one per unit."""

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


def outcome_from_result(unit: Unit, result: dict, status: str, seconds: float, message: str) -> Outcome:
    """The outcome of a unit with a recorded result (just finished, or finished by an earlier run)."""
    logs = [p for p in (result.get("train_log"), result.get("test_log")) if p]
    return Outcome(unit.name, unit.task, unit.fold, status, str(unit.expdir), value=result.get("value"),
                   percent=result.get("percent"), metric=result.get("metric"), seconds=seconds, message=message,
                   logs=logs, result_file=str(unit.expdir / RESULT_FILE),
                   prediction_file=str(unit.expdir / result["prediction_file"]) if result.get("prediction_file") else None)


# ----------------------------------------------------------------------------------------------------
# the dry run


class UnitCommands(Protocol):
    """The s3prl command lines of a unit (:class:`lighthubert_s3prl.superb.launch.Launcher` writes them)."""

    configs: Path  # where configs/<task>.yaml are

    def train_command(self, unit: Unit) -> List[str]: ...

    def test_command(self, unit: Unit, ckpt: Path, split: str, outdir: Path) -> List[str]: ...

    def probe_command(self) -> List[str]: ...

    def layer_command(self, unit: Unit, split: str, layer: Union[int, str], outdir: Path) -> List[str]: ...


def print_plan(units: Sequence[Unit], commands: UnitCommands, logs: Path,
               describe_task: Callable[[str], List[str]]) -> List[Outcome]:
    """Print the commands a real run would execute now; touch nothing."""
    outcomes = []
    described = set()
    for unit in units:
        done = unit_is_done(unit)
        if done is not None:
            print(f"# {unit.label}: finished earlier ({done.get('metric')} {done.get('value')}), skipped")
            outcomes.append(outcome_from_result(unit, done, "skipped", 0.0, "finished earlier"))
            continue
        if unit.task not in described:
            described.add(unit.task)
            print("\n".join(f"# {line}" for line in describe_task(unit.task)))
        print(f"# {unit.label}: expdir {unit.expdir}")
        spec = tasks_module().get_task(unit.task)
        if not spec.trains:  # QbE: every layer on dev, then the best one on test
            print(shlex.join(commands.probe_command()) + "   # how many hidden states: L")
            print("#   for LAYER in 0 .. L-1 (MTWV of each on dev; the best one then runs with -t test):")
            print(shlex.join(commands.layer_command(unit, spec.dev_split or "dev", "LAYER",
                                                    unit.expdir / "layers" / "dev-LAYER"))
                  + f"  >> {logs / (unit.name + '.layers.log')} 2>&1")
            outcomes.append(Outcome(unit.name, unit.task, unit.fold, "planned", str(unit.expdir)))
            continue
        if (unit.expdir / TRAIN_DONE_FILE).is_file():
            print("#   training finished earlier")
        else:
            previous = states_checkpoints(unit.expdir)
            if previous:
                print(f"#   resumes from {previous[-1][1].name} (-a)")
            print(shlex.join(commands.train_command(unit)) + f"  > {logs / (unit.name + '.train.log')} 2>&1")
        split = spec.evaluate_splits[0]
        if unit.task == "asv":
            print(f"#   then for every {unit.expdir}/states-N.ckpt (best EER kept):")
            print(shlex.join(commands.test_command(unit, unit.expdir / "states-N.ckpt", split,
                                                   unit.expdir / "sweep" / "states-N")))
        else:
            print(shlex.join(commands.test_command(unit, unit.expdir / spec.best_ckpt, split, unit.expdir))
                  + f"  > {logs / (unit.name + '.test.log')} 2>&1")
            if spec.scored_by == "diarization":
                print(f"#   then {unit.expdir}/scoring/predictions -> RTTM at median 1, 11 x threshold 0.3 .. 0.7, "
                      "DER against the test set's rttm; the lowest is reported")
        outcomes.append(Outcome(unit.name, unit.task, unit.fold, "planned", str(unit.expdir)))
    return outcomes
