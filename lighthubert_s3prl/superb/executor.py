"""Running one unit: train it through s3prl (or resume, or find it trained), then test it.

The test takes the dev-best checkpoint, or for ASV, which has no dev set, sweeps every saved checkpoint
on the test trials and keeps the best EER's predictions. The result is written first and the done
marker last, so a crash in between leaves a unit that is re-tested, never one marked done without its
number. A runner hands each unit to an executor; one that runs units elsewhere (a cluster queue, say)
subclasses :class:`UnitExecutor` or offers the same ``run(unit) -> Outcome``.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from lighthubert_s3prl.io_utils import atomic_write, atomic_write_text

from .options import RunOptions
from .units import (DONE_FILE, FAILED_FILE, JOB_ID_ENV, LOCK_FILE, RESULT_FILE, SWEEP_FILE, TRAIN_DONE_FILE, Outcome, Unit,
                    UnitCommands, lock_owner, now_iso, outcome_from_result, read_json, sha256_of, states_checkpoints,
                    tasks_module, to_percent, unit_is_done, write_json)

LOG = logging.getLogger("lighthubert_s3prl.superb.runner")

_PARAMS_RE = re.compile(r"LightHuBERT \w+ subnet \(([\d,]+) parameters\)")

#: runs a command with its output appended to a log; returns (exit code, this run's output)
Execute = Callable[[List[str], Path], Tuple[int, str]]


class UnitExecutor:
    """Runs units through s3prl processes built by ``commands`` and started by ``execute``."""

    def __init__(self, opts: RunOptions, commands: UnitCommands, logs: Path, execute: Execute) -> None:
        self.opts = opts
        self.commands = commands
        self.logs = logs
        self.execute = execute

    def run(self, unit: Unit) -> Outcome:
        """Skip a finished unit, leave a busy one alone, else train and test it under a lock file."""
        started = time.monotonic()
        done = unit_is_done(unit)
        if done is not None:
            LOG.info("%s: skipped, finished earlier (%s %s)", unit.label, done.get("metric"), done.get("value"))
            return outcome_from_result(unit, done, "skipped", 0.0, "finished earlier")
        owner = lock_owner(unit.expdir)
        if owner is not None and owner.get("pid") != os.getpid():
            msg = f"another runner (pid {owner.get('pid')} on {owner.get('host')}) is working on {unit.expdir}"
            LOG.warning("%s: %s; leaving it alone", unit.label, msg)
            return Outcome(unit.name, unit.task, unit.fold, "busy", str(unit.expdir), message=msg)
        unit.expdir.mkdir(parents=True, exist_ok=True)
        job = os.environ.get(JOB_ID_ENV)
        write_json(unit.expdir / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                                             **({"job": job} if job else {})})
        try:
            ok, message, params, train_seconds = self.train(unit)
            train_log = self.logs / f"{unit.name}.train.log"
            if not ok:
                return self._fail(unit, "train", message, train_log, started)
            test_started = time.monotonic()
            result, message, test_log = (self.asv_sweep(unit) if unit.task == "asv" else self.test_best(unit))
            if result is None:
                return self._fail(unit, "test", message, test_log, started)
            spec = tasks_module().get_task(unit.task)
            result.update({
                "task": unit.task, "fold": unit.fold, "metric": spec.metric, "higher_is_better": spec.higher_is_better,
                "percent": to_percent(unit.task, result["value"]), "params": params,
                "upstream": self.opts.upstream, "ckpt_file": self.opts.ckpt, "subnet": self.opts.subnet,
                "scale": self.opts.scale, "train_log": str(train_log), "train_seconds": round(train_seconds, 1),
                "test_seconds": round(time.monotonic() - test_started, 1), "finished": now_iso(),
                **({"job": job} if job else {})})
            # result first, done marker last: a crash in between leaves a unit that is re-tested, never
            # one that is marked done without its number
            write_json(unit.expdir / RESULT_FILE, result)
            atomic_write_text(unit.expdir / DONE_FILE, f"{now_iso()}\n")
            (unit.expdir / FAILED_FILE).unlink(missing_ok=True)
            LOG.info("%s: %s %s = %.4f", unit.label, result["split"], spec.metric, result["value"])
            return outcome_from_result(unit, result, "done", time.monotonic() - started, "")
        finally:
            (unit.expdir / LOCK_FILE).unlink(missing_ok=True)

    def _fail(self, unit: Unit, stage: str, message: str, log: Optional[Path], started: float) -> Outcome:
        write_json(unit.expdir / FAILED_FILE, {"stage": stage, "message": message, "log": str(log) if log else None,
                                               "time": now_iso()})
        LOG.error("%s: %s failed: %s%s", unit.label, stage, message, f" (log: {log})" if log else "")
        return Outcome(unit.name, unit.task, unit.fold, "failed", str(unit.expdir), message=f"{stage}: {message}",
                       seconds=time.monotonic() - started, logs=[str(log)] if log else [])

    def train(self, unit: Unit) -> Tuple[bool, str, Optional[int], float]:
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
        rc, text = self.execute(self.commands.train_command(unit), log)
        seconds = time.monotonic() - started
        if rc != 0:
            return False, f"s3prl exited with code {rc}; last lines:\n{_tail(text)}", None, seconds
        found = _PARAMS_RE.findall(text) or _PARAMS_RE.findall(log.read_text(errors="replace"))
        params = int(found[-1].replace(",", "")) if found else None
        write_json(unit.expdir / TRAIN_DONE_FILE, {"time": now_iso(), "seconds": round(seconds, 1),
                                                   "params": params, "log": str(log),
                                                   "resumed_from": previous[-1][1].name if previous else None})
        return True, "trained", params, seconds

    def test_best(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        """(result, error message, log) of testing the dev-best checkpoint (the last one if none is best)."""
        spec = tasks_module().get_task(unit.task)
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
        rc, text = self.execute(self.commands.test_command(unit, ckpt, split, unit.expdir), log)
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

    def asv_sweep(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        """Evaluate every states-*.ckpt on the test trials, keep the best EER's predictions (no dev set)."""
        spec = tasks_module().get_task("asv")
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
            rc, text = self.execute(self.commands.test_command(unit, ckpt, split, outdir), log)
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


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
