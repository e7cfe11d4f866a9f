"""``lighthubert-s3prl collect``: s3prl SUPERB outputs -> the paper-style results table.

Each EXPDIR given becomes one row. It may be an experiment root written by ``scripts/run_superb.sh``
(``<task>/`` and ``er/foldN/`` expdirs plus the runner's result files), or any folder holding s3prl
expdirs (found by their ``args_*.yaml``; the task comes from s3prl's ``downstream`` argument and, for
ER, the fold from the saved config), or a single s3prl expdir.

Where a number comes from, best first:

1. ``superb_result.json`` + ``superb_done`` written by the runner (test on the dev-best checkpoint;
   ASV: best EER of the checkpoint sweep);
2. s3prl's ``log.log``: the ``test at step 0`` line of an ``-m evaluate`` run, or the test score logged
   at the step of the last ``New best on dev`` once training is complete;
3. ASV evaluated with s3prl's ``test_expdir.sh``: the lowest ``test-EER`` in ``states-*/log.txt``.

Anything else is reported as what it is — ``missing`` (no expdir), ``running``, ``stopped``,
``untested`` (trained, no test result), ``failed``, or ``k/5 folds`` for ER — never as a number, and
such tasks are left out of the SUPERB score, which is then marked partial.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import yaml

from lighthubert_s3prl.io_utils import atomic_write, atomic_write_text

from . import grid, grid_figure, reference
from .options import RunnerError
from .reference import OUR_TASKS, TASK_LABELS, ReferenceModel, Score, superb_score
from .units import (DONE_FILE, FAILED_FILE, MANIFEST_NAME, RESULT_FILE, SWEEP_FILE, TRAIN_DONE_FILE, lock_owner,
                    now_iso, read_json, states_checkpoints, tasks_module, to_percent)

LOG = logging.getLogger(__name__)

ER_FOLDS = tuple(f"fold{i}" for i in range(1, 6))
DOWNSTREAM_TO_TASK = {"asr": "asr", "sv_voxceleb1": "asv", "speech_commands": "ks", "fluent_commands": "ic",
                      "emotion": "er", "ctc": "pr", "voxceleb1": "sid", "diarization": "sd", "quesst14_dtw": "qbe"}
CTC_CORPUS_TO_TASK = {"snips": "sf"}  # s3prl's ctc recipe serves PR (libriphone) and SF (snips)
RESULT_LINE = {"asr": "test-clean wer:", "asv": "sv-voxceleb1/test-EER:"}  # printed by s3prl, for s3prl's own logs
OUTPUT_STEM = "superb_results"


#: the score column of rows that ran on a generated corpus: the leaderboard formula applied to them ranks them
#: against each other only
OFFLINE_LABEL = "mini-SUPERB score (synthetic, not comparable to the leaderboard)"
CORPUS_MANIFEST = "corpus_manifest.json"  # what make-corpus writes last at a corpus root (corpus.MANIFEST_NAME)


class CollectError(ValueError):
    """Bad input to collect; the message says what is wrong."""


# ----------------------------------------------------------------------------------------------------
# one task of one model


@dataclass
class TaskResult:
    task: str
    status: str  # done | missing | running | stopped | untested | failed | partial (ER: some folds)
    percent: Optional[float] = None  # in the table's unit (percent; QbE MTWV), only when status == done
    detail: str = ""
    source: str = ""
    params: Optional[int] = None
    folds: Dict[str, "TaskResult"] = field(default_factory=dict)
    second: Optional[float] = None  # SF's slot-value CER (percent) beside its F1 in ``percent``

    @property
    def value(self) -> Union[None, float, Tuple[float, float]]:
        """What the SUPERB score takes: the number, or SF's (F1, CER)."""
        if self.status != "done" or self.percent is None:
            return None
        return self.percent if self.second is None else (self.percent, self.second)

    @property
    def display(self) -> str:
        if self.status == "done" and self.percent is not None:
            if self.second is not None:
                return f"{self.percent:.2f} / {self.second:.2f}"
            return f"{self.percent:.4f}" if self.task == "qbe" else f"{self.percent:.2f}"
        if self.status == "partial":
            return self.detail
        return self.status


