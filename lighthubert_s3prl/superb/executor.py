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
from .units import (DONE_FILE, FAILED_FILE, JOB_ID_ENV, LAYERS_FILE, LOCK_FILE, RESULT_FILE, SWEEP_FILE, TRAIN_DONE_FILE, Outcome, Unit,
                    UnitCommands, lock_owner, now_iso, outcome_from_result, read_json, prediction_sha256, sha256_of, states_checkpoints,
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
            result, message, test_log = self.test(unit)
            if result is None:
                return self._fail(unit, "test", message, test_log, started)
            spec = tasks_module().get_task(unit.task)
            params = result.pop("params", params)
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

    def test(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        """(result, error message, log) of scoring a trained unit the way its task is scored."""
        if unit.task == "asv":
            return self.asv_sweep(unit)
        if not tasks_module().get_task(unit.task).trains:
            return self.layer_sweep(unit)
        return self.test_best(unit)

    def train(self, unit: Unit) -> Tuple[bool, str, Optional[int], float]:
        """(ok, message, parameter count, seconds) of training ``unit`` (or finding it already trained)."""
        if not tasks_module().get_task(unit.task).trains:
            return True, "nothing to train", None, 0.0
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
        params = _params_in(text) or _params_in(log.read_text(errors="replace"))
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
        extra: Dict[str, object] = {}
        if spec.scored_by == "diarization":
            scored, error = self._score_diarization(unit)
            if scored is None:
                return None, error, log
            value = float(scored["der"])
            extra["scoring"] = {k: scored[k] for k in ("threshold", "median", "grid", "hypothesis_rttm")}
        else:
            value = spec.parse_result(text, split)
            if value is None:
                return None, f"no '{spec.result_template.format(split=split)}' line in the output", log
        further = spec.parse_extra_results(text, split)
        absent = [template.format(split=split) for name, template in spec.extra_results if further[name] is None]
        if absent:
            return None, f"no '{absent[0]}' line in the output", log
        if further:
            extra["extra"] = further
        pred = spec.prediction_path(unit.expdir, unit.fold)
        digest = prediction_sha256(pred)
        if digest is None:
            return None, f"the evaluation wrote no predictions to {pred}", log
        return {"value": value, "split": split, "ckpt": ckpt.name, "prediction_file": spec.prediction_file.format(
                    fold=unit.fold), "prediction_sha256": digest, "test_log": str(log), "note": note, **extra}, "", log

    def _task_config(self, task: str) -> dict:
        import yaml

        return yaml.safe_load((self.commands.configs / f"{task}.yaml").read_text(encoding="utf-8"))

    def _score_diarization(self, unit: Unit) -> Tuple[Optional[dict], str]:
        """SUPERB's SD number: the test predictions as RTTM over its threshold x median grid, lowest DER."""
        from .diarization import DiarizationError, score_expdir

        test_dir = Path(self._task_config(unit.task)["downstream_expert"]["loaderrc"]["test_dir"])
        try:
            scored = score_expdir(unit.expdir, test_dir / "rttm")
        except (DiarizationError, OSError) as err:
            return None, f"scoring the diarization: {err}"
        LOG.info("%s: DER %.4f at threshold %s, median %s", unit.label, scored["der"], scored["threshold"],
                 scored["median"])
        return scored, ""

    def layer_sweep(self, unit: Unit) -> Tuple[Optional[dict], str, Optional[Path]]:
        """QbE: DTW on every hidden state on dev, MTWV of each; the best dev layer is scored on test.

        Each layer's dev MTWV is kept in ``superb_qbe_layers.json`` as soon as it is known, so an
        interrupted sweep resumes with the next layer.
        """
        from lighthubert_s3prl.upstream.probe import parse_probe_output

        from .qbe import QbEError, score_stdlist

        spec = tasks_module().get_task(unit.task)
        log = self.logs / f"{unit.name}.layers.log"
        state_path = unit.expdir / LAYERS_FILE
        state = read_json(state_path)
        if not isinstance(state, dict) or "hidden_states" not in state:
            rc, text = self.execute(self.commands.probe_command(), log)
            found = parse_probe_output(text) if rc == 0 else None
            if found is None:
                return None, f"could not count the upstream's hidden states (exit code {rc}):\n{_tail(text)}", log
            state = {**found, "dev_mtwv": {}}
            write_json(state_path, state)
        count = int(state["hidden_states"])
        dataset_root = Path(self._task_config(unit.task)["downstream_expert"]["datarc"]["dataset_root"])
        params: Optional[int] = state.get("params")

        def evaluate(split: str, layer: int, scoring_split: str) -> Tuple[Optional[dict], str, Path]:
            nonlocal params
            outdir = unit.expdir / "layers" / f"{split}-{layer}"
            rc, text = self.execute(self.commands.layer_command(unit, split, layer, outdir), log)
            if rc != 0:
                return None, f"layer {layer} on {split}: s3prl exited with code {rc}; last lines:\n{_tail(text)}", outdir
            params = _params_in(text) or params
            try:
                return score_stdlist(outdir / spec.prediction_file, dataset_root, scoring_split), "", outdir
            except (QbEError, OSError) as err:
                return None, f"layer {layer} on {split}: scoring: {err}", outdir

        dev_scores: Dict[str, float] = state["dev_mtwv"]
        for layer in range(count):
            if str(layer) in dev_scores:
                continue
            LOG.info("%s: layer %d of 0..%d on %s", unit.label, layer, count - 1, spec.dev_split)
            scored, error, _ = evaluate(spec.dev_split or "dev", layer, "dev")
            if scored is None:
                return None, error, log
            dev_scores[str(layer)] = float(scored["mtwv"])
            state["params"] = params
            write_json(state_path, state)
        best = max(range(count), key=lambda layer: (dev_scores[str(layer)], -layer))  # a tie: the lower layer
        split = spec.evaluate_splits[0]
        LOG.info("%s: layer %d is best on dev (MTWV %.4f); scoring it on %s", unit.label, best,
                 dev_scores[str(best)], split)
        scored, error, outdir = evaluate(split, best, "eval")
        if scored is None:
            return None, error, log
        target = unit.expdir / spec.prediction_file
        atomic_write(target, lambda f: f.write((outdir / spec.prediction_file).read_bytes()))
        return {"value": float(scored["mtwv"]), "split": split, "ckpt": None, "layer": best,
                "prediction_file": target.name, "prediction_sha256": sha256_of(target), "test_log": str(log),
                "dev_mtwv_by_layer": {k: dev_scores[k] for k in sorted(dev_scores, key=int)},
                "scoring": {k: v for k, v in scored.items() if k != "mtwv"}, "params": params}, "", log

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


def _params_in(text: str) -> Optional[int]:
    """The parameter count our upstream printed last in an s3prl process's output, or None."""
    found = _PARAMS_RE.findall(text)
    return int(found[-1].replace(",", "")) if found else None


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