_LOG_LINE = re.compile(r"^(\w[\w-]*) at step (\d+): ([-+0-9.eE]+|nan|inf)\s*$", re.MULTILINE)
_BEST_LINE = re.compile(r"^New best on (\w[\w-]*) at step (\d+):", re.MULTILINE)


def _latest_yaml(expdir: Path, prefix: str, mode: Optional[str] = None) -> Optional[dict]:
    """The newest ``{prefix}_<time>.yaml`` s3prl wrote (optionally of a given -m mode)."""
    for path in sorted(expdir.glob(f"{prefix}_*.yaml"), reverse=True):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and (mode is None or data.get("mode") == mode):
            return data
    return None


def _train_config(expdir: Path) -> Optional[dict]:
    args = sorted(expdir.glob("args_*.yaml"))
    for path in reversed(args):  # config of the newest training run, which sits beside its args file
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("mode") == "train":
            cfg = expdir / path.name.replace("args_", "config_", 1)
            try:
                return yaml.safe_load(cfg.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
    return None


def _training_complete(expdir: Path) -> Optional[bool]:
    """From s3prl's own files: did training reach total_steps? None when it cannot be told."""
    config = _train_config(expdir)
    ckpts = states_checkpoints(expdir)
    if not config or not ckpts:
        return None if not ckpts else False
    runner = config.get("runner", {})
    total, save = int(runner.get("total_steps", 0)), int(runner.get("save_step", 1) or 1)
    return ckpts[-1][0] >= total - total % save


def _from_s3prl_files(task: str, expdir: Path, fold: Optional[str]) -> Optional[TaskResult]:
    """A test result written by s3prl itself (no runner files), or None."""
    spec = tasks_module().get_task(task)
    if spec.scored_by != "recipe" or spec.extra_results:
        return None  # the runner makes the number (DER grid, best layer) or keeps a second one (SF's CER)
    if task == "asv":
        eers = []
        for log in expdir.glob("states-*/log.txt"):  # s3prl's test_expdir.sh layout
            found = re.findall(r"test-EER:\s*([-+0-9.eE]+)", log.read_text(errors="replace"))
            if found:
                eers.append((float(found[-1]), log.parent.name))
        if eers:
            eer, name = min(eers)
            return TaskResult(task, "done", to_percent(task, eer), f"best of {len(eers)} checkpoints ({name})",
                              "states-*/log.txt (test_expdir.sh)")
        return None
    log = expdir / "log.log"
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    tests = [(int(step), float(value)) for split, step, value in _LOG_LINE.findall(text) if split == "test"]
    evaluated = [value for step, value in tests if step == 0]
    if evaluated:  # -m evaluate logs at step 0
        return TaskResult(task, "done", to_percent(task, evaluated[-1]), "s3prl -m evaluate", str(log))
    bests = [int(step) for split, step in _BEST_LINE.findall(text) if split == "dev"]
    if bests and _training_complete(expdir):
        at_best = [value for step, value in tests if step == bests[-1]]
        if at_best:
            return TaskResult(task, "done", to_percent(task, at_best[-1]), f"test at dev-best step {bests[-1]}",
                              str(log))
    return None


def unit_result(task: str, expdir: Path, fold: Optional[str] = None) -> TaskResult:
    """Status and value of one s3prl expdir (one task, or one ER fold)."""
    if not expdir.is_dir():
        return TaskResult(task, "missing", detail=f"no {expdir}")
    result = read_json(expdir / RESULT_FILE)
    if (expdir / DONE_FILE).is_file() and isinstance(result, dict) and "value" in result:
        value = result.get("percent")
        value = to_percent(task, result["value"]) if value is None else float(value)
        detail = f"{result.get('split', 'test')} on {result.get('ckpt', '?')}"
        sweep = read_json(expdir / SWEEP_FILE)
        if task == "asv" and isinstance(sweep, dict) and sweep.get("eer_by_step"):
            detail += f", the best EER of {len(sweep['eer_by_step'])} checkpoints"
        elif result.get("note"):
            detail += " (no dev-best checkpoint was saved)"
        if task == "qbe" and result.get("layer") is not None:
            detail = f"{result.get('split', 'test')} with layer {result['layer']}, the best of " \
                     f"{len(result.get('dev_mtwv_by_layer') or {})} on dev"
        second = (result.get("extra") or {}).get("slot_value_cer") if task == "sf" else None
        if task == "sf" and second is None:
            return TaskResult(task, "failed", detail="no slot-value CER in the result", source=str(expdir / RESULT_FILE))
        return TaskResult(task, "done", value, detail, str(expdir / RESULT_FILE), params=result.get("params"),
                          second=None if second is None else to_percent(task, second))
    owner = lock_owner(expdir)
    if owner is not None:
        return TaskResult(task, "running", detail=f"pid {owner.get('pid')} on {owner.get('host')}")
    failed = read_json(expdir / FAILED_FILE)
    if isinstance(failed, dict):
        first = str(failed.get("message", "")).splitlines()[0] if failed.get("message") else ""
        return TaskResult(task, "failed", detail=f"{failed.get('stage')}: {first}", source=str(failed.get("log") or ""))
    found = _from_s3prl_files(task, expdir, fold)
    if found is not None:
        return found
    trained = (expdir / TRAIN_DONE_FILE).is_file() or _training_complete(expdir)
    if trained:
        return TaskResult(task, "untested", detail="trained, no test result")
    ckpts = states_checkpoints(expdir)
    step = f" (last checkpoint step {ckpts[-1][0]})" if ckpts else ""
    runner_made = any((expdir / name).exists() for name in (TRAIN_DONE_FILE, FAILED_FILE)) or \
        (expdir.parent / MANIFEST_NAME).is_file() or (expdir.parent.parent / MANIFEST_NAME).is_file()
    # a runner-managed expdir without a live runner was interrupted; for others liveness is unknown
    return TaskResult(task, "stopped" if runner_made else "running", detail=f"training not finished{step}")


def merge_er(folds: Dict[str, TaskResult]) -> TaskResult:
    """ER is the mean over all five folds; anything less is shown as 'k/5 folds'."""
    done = {f: r for f, r in folds.items() if r.status == "done" and r.percent is not None}
    if len(done) == len(ER_FOLDS):
        mean = sum(r.percent for r in done.values()) / len(ER_FOLDS)  # type: ignore[misc]
        params = next((r.params for r in done.values() if r.params), None)
        return TaskResult("er", "done", mean, "mean of 5 folds", "", params=params, folds=dict(folds))
    if not any(r.status != "missing" for r in folds.values()):
        return TaskResult("er", "missing", detail="no fold run", folds=dict(folds))
    others = sorted({r.status for f, r in folds.items() if f not in done and r.status != "missing"})
    detail = f"{len(done)}/5 folds" + (f" ({', '.join(others)})" if others else "")
    return TaskResult("er", "partial", detail=detail, folds=dict(folds))


# ----------------------------------------------------------------------------------------------------
# one model (row)


def _fold_of(expdir: Path) -> Optional[str]:
    config = _train_config(expdir) or {}
    fold = config.get("downstream_expert", {}).get("datarc", {}).get("test_fold")
    if fold in ER_FOLDS:
        return fold
    match = re.search(r"fold([1-5])", expdir.name)
    return f"fold{match.group(1)}" if match else None


def discover_expdirs(path: Path, depth: int = 3) -> Dict[Tuple[str, Optional[str]], List[Path]]:
    """s3prl expdirs under ``path`` by (task, ER fold), found through their args_*.yaml."""
    found: Dict[Tuple[str, Optional[str]], List[Path]] = {}

    def visit(d: Path, level: int) -> None:
        args = _latest_yaml(d, "args", mode="train") or _latest_yaml(d, "args")
        if args is not None and args.get("downstream") in DOWNSTREAM_TO_TASK:
            task = DOWNSTREAM_TO_TASK[args["downstream"]]
            if args["downstream"] == "ctc":
                corpus = ((_train_config(d) or {}).get("downstream_expert", {}).get("corpus", {}) or {}).get("name")
                task = CTC_CORPUS_TO_TASK.get(str(corpus).lower(), task)
            fold = _fold_of(d) if task == "er" else None
            found.setdefault((task, fold), []).append(d)
            return
        if level >= depth:
            return
        # sweep/ (ASV) and layers/ (QbE) hold the runner's per-checkpoint and per-layer evaluations
        for child in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in ("sweep", "layers", "logs", "configs")):
            visit(child, level + 1)

    visit(path, 0)
    return found


def _best_of(task: str, candidates: List[Path], fold: Optional[str]) -> TaskResult:
    results = [unit_result(task, d, fold) for d in candidates]
    order = ["done", "running", "untested", "stopped", "failed", "missing"]
    results.sort(key=lambda r: order.index(r.status) if r.status in order else len(order))
    if len(candidates) > 1:
        LOG.warning("%s%s: %d expdirs found, using the one that is %s", task, f"/{fold}" if fold else "",
                    len(candidates), results[0].status)
    return results[0]


@dataclass
class ModelRow:
    name: str
    kind: str  # ours | reference
    params_m: Optional[float]
    tasks: Dict[str, TaskResult]
    path: str = ""
    leaderboard_score: Optional[float] = None
    source: str = ""
    scale: str = "full"  # the runner's task scale (manifest); mini/ci rows do not follow the SUPERB protocol
    synthetic: bool = False  # some task's data root is a `make-corpus` corpus
    gmacs_per_s: Optional[float] = None  # a grid member's analytic GMACs per second of audio

    @property
    def offline(self) -> bool:
        """Not comparable to published SUPERB numbers: a reduced scale or generated speech."""
        return self.scale != "full" or self.synthetic

    def values(self) -> Dict[str, Union[float, Tuple[float, float]]]:
        return {t: r.value for t, r in self.tasks.items() if r.value is not None}


def collect_model(path: Union[str, Path], name: Optional[str] = None, params_m: Optional[float] = None) -> ModelRow:
    """One row from an experiment root, a folder of s3prl expdirs, or a single expdir."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CollectError(f"{root} is not a directory (expected a run_superb.sh --exp-root or an s3prl expdir)")
    manifest = read_json(root / MANIFEST_NAME)
    found = discover_expdirs(root)
    tasks: Dict[str, TaskResult] = {}
    for task in OUR_TASKS:
        if task == "er":
            folds = {}
            for fold in ER_FOLDS:
                candidates = found.get(("er", fold), [])
                if not candidates and (root / "er" / fold).is_dir():
                    candidates = [root / "er" / fold]
                folds[fold] = _best_of("er", candidates, fold) if candidates else TaskResult("er", "missing")
            tasks["er"] = merge_er(folds)
        else:
            candidates = found.get((task, None), [])
            if not candidates and (root / task).is_dir():  # started, but s3prl has not written its args yet
                candidates = [root / task]
            tasks[task] = _best_of(task, candidates, None) if candidates else TaskResult(task, "missing")
    if params_m is None:
        counts = [r.params for r in tasks.values() if r.params] + \
                 [f.params for r in tasks.values() for f in r.folds.values() if f.params]
        params_m = counts[0] / 1e6 if counts else None
    if name is None:
        if isinstance(manifest, dict):
            name = "-".join([manifest.get("upstream", "model")] + [Path(p).stem for p in
                                                                  (manifest.get("ckpt"), manifest.get("subnet")) if p])
        else:
            name = root.name
    scale, synthetic = "full", False
    if isinstance(manifest, dict):
        scale = str(manifest.get("scale") or "full")
        roots = [d.get("root") for d in (manifest.get("data") or {}).values() if isinstance(d, dict)]
        synthetic = any(r and (Path(r) / CORPUS_MANIFEST).is_file() for r in roots)
    return ModelRow(name, "ours", params_m, tasks, str(root), scale=scale, synthetic=synthetic)


def reference_row(ref: ReferenceModel) -> ModelRow:
    tasks = {}
    for t in OUR_TASKS:
        if t in ref.values:
            value = ref.values[t]
            first, second = (value if isinstance(value, tuple) else (value, None))
            tasks[t] = TaskResult(t, "done", float(first), source=ref.source,
                                  second=None if second is None else float(second))
    return ModelRow(ref.name, "reference", ref.params_m, tasks, leaderboard_score=ref.leaderboard_score,
                    source=ref.source)


# ----------------------------------------------------------------------------------------------------
# the table


@dataclass
class Table:
    rows: List[ModelRow]
    score_tasks: Tuple[str, ...]  # the tasks every one of our rows has a number for
    scores: Dict[str, Optional[Score]]
    generated: str

    @property
    def partial(self) -> bool:
        return set(self.score_tasks) != set(reference.ALL_TASKS)

    @property
    def offline(self) -> bool:
        """Some of our rows ran a reduced scale or on generated speech: their score gets a column of its own."""
        return any(r.offline for r in self.rows if r.kind == "ours")

    def offline_header(self) -> str:
        ours = [r for r in self.rows if r.kind == "ours" and r.offline]
        if any(r.synthetic for r in ours):
            return OFFLINE_LABEL
        scales = ",".join(sorted({r.scale for r in ours}))
        return f"{scales}-scale score (not comparable to the leaderboard)"

    def row_scores(self) -> List[Tuple[ModelRow, Optional[float]]]:
        """Each row with its score over the table's score tasks (None: not computed for it)."""
        return [(row, None if self.scores.get(key) is None else self.scores[key].value)  # type: ignore[union-attr]
                for row, key in zip(self.rows, _row_keys(self.rows))]

    def score_header(self) -> str:
        n = len(self.score_tasks)
        return "SUPERB score" if not self.partial else f"SUPERB score (partial, {n} task{'' if n == 1 else 's'})"

    def score_note(self) -> str:
        if not self.score_tasks:
            return ("SUPERB score: not computed — no task has a finished result in every one of our rows.")
        names = ", ".join(reference.TASK_NAMES[t] for t in self.score_tasks)
        if not self.partial:
            return "SUPERB score over all 10 tasks (leaderboard formula)."
        note = (f"SUPERB score (partial): computed over {len(self.score_tasks)}/10 tasks ({names}) as "
                "1000 × mean over tasks of (x − FBANK)/(SOTA − FBANK) — the leaderboard formula restricted to "
                "these tasks, for every row alike. It is comparable within this table only; 'LB score' is the "
                "published 10-task leaderboard score.")
        if self.offline:
            header = self.offline_header()
            what = "generated speech at a reduced task scale" if header == OFFLINE_LABEL else "a reduced task scale"
            note += (f" Our rows ran on {what}: the same formula gives their '{header}', which ranks "
                     "them against each other, not against the published rows.")
        return note


def build_table(models: Sequence[ModelRow], references: Sequence[ReferenceModel]) -> Table:
    ours = [m for m in models if m.kind == "ours"]
    common = [t for t in OUR_TASKS if ours and all(t in m.values() for m in ours)]
    score_tasks = tuple(t for t in reference.ALL_TASKS if t in common)
    rows = list(models) + [reference_row(r) for r in references]
    # every row, ours and published, is scored over the same tasks, so the numbers compare
    scores: Dict[str, Optional[Score]] = {
        key: superb_score(row.values(), score_tasks) if score_tasks else None
        for row, key in zip(rows, _row_keys(rows))}
    return Table(rows, score_tasks, scores, now_iso())


def _row_keys(rows: Sequence[ModelRow]) -> List[str]:
    keys, seen = [], {}
    for row in rows:
        n = seen.get(row.name, 0)
        seen[row.name] = n + 1
        keys.append(row.name if n == 0 else f"{row.name} ({n + 1})")
    return keys


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _score_cells(table: Table, row: ModelRow, value: Optional[float]) -> List[Optional[float]]:
    """The row's score in the offline column (offline tables only) and in the SUPERB column."""
    if not table.offline:
        return [value]
    return [value, None] if row.offline else [None, value]


def to_markdown(table: Table) -> str:
    score_headers = ([table.offline_header()] if table.offline else []) + [table.score_header()]
    macs = any(r.gmacs_per_s is not None for r in table.rows)
    header = ["Model", "Params (M)"] + (["GMACs/s"] if macs else []) + [TASK_LABELS[t] for t in OUR_TASKS] + \
        score_headers + ["LB score"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, score in table.row_scores():
        name = f"**{row.name}**" if row.kind == "ours" else f"{row.name} (published)"
        cells = [name, _fmt(row.params_m)] + ([_fmt(row.gmacs_per_s)] if macs else []) + \
            [row.tasks[t].display if t in row.tasks else "—" for t in OUR_TASKS]
        cells += [_fmt(v, 1) for v in _score_cells(table, row, score)] + [_fmt(row.leaderboard_score, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", f"*{table.score_note()}*", "",
             "Metrics in percent: PER, WER, EER and DER lower is better; accuracies higher is better; QbE is "
             "MTWV (higher is better); SF is slot-type F1 / slot-value CER. ER is the mean "
             "test accuracy of the 5 IEMOCAP folds. Status words instead of numbers: missing (never started), "
             "running, stopped (interrupted), untested (trained, no test result), failed, k/5 folds (ER incomplete)."]
    if macs:
        notes[-1] += (" GMACs/s: multiply-accumulates per second of audio, counted analytically for a "
                      f"{grid.MACS_SECONDS:g} s utterance (as `lighthubert-s3prl profile`).")
    for row in table.rows:
        if row.kind != "ours":
            continue
        notes += ["", f"**{row.name}** ({row.path}):"]
        for task in OUR_TASKS:
            r = row.tasks.get(task) or TaskResult(task, "missing")
            line = f"- {reference.TASK_NAMES[task]}: {r.display}" + (f" — {r.detail}" if r.detail and r.status != "partial" else "")
            if r.folds and r.status != "missing":
                line += " — folds: " + ", ".join(f"{f} {fr.display}" for f, fr in r.folds.items())
            notes.append(line)
    refs = [r for r in table.rows if r.kind == "reference"]
    if refs:
        notes += ["", "Published rows (public set): " +
                  "; ".join(f"{r.name} — {r.source}" for r in refs) + "."]
    return "\n".join(lines + notes) + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    macs = any(r.gmacs_per_s is not None for r in table.rows)  # a grid's column only
    writer.writerow(["model", "kind", "params_m"] + (["gmacs_per_second"] if macs else []) + list(OUR_TASKS) +
                    ["superb_score", "score_tasks", "score_partial", "leaderboard_score", "path_or_source"] +
                    (["offline"] if table.offline else []))
    for row, score in table.row_scores():
        writer.writerow([row.name, row.kind, "" if row.params_m is None else f"{row.params_m:.4f}"] +
                        (["" if row.gmacs_per_s is None else f"{row.gmacs_per_s:.4f}"] if macs else []) +
                        [row.tasks[t].display if t in row.tasks else "" for t in OUR_TASKS] +
                        ["" if score is None else f"{score:.2f}", ",".join(table.score_tasks),
                         str(table.partial).lower(), "" if row.leaderboard_score is None else row.leaderboard_score,
                         row.path or row.source] + ([str(row.offline).lower()] if table.offline else []))
    return buf.getvalue()


def to_json(table: Table) -> dict:
    rows = []
    macs = any(r.gmacs_per_s is not None for r in table.rows)  # a grid's field only
    for row, score in table.row_scores():
        rows.append({
            "name": row.name, "kind": row.kind, "params_m": row.params_m,
            **({"gmacs_per_second": row.gmacs_per_s} if macs else {}), "path": row.path or None,
            "source": row.source or None, "leaderboard_score": row.leaderboard_score,
            "superb_score": score,
            "scale": row.scale, "synthetic": row.synthetic,
            "tasks": {t: {**{k: v for k, v in asdict(r).items() if k != "folds"}, "display": r.display,
                          "folds": {f: {**asdict(fr), "display": fr.display} for f, fr in r.folds.items()}}
                      for t, r in row.tasks.items()},
        })
    return {"generated": table.generated, "score_tasks": list(table.score_tasks), "score_partial": table.partial,
            "score_note": table.score_note(), "offline_score_label": table.offline_header() if table.offline else None,
            "units": "percent (MTWV for QbE)", "rows": rows}


@dataclass(frozen=True)
class PlotPoint:
    """One row on the parameters-vs-score plot."""

    name: str  # written beside the marker
    x: float  # parameters in millions, at least PLOT_MIN_PARAMS_M so that the log axis can show it
    y: float  # SUPERB score over the table's score tasks
    ours: bool  # this run's row (star) or a published one (dot)
    legend: Optional[str]  # "this run" / "published" on the first point of its kind, else None
    label_offset: Tuple[int, int]  # where the name goes, in points from the marker


@dataclass(frozen=True)
class PlotSpec:
    """What the plot shows, independent of how it is drawn."""

    points: Tuple[PlotPoint, ...]  # by increasing x
    title: str
    xlabel: str
    ylabel: str
    xscale: str
    empty_note: Optional[str]  # written across the axes when no row can be drawn


PLOT_MIN_PARAMS_M = 0.1  # FBANK has 0 parameters, which a log axis cannot show


def plot_spec(table: Table) -> PlotSpec:
    """Parameters vs SUPERB score: the rows with both a score and a parameter count. A table of offline rows
    plots only those, on their own axis: their score does not compare with the published points."""
    found = [(max(row.params_m, PLOT_MIN_PARAMS_M), score, row) for row, score in table.row_scores()
             if score is not None and row.params_m is not None and (not table.offline or row.offline)]
    labelled = {"ours": False, "reference": False}
    points = []
    # neighbours in size (e.g. DistilHuBERT and DPHuBERT) get labels above and below in turn
    for i, (x, y, row) in enumerate(sorted(found, key=lambda p: p[0])):
        ours = row.kind == "ours"
        legend = None if labelled[row.kind] else ("this run" if ours else "published")
        labelled[row.kind] = True
        points.append(PlotPoint(row.name, x, y, ours, legend, (6, 6 if i % 2 == 0 else -12)))
    tasks = ",".join(reference.TASK_NAMES[t] for t in table.score_tasks) or "none"
    if table.offline:
        score_name, _, qualifier = table.offline_header().partition(" (")
        return PlotSpec(tuple(points), f"{score_name} over {tasks} vs parameters ({qualifier}",
                        "parameters (M, log scale)", score_name, "log",
                        None if points else "no row has both a score and a parameter count")
    return PlotSpec(tuple(points), f"SUPERB score over {tasks} vs parameters", "parameters (M, log scale)",
                    "SUPERB score" + (" (partial)" if table.partial else ""), "log",
                    None if points else "no row has both a score and a parameter count")


def draw_plot(spec: PlotSpec):
    """The matplotlib figure of ``spec`` (a pyplot figure on the Agg backend; the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in CI or over ssh
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for p in spec.points:
        ax.scatter([p.x], [p.y], marker="*" if p.ours else "o", s=160 if p.ours else 50,
                   color="tab:red" if p.ours else "tab:blue", zorder=3, label=p.legend)
        ax.annotate(p.name, (p.x, p.y), textcoords="offset points", xytext=p.label_offset, fontsize=8)
    if spec.points:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale(spec.xscale)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.set_title(spec.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if spec.empty_note is not None:
        ax.text(0.5, 0.5, spec.empty_note, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot(table: Table, path: Path) -> Path:
    """Parameters vs SUPERB score (over the table's score tasks), written atomically as PNG."""
    fig = draw_plot(plot_spec(table))
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_outputs(table: Table, out_dir: Union[str, Path]) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": atomic_write_text(out / f"{OUTPUT_STEM}.md", to_markdown(table)),
        "csv": atomic_write_text(out / f"{OUTPUT_STEM}.csv", to_csv(table)),
        "json": atomic_write_text(out / f"{OUTPUT_STEM}.json", json.dumps(to_json(table), indent=2) + "\n"),
    }
    paths["plot"] = plot(table, out / f"{OUTPUT_STEM}.png")
    members = [r for r in table.rows if r.kind == "ours" and r.gmacs_per_s is not None]
    if members:
        paths["grid figure"] = grid_plot(table, out / grid_figure.FIGURE_NAME)
    return paths


def grid_plot(table: Table, path: Path) -> Path:
    """Score and task metrics of the grid's rows against parameters and MACs, Pareto fronts marked; the
    published LightHuBERT rows beside them only when no row of ours is offline."""
    points = []
    for row, score in table.row_scores():
        if row.kind != "ours" or row.gmacs_per_s is None or row.params_m is None:
            continue
        # SF is drawn by its F1 (the figure has one axis per task)
        values = {t: v[0] if isinstance(v, tuple) else v for t, v in row.values().items()}
        if score is not None:
            values["score"] = score
        points.append(grid_figure.GridPoint(row.name, row.params_m, row.gmacs_per_s, values))
    if not table.offline:
        points += grid_figure.published_points(grid.MACS_SECONDS, table.score_tasks)
    label = (table.offline_header().partition(" (")[0] if table.offline else table.score_header())
    tasks = ",".join(reference.TASK_NAMES[t] for t in table.score_tasks) or "no task"
    return grid_figure.draw(points, f"{label} over {tasks}", path)


def collect(expdirs: Sequence[Union[str, Path]], names: Optional[Sequence[str]] = None,
            params: Optional[Sequence[Optional[float]]] = None,
            references: Union[None, str, Sequence[str]] = None) -> Table:
    """Build the table for ``expdirs`` (one row each) plus the chosen reference rows."""
    if not expdirs:
        raise CollectError("give at least one experiment directory")
    if names and len(names) != len(expdirs):
        raise CollectError(f"--names gives {len(names)} name(s) for {len(expdirs)} experiment dir(s); give one per dir")
    if params and len(params) != len(expdirs):
        raise CollectError(f"--params gives {len(params)} value(s) for {len(expdirs)} experiment dir(s)")
    try:
        refs = reference.select_references(references)
    except reference.ScoreError as err:
        raise CollectError(str(err)) from None
    models: List[ModelRow] = []
    for i, d in enumerate(expdirs):
        record = grid.read_grid_record(Path(d).expanduser())
        if record is None:
            models.append(collect_model(d, names[i] if names else None, params[i] if params else None))
            continue
        if names or params:
            raise CollectError(f"{d} is a subnet grid: its rows take their names and sizes from grid.json; "
                               "drop --names/--params")
        for member in record["members"]:  # one row per subnet, in the grid's order
            row = collect_model(Path(d).expanduser() / member["name"], member["name"], member["params"] / 1e6)
            row.gmacs_per_s = member.get("gmacs_per_second")
            models.append(row)
    return build_table(models, refs)


def _parse_params(values: Optional[Sequence[str]]) -> Optional[List[Optional[float]]]:
    if not values:
        return None
    out: List[Optional[float]] = []
    for v in values:
        if v in ("", "-", "auto"):
            out.append(None)
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise CollectError(f"--params {v!r}: give millions of parameters as a number (or 'auto')") from None
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl collect",
        description="Collect s3prl SUPERB results (run_superb.sh experiment roots or plain s3prl expdirs) into "
                    "the paper-style table: Markdown, CSV, JSON and a parameters-vs-score plot, with published "
                    "reference rows beside ours. Unfinished tasks are shown by status, never as numbers.")
    parser.add_argument("expdirs", nargs="+", metavar="EXPDIR",
                        help="one per model row; a subnet grid's root (run_superb --subnets) gives one row per "
                             "subnet, with MACs, and the size-vs-score figure superb_grid.png")
    parser.add_argument("--names", nargs="+", help="row names, one per EXPDIR (default: from run_superb.json)")
    parser.add_argument("--params", nargs="+", metavar="M", help="parameters in millions per EXPDIR ('auto': from logs)")
    parser.add_argument("--references", default="default",
                        help=f"reference rows: default ({','.join(reference.DEFAULT_REFERENCES)}), all, none, or "
                             f"keys from {','.join(reference.REFERENCES)}")
    parser.add_argument("-o", "--out-dir", default="superb_results", help="output folder (default ./superb_results)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        table = collect(args.expdirs, args.names, _parse_params(args.params), args.references)
    except (CollectError, RunnerError) as err:
        print(f"lighthubert-s3prl collect: error: {err}", file=sys.stderr)
        return 2
    paths = write_outputs(table, args.out_dir)
    if not args.quiet:
        print(to_markdown(table))
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
