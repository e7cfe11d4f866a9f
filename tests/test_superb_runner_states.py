"""The batch runner's state machine: what it launches for every on-disk state of a unit.

A unit (one task, or one ER fold) is found in one of these states: nothing yet; training interrupted
(checkpoints, no training marker); trained but not tested; tested, result written but the done marker
missing (a crash between the two); done. Each must lead to exactly one course of action: train, resume
with ``-a``, test only, re-test, skip. The s3prl processes are replaced by a recorder standing in for
``SuperbRunner._execute`` that writes what s3prl would write (checkpoints, prediction files, the result
line), so the tests count and compare the launches themselves instead of reading log messages. Every
expected command line is written out here flag by flag; none is built with the runner's own helpers.

Beyond the launches, the later sections pin what a unit's run records: every field of the outcome (built
by hand from the fixture's result), the result, training-done and failure files key by key, the lock's
content while s3prl runs, and the timings, made exact by a clock that only the launches advance (training
12.34 s, evaluation 3.21 s, so 12.3 and 3.2 once rounded to tenths). The whole run is pinned over several
units: their order, a failure that does not stop it, ``--fail-fast`` that does, and the ``[i/n]`` progress
lines. The state readers (``unit_is_done``, ``outcome_from_result``, ``pid_alive``) are checked on their own,
``pid_alive`` against a real child process that must survive the probe.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from lighthubert_s3prl.superb import executor as executor_module
from lighthubert_s3prl.superb import report, units
from lighthubert_s3prl.superb.options import RunOptions
from lighthubert_s3prl.superb.runner import SuperbRunner
from lighthubert_s3prl.superb.units import Unit

CKPT = "/models/tiny.pt"
DOWNSTREAM = {"pr": "ctc", "ks": "speech_commands", "ic": "fluent_commands", "sid": "voxceleb1", "er": "emotion",
              "asr": "asr", "asv": "sv_voxceleb1"}
# what s3prl's recipes print and write, per task (from s3prl 0.4.18's experts)
RESULT_LINE = {"pr": "test per: {}", "ks": "test acc: {}", "ic": "test acc: {}", "sid": "test acc: {}",
               "er": "test acc: {}", "asr": "test-clean wer: {}", "asv": "sv-voxceleb1/test-EER: {}"}
PREDICTION = {"pr": "test-hyp.ark", "ks": "test_predict.txt", "ic": "test_predict.csv", "sid": "test_predict.txt",
              "er": "test_{fold}_predict.txt", "asr": "test-clean-noLM-hyp.ark", "asv": "test_predict.txt"}
BEST = {"asr": "dev-clean-best.ckpt"}  # the others save dev-best.ckpt; ASV saves no best checkpoint
SPLIT = {"asr": "test-clean"}  # the others are tested on "test"
PARAMS = 2_520_064


@dataclass
class Call:
    mode: str  # train | evaluate
    args: List[str]  # everything after the launcher module
    resumed_from: Optional[str] = None  # train: the checkpoint s3prl's -a continues from (None: from scratch)


@dataclass
class FakeS3prl:
    """Stands in for every s3prl process the runner starts; records the calls and writes s3prl's files.

    Training saves ``states-<step>.ckpt`` every ``save_step`` up to ``total_steps`` (continuing after the
    newest checkpoint when ``-a`` finds one) and, when ``write_best``, the dev-best checkpoint.
    Evaluation writes the prediction file into ``-o args.expdir`` and prints the score line with
    ``values[checkpoint name]`` (default ``value``).
    """

    root: Path
    total_steps: int = 4
    save_step: int = 2
    write_best: bool = True
    value: float = 0.75
    values: Dict[str, float] = field(default_factory=dict)
    fail: Dict[str, int] = field(default_factory=dict)  # mode -> exit code
    calls: List[Call] = field(default_factory=list)

    def unit_of(self, expdir: Path) -> Tuple[str, Optional[str]]:
        parts = expdir.relative_to(self.root).parts
        return parts[0], (parts[1] if parts[0] == "er" else None)

    def __call__(self, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        args = cmd[cmd.index("lighthubert_s3prl.run_downstream") + 1:]
        mode = args[args.index("-m") + 1]
        if mode == "train":
            text, call = self._train(args)
        else:
            text, call = self._evaluate(args)
        self.calls.append(call)
        rc = self.fail.get(mode, 0)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(text + f"===== exit code {rc}\n")
        return rc, text

    def _train(self, args: List[str]) -> Tuple[str, Call]:
        expdir = Path(args[args.index("-p") + 1])
        task, _ = self.unit_of(expdir)
        expdir.mkdir(parents=True, exist_ok=True)
        saved = [int(p.name[len("states-"):-len(".ckpt")]) for p in expdir.glob("states-*.ckpt")]
        resumed = f"states-{max(saved)}.ckpt" if saved and "-a" in args else None
        start = max(saved) if resumed else 0
        if self.fail.get("train"):
            return "Traceback: CUDA out of memory\n", Call("train", args, resumed)
        for step in range(start + self.save_step, self.total_steps + 1, self.save_step):
            (expdir / f"states-{step}.ckpt").write_bytes(f"{task} step {step}".encode())
        if self.write_best and task != "asv":
            (expdir / BEST.get(task, "dev-best.ckpt")).write_bytes(b"best")
        return f"[Expert] - LightHuBERT small subnet ({PARAMS:,} parameters)\n", Call("train", args, resumed)

    def _evaluate(self, args: List[str]) -> Tuple[str, Call]:
        ckpt = Path(args[args.index("-e") + 1])
        outdir = Path(re.fullmatch(r'args\.expdir="(.*)"', args[args.index("-o") + 1]).group(1))
        task, fold = self.unit_of(ckpt.parent)
        value = self.values.get(ckpt.name, self.value)
        if not self.fail.get("evaluate"):
            outdir.mkdir(parents=True, exist_ok=True)
            (outdir / PREDICTION[task].format(fold=fold)).write_text(f"utt1 predicted by {ckpt.name}\n")
        return "noise before\n" + RESULT_LINE[task].format(value) + "\n", Call("evaluate", args)


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeS3prl:
    recorder = FakeS3prl(tmp_path / "exp")
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: recorder(cmd, log_path))
    return recorder


def make_runner(root: Path, tasks: Sequence[str], er_folds: Sequence[str] = ("fold1",),
                fail_fast: bool = False) -> SuperbRunner:
    opts = RunOptions(upstream="lighthubert_local", tasks=list(tasks), data={t: {"root": "/data"} for t in tasks},
                      exp_root=root, ckpt=CKPT, device="cpu", gpus=0, er_folds=list(er_folds), fail_fast=fail_fast)
    return SuperbRunner(opts)


def unit_of(sr: SuperbRunner, name: str) -> Unit:
    return next(u for u in sr.units if u.name == name)


def train_args(root: Path, task: str, fold: Optional[str] = None) -> List[str]:
    expdir = root / task / fold if fold else root / task
    override = f'args.expdir="{expdir}"' + (f',,config.downstream_expert.datarc.test_fold="{fold}"' if fold else "")
    return ["-m", "train", "-u", "lighthubert_local", "-k", CKPT, "-d", DOWNSTREAM[task],
            "-c", str(root / "configs" / f"{task}.yaml"), "-p", str(expdir), "-a", "--device", "cpu", "-o", override]


def eval_args(ckpt: Path, split: str, outdir: Path) -> List[str]:
    return ["-m", "evaluate", "-e", str(ckpt), "-t", split, "--device", "cpu", "-o", f'args.expdir="{outdir}"']




def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# the on-disk states of a unit, as s3prl and an earlier runner left them


def state_interrupted(expdir: Path, task: str) -> None:
    expdir.mkdir(parents=True)
    (expdir / "states-2.ckpt").write_bytes(b"half")  # s3prl saved once, then the process died


def state_trained(expdir: Path, task: str) -> None:
    state_interrupted(expdir, task)
    (expdir / "states-4.ckpt").write_bytes(b"full")
    (expdir / BEST.get(task, "dev-best.ckpt")).write_bytes(b"best")
    (expdir / units.TRAIN_DONE_FILE).write_text(json.dumps({"params": 123}))


def state_tested_without_marker(expdir: Path, task: str) -> None:
    state_trained(expdir, task)
    (expdir / PREDICTION[task]).write_text("utt1 old\n")
    (expdir / units.RESULT_FILE).write_text(json.dumps({"value": 0.5, "prediction_file": PREDICTION[task]}))


def state_done(expdir: Path, task: str) -> None:
    state_tested_without_marker(expdir, task)
    (expdir / units.DONE_FILE).write_text("2026-01-01T00:00:00\n")


def state_done_marker_but_result_half_written(expdir: Path, task: str) -> None:
    state_done(expdir, task)
    (expdir / units.RESULT_FILE).write_text('{"value": 0.')


def state_done_marker_but_result_without_value(expdir: Path, task: str) -> None:
    state_done(expdir, task)
    (expdir / units.RESULT_FILE).write_text(json.dumps({"prediction_file": PREDICTION[task], "metric": "acc"}))


STATES = {
    "nothing": (None, ["train", "evaluate"], None),
    "interrupted": (state_interrupted, ["train", "evaluate"], "states-2.ckpt"),
    "trained": (state_trained, ["evaluate"], None),
    "tested_without_marker": (state_tested_without_marker, ["evaluate"], None),
    "done_marker_but_result_half_written": (state_done_marker_but_result_half_written, ["evaluate"], None),
    "done_marker_but_result_without_value": (state_done_marker_but_result_without_value, ["evaluate"], None),
    "done": (state_done, [], None),
}


@pytest.mark.parametrize("state", list(STATES))
def test_each_state_of_a_unit_leads_to_its_action(state, fake, tmp_path):
    root = fake.root
    expdir = root / "ks"
    prepare, modes, resumed = STATES[state]
    if prepare:
        prepare(expdir, "ks")
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))

    expected = {"train": Call("train", train_args(root, "ks"), resumed),
                "evaluate": Call("evaluate", eval_args(expdir / "dev-best.ckpt", "test", expdir))}
    assert fake.calls == [expected[m] for m in modes]
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    assert (expdir / units.DONE_FILE).is_file() and not (expdir / units.LOCK_FILE).exists()
    if state == "done":  # nothing launched, nothing rewritten
        assert outcome.status == "skipped" and result["value"] == 0.5
        return
    assert outcome.status == "done" and outcome.value == result["value"] == 0.75
    assert result["percent"] == pytest.approx(75.0) and result["ckpt"] == "dev-best.ckpt"
    pred = expdir / "test_predict.txt"
    assert pred.read_text() == "utt1 predicted by dev-best.ckpt\n"  # the new evaluation's, not a stale file
    assert result["prediction_sha256"] == sha256(pred)
    marker = json.loads((expdir / units.TRAIN_DONE_FILE).read_text())
    if "train" in modes:  # the parameter count comes from this training's output
        assert marker["params"] == result["params"] == PARAMS and marker["resumed_from"] == resumed
    else:  # training is not repeated: its marker (and parameter count) stays
        assert marker == {"params": 123} and result["params"] == 123


@pytest.mark.parametrize("task, fold", [("er", "fold2"), ("asr", None), ("pr", None), ("ic", None)])
def test_fresh_unit_trains_then_tests_its_own_checkpoint_split_and_file(task, fold, fake):
    root = fake.root
    sr = make_runner(root, [task], er_folds=["fold2"])
    name = f"{task}_{fold}" if fold else task
    expdir = root / task / fold if fold else root / task
    assert sr.run_unit(unit_of(sr, name)).status == "done"
    best = expdir / BEST.get(task, "dev-best.ckpt")
    assert fake.calls == [Call("train", train_args(root, task, fold)),
                          Call("evaluate", eval_args(best, SPLIT.get(task, "test"), expdir))]
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    pred = PREDICTION[task].format(fold=fold)
    assert result["prediction_file"] == pred and result["prediction_sha256"] == sha256(expdir / pred)
    # s3prl prints WER in percent, every other metric as a fraction
    assert result["percent"] == pytest.approx(0.75 if task == "asr" else 75.0)


def test_without_a_dev_best_checkpoint_the_newest_checkpoint_is_tested(fake):
    """s3prl saves dev-best only once the dev score improves: then the newest states-N is tested,
    found by step (states-10 is newer than states-4 although it sorts first by name)."""
    root = fake.root
    fake.total_steps, fake.save_step, fake.write_best = 10, 2, False
    expdir = root / "ks"
    expdir.mkdir(parents=True)
    (expdir / "states-4.ckpt").write_bytes(b"old")  # resumes after step 4: writes 6, 8, 10
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert fake.calls == [Call("train", train_args(root, "ks"), "states-4.ckpt"),
                          Call("evaluate", eval_args(expdir / "states-10.ckpt", "test", expdir))]
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    assert result["ckpt"] == "states-10.ckpt" and "no dev-best.ckpt" in result["note"]


def test_asv_sweeps_every_checkpoint_in_step_order_and_keeps_the_best(fake):
    root = fake.root
    fake.total_steps, fake.save_step = 10, 2
    fake.values = {"states-2.ckpt": 0.4, "states-4.ckpt": 0.2, "states-6.ckpt": 0.3, "states-8.ckpt": 0.2,
                   "states-10.ckpt": 0.25}
    expdir = root / "asv"
    sr = make_runner(root, ["asv"])
    assert sr.run_unit(unit_of(sr, "asv")).status == "done"
    steps = [2, 4, 6, 8, 10]
    assert fake.calls == [Call("train", train_args(root, "asv"))] + [
        Call("evaluate", eval_args(expdir / f"states-{s}.ckpt", "test", expdir / "sweep" / f"states-{s}"))
        for s in steps]
    # lowest EER 0.2 at steps 4 and 8: the later (longer trained) checkpoint wins the tie
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    assert (result["value"], result["ckpt"]) == (0.2, "states-8.ckpt")
    assert (expdir / "test_predict.txt").read_text() == "utt1 predicted by states-8.ckpt\n"
    sweep = json.loads((expdir / units.SWEEP_FILE).read_text())
    assert sweep["eer_by_step"] == {"2": 0.4, "4": 0.2, "6": 0.3, "8": 0.2, "10": 0.25}
    assert sweep["prediction_sha256"] == result["prediction_sha256"] == sha256(expdir / "test_predict.txt")

    # tested, done marker lost: every checkpoint's evaluation is still valid, so nothing is launched
    (expdir / units.DONE_FILE).unlink()
    fake.calls.clear()
    assert sr.run_unit(unit_of(sr, "asv")).status == "done" and fake.calls == []
    assert json.loads((expdir / units.RESULT_FILE).read_text())["ckpt"] == "states-8.ckpt"
    # ... unless a checkpoint changed since (a resumed run rewrote it): only that one is evaluated again
    (expdir / units.DONE_FILE).unlink()
    (expdir / "states-6.ckpt").write_bytes(b"rewritten by a longer run")
    fake.values["states-6.ckpt"] = 0.1
    assert sr.run_unit(unit_of(sr, "asv")).status == "done"
    assert fake.calls == [Call("evaluate", eval_args(expdir / "states-6.ckpt", "test", expdir / "sweep" / "states-6"))]
    assert json.loads((expdir / units.RESULT_FILE).read_text())["ckpt"] == "states-6.ckpt"


def test_failed_training_is_not_tested_and_is_retried(fake):
    root = fake.root
    expdir = root / "ks"
    fake.fail = {"train": 1}
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    assert outcome.status == "failed" and [c.mode for c in fake.calls] == ["train"]
    assert json.loads((expdir / units.FAILED_FILE).read_text())["stage"] == "train"
    for name in (units.TRAIN_DONE_FILE, units.RESULT_FILE, units.DONE_FILE, units.LOCK_FILE):
        assert not (expdir / name).exists(), name
    fake.fail, fake.calls = {}, []
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert fake.calls == [Call("train", train_args(root, "ks")),
                          Call("evaluate", eval_args(expdir / "dev-best.ckpt", "test", expdir))]
    assert not (expdir / units.FAILED_FILE).exists()


def test_failed_test_keeps_the_training_and_is_retested(fake):
    root = fake.root
    expdir = root / "ks"
    fake.fail = {"evaluate": 1}
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "failed"
    assert json.loads((expdir / units.FAILED_FILE).read_text())["stage"] == "test"
    assert (expdir / units.TRAIN_DONE_FILE).is_file() and not (expdir / units.DONE_FILE).exists()
    fake.fail, fake.calls = {}, []
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert fake.calls == [Call("evaluate", eval_args(expdir / "dev-best.ckpt", "test", expdir))]


def test_result_without_a_value_line_is_a_failure_not_a_number(fake, monkeypatch):
    root = fake.root
    sr = make_runner(root, ["ks"])
    monkeypatch.setitem(RESULT_LINE, "ks", "dev acc: {}")  # the test split's line never printed
    outcome = sr.run_unit(unit_of(sr, "ks"))
    assert outcome.status == "failed" and "no 'test acc:' line" in outcome.message
    assert not (root / "ks" / units.RESULT_FILE).exists() and not (root / "ks" / units.DONE_FILE).exists()


def test_unit_held_by_another_live_runner_is_left_alone(fake):
    root = fake.root
    expdir = root / "ks"
    expdir.mkdir(parents=True)
    lock = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}  # a live process, not us
    (expdir / units.LOCK_FILE).write_text(json.dumps(lock))
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "busy" and fake.calls == []
    assert json.loads((expdir / units.LOCK_FILE).read_text()) == lock
    # a lock left by a runner that died is taken over
    lock["pid"] = 2 ** 22 + 12345  # above Linux's pid_max: no such process
    (expdir / units.LOCK_FILE).write_text(json.dumps(lock))
    assert sr.run_unit(unit_of(sr, "ks")).status == "done" and [c.mode for c in fake.calls] == ["train", "evaluate"]


def test_whole_run_over_units_in_different_states(fake, monkeypatch):
    """One run over a root whose units are in different states: configs are rebuilt only for tasks with
    work left, and every unit gets the action of its own state."""
    root = fake.root
    built: List[List[str]] = []
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: built.append(list(tasks)))
    state_done(root / "ks", "ks")
    state_trained(root / "ic", "ic")
    state_interrupted(root / "er" / "fold2", "er")
    sr = make_runner(root, ["pr", "ks", "ic", "er", "asr"], er_folds=["fold1", "fold2"])
    outcomes = sr.run()
    assert built == [["pr", "ic", "er", "asr"]]
    assert [(o.unit, o.status) for o in outcomes] == [
        ("pr", "done"), ("ks", "skipped"), ("ic", "done"), ("er_fold1", "done"), ("er_fold2", "done"), ("asr", "done")]
    er1, er2 = root / "er" / "fold1", root / "er" / "fold2"
    assert fake.calls == [
        Call("train", train_args(root, "pr")),
        Call("evaluate", eval_args(root / "pr" / "dev-best.ckpt", "test", root / "pr")),
        Call("evaluate", eval_args(root / "ic" / "dev-best.ckpt", "test", root / "ic")),
        Call("train", train_args(root, "er", "fold1")), Call("evaluate", eval_args(er1 / "dev-best.ckpt", "test", er1)),
        Call("train", train_args(root, "er", "fold2"), "states-2.ckpt"),
        Call("evaluate", eval_args(er2 / "dev-best.ckpt", "test", er2)),
        Call("train", train_args(root, "asr")),
        Call("evaluate", eval_args(root / "asr" / "dev-clean-best.ckpt", "test-clean", root / "asr"))]
    summary = json.loads((root / report.SUMMARY_JSON).read_text())
    assert [(u["unit"], u["status"]) for u in summary["units"]] == [(o.unit, o.status) for o in outcomes]
    # a second run finds everything done: no config, no s3prl process
    fake.calls.clear()
    built.clear()
    again = make_runner(root, ["pr", "ks", "ic", "er", "asr"], er_folds=["fold1", "fold2"]).run()
    assert {o.status for o in again} == {"skipped"}
    assert fake.calls == [] and built == [[]]


# ----------------------------------------------------------------------------------------------------
# testing the dev-best checkpoint, in detail


def test_test_of_the_dev_best_checkpoint_returns_its_full_record(fake, caplog):
    """A trained unit is tested on its dev-best checkpoint: the record names the checkpoint, split,
    predictions and log of that test, carries no note, and the progress line says what is tested."""
    import logging

    root = fake.root
    expdir = root / "ks"
    state_trained(expdir, "ks")
    sr = make_runner(root, ["ks"])
    caplog.set_level(logging.INFO, logger="lighthubert_s3prl.superb.runner")
    result, message, log = sr.executor.test_best(unit_of(sr, "ks"))
    pred = expdir / "test_predict.txt"
    assert fake.calls == [Call("evaluate", eval_args(expdir / "dev-best.ckpt", "test", expdir))]
    assert (message, log) == ("", root / "logs" / "ks.test.log")
    assert result == {"value": 0.75, "split": "test", "ckpt": "dev-best.ckpt", "prediction_file": "test_predict.txt",
                      "prediction_sha256": sha256(pred), "test_log": str(root / "logs" / "ks.test.log"), "note": ""}
    assert [r.getMessage() for r in caplog.records] == ["ks: testing dev-best.ckpt on test"]


def test_test_without_dev_best_warns_which_checkpoint_it_falls_back_to(fake, caplog):
    import logging

    root = fake.root
    fake.write_best = False
    sr = make_runner(root, ["er"], er_folds=["fold3"])
    caplog.set_level(logging.INFO, logger="lighthubert_s3prl.superb.runner")
    assert sr.run_unit(unit_of(sr, "er_fold3")).status == "done"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "er/fold3: no dev-best.ckpt: the dev score never beat s3prl's initial best, so the last "
                       "checkpoint states-4.ckpt was tested") in lines
    assert ("INFO", "er/fold3: testing states-4.ckpt on test") in lines


def test_training_that_saved_no_checkpoint_fails_the_test_with_the_likely_cause(fake):
    root = fake.root
    expdir = root / "ks"
    fake.total_steps, fake.save_step, fake.write_best = 1, 2, False  # save_step > total_steps: nothing saved
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    reason = (f"neither dev-best.ckpt nor states-*.ckpt in {expdir}: training saved no checkpoint (is "
              "runner.save_step or eval_step larger than runner.total_steps?)")
    assert (outcome.status, outcome.message) == ("failed", f"test: {reason}")
    assert [c.mode for c in fake.calls] == ["train"]
    failed = json.loads((expdir / units.FAILED_FILE).read_text())
    assert (failed["stage"], failed["message"], failed["log"]) == ("test", reason, None)


def test_an_empty_prediction_file_fails_the_test(fake, monkeypatch):
    """An evaluation that prints a score but leaves its prediction file empty gives no result."""
    root = fake.root
    expdir = root / "ks"

    def evaluate_then_truncate(self, cmd, log_path):
        rc, text = fake(cmd, log_path)
        if fake.calls[-1].mode == "evaluate":
            (expdir / "test_predict.txt").write_bytes(b"")
        return rc, text

    monkeypatch.setattr(SuperbRunner, "_execute", evaluate_then_truncate)
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    assert (outcome.status, outcome.message) == (
        "failed", f"test: the evaluation wrote no predictions to {expdir / 'test_predict.txt'}")
    assert not (expdir / units.RESULT_FILE).exists() and not (expdir / units.DONE_FILE).exists()


def test_liveness_probe_leaves_the_process_running():
    """Checking a lock's pid must not signal the process: a runner would otherwise kill what it checks."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert units.pid_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.3)
    finally:
        child.kill()
        child.wait()
    assert not units.pid_alive(child.pid)


def test_a_pid_of_another_user_counts_as_alive(monkeypatch):
    """kill(pid, 0) refused for lack of permission means the process exists."""
    def refuse(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(units.os, "kill", refuse)
    assert units.pid_alive(4242) is True

    def gone(pid, sig):
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(units.os, "kill", gone)
    assert units.pid_alive(4242) is False


# ----------------------------------------------------------------------------------------------------
# what one unit's run records: outcome fields, result and marker files, lock, timings, progress lines
#
# Timings are pinned with a clock standing in for the executor's ``time``: every s3prl launch advances
# it by a fixed amount (training 12.34 s, evaluation 3.21 s), so the seconds recorded are known exactly.

RUNNER_LOGGER = "lighthubert_s3prl.superb.runner"
TRAIN_TICK, TEST_TICK = 12.34, 3.21


class Clock:
    """``time.monotonic`` of the executor, advanced only by the launches."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def ticking(fake: FakeS3prl, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the launches through ``fake`` with each one taking a fixed time on ``clock``."""
    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        args = cmd[cmd.index("lighthubert_s3prl.run_downstream") + 1:]
        clock.now += TRAIN_TICK if args[args.index("-m") + 1] == "train" else TEST_TICK
        return fake(cmd, log_path)

    monkeypatch.setattr(executor_module, "time", clock)
    monkeypatch.setattr(SuperbRunner, "_execute", execute)


def is_local_iso_time(text: str) -> bool:
    """A timestamp as the runner writes them: ISO 8601 to the second, with the UTC offset."""
    stamp = datetime.datetime.fromisoformat(text)
    return stamp.tzinfo is not None and stamp.microsecond == 0 and text == stamp.isoformat(timespec="seconds")


def log_lines(caplog: pytest.LogCaptureFixture, module_file: Optional[str] = None) -> List[Tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == RUNNER_LOGGER and (module_file is None or Path(r.pathname).name == module_file)]


def test_fresh_unit_records_every_field_of_its_result_marker_and_outcome(fake, monkeypatch, caplog):
    """A fresh ER fold trained then tested: result.json holds the test record plus the run's identity and
    timings; the training marker its own; the outcome mirrors the result; three progress lines."""
    root = fake.root
    clock = Clock()
    ticking(fake, clock, monkeypatch)
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    sr = make_runner(root, ["er"], er_folds=["fold2"])
    expdir = root / "er" / "fold2"
    train_log, test_log = root / "logs" / "er_fold2.train.log", root / "logs" / "er_fold2.test.log"
    outcome = sr.run_unit(unit_of(sr, "er_fold2"))

    pred = expdir / "test_fold2_predict.txt"
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    finished = result.pop("finished")
    assert is_local_iso_time(finished)
    assert result == {
        "value": 0.75, "split": "test", "ckpt": "dev-best.ckpt", "prediction_file": "test_fold2_predict.txt",
        "prediction_sha256": sha256(pred), "test_log": str(test_log), "note": "",
        "task": "er", "fold": "fold2", "metric": "acc", "higher_is_better": True, "percent": 75.0,
        "params": PARAMS, "upstream": "lighthubert_local", "ckpt_file": CKPT, "subnet": None, "scale": "full",
        "train_log": str(train_log), "train_seconds": 12.3, "test_seconds": 3.2}
    # rounded to a tenth of a second, kept as floats
    assert isinstance(result["train_seconds"], float) and isinstance(result["test_seconds"], float)

    marker = json.loads((expdir / units.TRAIN_DONE_FILE).read_text())
    assert is_local_iso_time(marker.pop("time"))
    assert marker == {"seconds": 12.3, "params": PARAMS, "log": str(train_log), "resumed_from": None}
    assert is_local_iso_time((expdir / units.DONE_FILE).read_text().rstrip("\n"))
    assert not (expdir / units.FAILED_FILE).exists() and not (expdir / units.LOCK_FILE).exists()

    got = asdict(outcome)
    assert got.pop("seconds") == pytest.approx(TRAIN_TICK + TEST_TICK)
    assert got == {"unit": "er_fold2", "task": "er", "fold": "fold2", "status": "done", "expdir": str(expdir),
                   "value": 0.75, "percent": 75.0, "metric": "acc", "message": "",
                   "logs": [str(train_log), str(test_log)], "result_file": str(expdir / units.RESULT_FILE),
                   "prediction_file": str(pred)}
    assert log_lines(caplog) == [("INFO", f"er/fold2: training (log: {train_log})"),
                                 ("INFO", "er/fold2: testing dev-best.ckpt on test"),
                                 ("INFO", "er/fold2: test acc = 0.7500")]


def test_resumed_training_records_the_checkpoint_it_continued_from(fake, monkeypatch, caplog):
    root = fake.root
    clock = Clock()
    ticking(fake, clock, monkeypatch)
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    expdir = root / "ks"
    state_interrupted(expdir, "ks")
    (expdir / "states-10.ckpt").write_bytes(b"newer")  # newer by step although it sorts first by name
    fake.total_steps = 12
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert fake.calls[0] == Call("train", train_args(root, "ks"), "states-10.ckpt")
    marker = json.loads((expdir / units.TRAIN_DONE_FILE).read_text())
    assert (marker["resumed_from"], marker["seconds"]) == ("states-10.ckpt", 12.3)
    assert log_lines(caplog)[0] == ("INFO", "ks: resuming training from states-10.ckpt")


def test_finished_unit_is_skipped_with_its_recorded_result(fake, caplog):
    """A done unit launches nothing; its outcome is built from the result on disk, took no time, and
    lists the recorded logs, training first."""
    root = fake.root
    expdir = root / "er" / "fold1"
    state_done(expdir, "er")
    recorded = {"value": 0.625, "percent": 62.5, "metric": "acc", "prediction_file": "test_fold1_predict.txt",
                "train_log": "/old/logs/er_fold1.train.log", "test_log": "/old/logs/er_fold1.test.log"}
    (expdir / units.RESULT_FILE).write_text(json.dumps(recorded))
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    sr = make_runner(root, ["er"])
    outcome = sr.run_unit(unit_of(sr, "er_fold1"))
    assert fake.calls == []
    assert asdict(outcome) == {
        "unit": "er_fold1", "task": "er", "fold": "fold1", "status": "skipped", "expdir": str(expdir),
        "value": 0.625, "percent": 62.5, "metric": "acc", "seconds": 0.0, "message": "finished earlier",
        "logs": ["/old/logs/er_fold1.train.log", "/old/logs/er_fold1.test.log"],
        "result_file": str(expdir / units.RESULT_FILE), "prediction_file": str(expdir / "test_fold1_predict.txt")}
    assert isinstance(outcome.seconds, float)
    assert log_lines(caplog) == [("INFO", "er/fold1: skipped, finished earlier (acc 0.625)")]
    assert json.loads((expdir / units.RESULT_FILE).read_text()) == recorded  # nothing rewritten


def test_unit_locked_from_another_host_is_busy_with_who_holds_it(fake, caplog):
    """Another machine's pid cannot be checked: its lock is respected, and the outcome says whose it is."""
    root = fake.root
    expdir = root / "er" / "fold1"
    expdir.mkdir(parents=True)
    lock = {"pid": 4242, "host": "node7-" + socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (expdir / units.LOCK_FILE).write_text(json.dumps(lock))
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    sr = make_runner(root, ["er"])
    outcome = sr.run_unit(unit_of(sr, "er_fold1"))
    msg = f"another runner (pid 4242 on node7-{socket.gethostname()}) is working on {expdir}"
    assert fake.calls == []
    assert asdict(outcome) == {
        "unit": "er_fold1", "task": "er", "fold": "fold1", "status": "busy", "expdir": str(expdir), "value": None,
        "percent": None, "metric": None, "seconds": 0.0, "message": msg, "logs": [], "result_file": None,
        "prediction_file": None}
    assert log_lines(caplog) == [("WARNING", f"er/fold1: {msg}; leaving it alone")]
    assert json.loads((expdir / units.LOCK_FILE).read_text()) == lock
    assert sorted(p.name for p in expdir.iterdir()) == [units.LOCK_FILE]


def test_a_lock_held_by_this_process_does_not_block_it(fake):
    """The lock names this very process (an earlier call in the same run): the unit is run, not busy."""
    root = fake.root
    expdir = root / "ks"
    expdir.mkdir(parents=True)
    (expdir / units.LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert [c.mode for c in fake.calls] == ["train", "evaluate"]
    assert not (expdir / units.LOCK_FILE).exists()


def test_the_lock_names_this_process_while_s3prl_runs(fake, monkeypatch):
    """Other runners read pid and host from the lock: it must hold them during every launch."""
    root = fake.root
    expdir = root / "ks"
    seen: List[dict] = []

    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        seen.append(json.loads((expdir / units.LOCK_FILE).read_text()))
        return fake(cmd, log_path)

    monkeypatch.setattr(SuperbRunner, "_execute", execute)
    sr = make_runner(root, ["ks"])
    assert sr.run_unit(unit_of(sr, "ks")).status == "done"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert sorted(seen[0]) == ["host", "pid", "started"]
    assert (seen[0]["pid"], seen[0]["host"]) == (os.getpid(), socket.gethostname())
    assert is_local_iso_time(seen[0]["started"])
    assert units.lock_owner(expdir) is None  # released afterwards


def test_a_lock_removed_during_the_run_does_not_fail_the_unit(fake, monkeypatch):
    """Someone clearing the lock by hand mid-run must not turn a finished unit into a crash."""
    root = fake.root
    expdir = root / "ks"

    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        (expdir / units.LOCK_FILE).unlink(missing_ok=True)  # by hand, during training
        return fake(cmd, log_path)

    monkeypatch.setattr(SuperbRunner, "_execute", execute)
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    assert outcome.status == "done" and (expdir / units.DONE_FILE).is_file()


def test_failed_training_records_stage_message_and_log(fake, monkeypatch, caplog):
    root = fake.root
    clock = Clock()
    ticking(fake, clock, monkeypatch)
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    fake.fail = {"train": 3}
    expdir = root / "ks"
    train_log = root / "logs" / "ks.train.log"
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    reason = "s3prl exited with code 3; last lines:\nTraceback: CUDA out of memory"
    failed = json.loads((expdir / units.FAILED_FILE).read_text())
    assert is_local_iso_time(failed.pop("time"))
    assert failed == {"stage": "train", "message": reason, "log": str(train_log)}
    got = asdict(outcome)
    assert got.pop("seconds") == pytest.approx(TRAIN_TICK)
    assert got == {"unit": "ks", "task": "ks", "fold": None, "status": "failed", "expdir": str(expdir),
                   "value": None, "percent": None, "metric": None, "message": f"train: {reason}",
                   "logs": [str(train_log)], "result_file": None, "prediction_file": None}
    assert log_lines(caplog)[-1] == ("ERROR", f"ks: train failed: {reason} (log: {train_log})")
    assert not (expdir / units.LOCK_FILE).exists()


def test_failed_test_records_the_test_log(fake, monkeypatch):
    root = fake.root
    clock = Clock()
    ticking(fake, clock, monkeypatch)
    fake.fail = {"evaluate": 2}
    expdir = root / "ks"
    test_log = root / "logs" / "ks.test.log"
    state_trained(expdir, "ks")
    sr = make_runner(root, ["ks"])
    outcome = sr.run_unit(unit_of(sr, "ks"))
    reason = "s3prl exited with code 2; last lines:\nnoise before\ntest acc: 0.75"
    failed = json.loads((expdir / units.FAILED_FILE).read_text())
    assert (failed["stage"], failed["message"], failed["log"]) == ("test", reason, str(test_log))
    assert (outcome.status, outcome.message, outcome.logs) == ("failed", f"test: {reason}", [str(test_log)])
    assert outcome.seconds == pytest.approx(TEST_TICK)


# ----------------------------------------------------------------------------------------------------
# the training step on its own


def test_training_found_finished_is_not_repeated(fake):
    root = fake.root
    state_trained(root / "ks", "ks")  # its marker records 123 parameters
    sr = make_runner(root, ["ks"])
    assert sr.executor.train(unit_of(sr, "ks")) == (True, "trained earlier", 123, 0.0)
    assert fake.calls == []


def test_training_reports_the_parameter_count_and_its_time(fake, monkeypatch):
    root = fake.root
    ticking(fake, Clock(), monkeypatch)
    sr = make_runner(root, ["ks"])
    ok, message, params, seconds = sr.executor.train(unit_of(sr, "ks"))
    assert (ok, message, params) == (True, "trained", PARAMS)
    assert seconds == pytest.approx(TRAIN_TICK)
    assert fake.calls == [Call("train", train_args(root, "ks"))]


def test_parameter_count_is_read_back_from_the_log_when_the_output_lacks_it(fake, monkeypatch):
    """When the captured output holds no parameter line, the log (which may hold bytes that are not UTF-8,
    e.g. from a progress bar cut mid-character) is searched; its last count wins."""
    root = fake.root
    log = root / "logs" / "ks.train.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"\xff\xfe partial progress bar\n[Expert] - LightHuBERT small subnet (1,234 parameters)\n")

    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        rc, _ = fake(cmd, log_path)  # appends this run's output, parameter line included, to the log
        return rc, "output not captured\n"

    monkeypatch.setattr(SuperbRunner, "_execute", execute)
    sr = make_runner(root, ["ks"])
    assert sr.executor.train(unit_of(sr, "ks"))[:3] == (True, "trained", PARAMS)
    assert json.loads((root / "ks" / units.TRAIN_DONE_FILE).read_text())["params"] == PARAMS


def test_no_parameter_line_anywhere_records_no_count(fake, monkeypatch):
    root = fake.root

    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("training without an [Expert] line\n")
        return 0, "training without an [Expert] line\n"

    monkeypatch.setattr(SuperbRunner, "_execute", execute)
    sr = make_runner(root, ["ks"])
    assert sr.executor.train(unit_of(sr, "ks"))[:3] == (True, "trained", None)
    assert json.loads((root / "ks" / units.TRAIN_DONE_FILE).read_text())["params"] is None


# ----------------------------------------------------------------------------------------------------
# the whole run over several units: order, failures, --fail-fast, summary


def failing_unit(fake: FakeS3prl, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every launch of unit ``name`` exits with code 1 (after doing its work); the others succeed."""
    def execute(self: SuperbRunner, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        rc, text = fake(cmd, log_path)
        return (1, text) if log_path.name.startswith(f"{name}.") else (rc, text)

    monkeypatch.setattr(SuperbRunner, "_execute", execute)
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_run_goes_through_units_in_order_and_handles_a_failure(fail_fast, fake, monkeypatch, caplog):
    """Without --fail-fast a failed unit does not stop the batch; with it the run stops right after the
    first failure. Either way the summary lists exactly the units that ran, in order."""
    root = fake.root
    failing_unit(fake, "ic", monkeypatch)
    caplog.set_level(logging.INFO, logger=RUNNER_LOGGER)
    runner = make_runner(root, ["pr", "ic", "ks"], fail_fast=fail_fast)
    outcomes = runner.run()
    ran = ["pr", "ic"] if fail_fast else ["pr", "ic", "ks"]
    assert [(o.unit, o.status) for o in outcomes] == [
        ("pr", "done"), ("ic", "failed"), ("ks", "done")][:len(ran)]
    expected_calls = [Call("train", train_args(root, "pr")),
                      Call("evaluate", eval_args(root / "pr" / "dev-best.ckpt", "test", root / "pr")),
                      Call("train", train_args(root, "ic"))]
    if not fail_fast:
        expected_calls += [Call("train", train_args(root, "ks")),
                           Call("evaluate", eval_args(root / "ks" / "dev-best.ckpt", "test", root / "ks"))]
    assert fake.calls == expected_calls
    summary = json.loads((root / report.SUMMARY_JSON).read_text())
    assert [(u["unit"], u["status"]) for u in summary["units"]] == [(o.unit, o.status) for o in outcomes]
    # the thread choice first (CPU runs), then the units
    progress = [("INFO", f"threads: {runner.launcher.threads.reason}")]
    progress += [("INFO", f"[{i}/3] {name}") for i, name in enumerate(ran, 1)]
    if fail_fast:
        progress.append(("ERROR", "stopping after the first failure (--fail-fast)"))
    assert log_lines(caplog, "runner.py") == progress


def test_fail_fast_run_without_failures_runs_every_unit(fake, monkeypatch):
    root = fake.root
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)
    outcomes = make_runner(root, ["pr", "ks"], fail_fast=True).run()
    assert [(o.unit, o.status) for o in outcomes] == [("pr", "done"), ("ks", "done")]
    assert [c.mode for c in fake.calls] == ["train", "evaluate", "train", "evaluate"]


def test_run_creates_a_root_whose_parents_do_not_exist_yet(tmp_path, monkeypatch):
    root = tmp_path / "exp" / "superb" / "lighthubert_local-tiny"
    recorder = FakeS3prl(root)
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: recorder(cmd, log_path))
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)
    outcomes = make_runner(root, ["ks"]).run()
    assert [(o.unit, o.status) for o in outcomes] == [("ks", "done")]
    assert json.loads((root / units.MANIFEST_NAME).read_text())["upstream"] == "lighthubert_local"
    assert (root / report.SUMMARY_JSON).is_file()


# ----------------------------------------------------------------------------------------------------
# the state readers: unit_is_done, outcome_from_result, pid_alive


@pytest.mark.parametrize("marker, result, done", [
    (True, {"value": 0.5, "metric": "acc"}, True),
    (True, {"value": 0.0}, True),  # a score of zero is a score
    (True, {"metric": "acc", "percent": 50.0}, False),  # no value: not a result
    (True, [0.5], False),
    (True, None, False),
    (False, {"value": 0.5}, False),  # the marker is written last: without it the result may be stale
])
def test_a_unit_is_done_only_with_its_marker_and_a_result_holding_a_value(marker, result, done, tmp_path):
    unit = Unit("ks", None, tmp_path / "ks")
    unit.expdir.mkdir()
    if marker:
        (unit.expdir / units.DONE_FILE).write_text("2026-01-01T00:00:00+00:00\n")
    if result is not None:
        (unit.expdir / units.RESULT_FILE).write_text(json.dumps(result))
    assert units.unit_is_done(unit) == (result if done else None)


def test_outcome_from_a_full_result(tmp_path):
    unit = Unit("er", "fold4", tmp_path / "er" / "fold4")
    result = {"value": 0.6, "percent": 60.0, "metric": "acc", "prediction_file": "test_fold4_predict.txt",
              "train_log": "/l/er_fold4.train.log", "test_log": "/l/er_fold4.test.log", "split": "test"}
    got = units.outcome_from_result(unit, result, "done", 7.5, "a message")
    assert asdict(got) == {
        "unit": "er_fold4", "task": "er", "fold": "fold4", "status": "done", "expdir": str(unit.expdir),
        "value": 0.6, "percent": 60.0, "metric": "acc", "seconds": 7.5, "message": "a message",
        "logs": ["/l/er_fold4.train.log", "/l/er_fold4.test.log"],
        "result_file": str(tmp_path / "er" / "fold4" / units.RESULT_FILE),
        "prediction_file": str(tmp_path / "er" / "fold4" / "test_fold4_predict.txt")}


@pytest.mark.parametrize("extra, logs", [
    ({"test_log": "/l/t.log"}, ["/l/t.log"]),
    ({"train_log": "/l/a.log"}, ["/l/a.log"]),
    ({"train_log": "", "test_log": None}, []),
    ({}, []),
])
def test_outcome_from_a_sparse_result_lists_only_the_logs_it_has(extra, logs, tmp_path):
    """Results of older runs may lack logs or predictions: the outcome leaves those out, nothing invented."""
    unit = Unit("ks", None, tmp_path / "ks")
    got = units.outcome_from_result(unit, {"value": 0.9, "prediction_file": "", **extra}, "skipped", 0.0, "")
    assert (got.logs, got.prediction_file, got.percent, got.metric) == (logs, None, None, None)
    assert (got.unit, got.task, got.fold, got.expdir) == ("ks", "ks", None, str(tmp_path / "ks"))


def test_liveness_probe_of_a_live_process_sends_it_no_signal():
    """pid_alive on a process that would die of SIGHUP: it is alive before and after the probe."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(3):
            assert units.pid_alive(child.pid) is True
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert units.pid_alive(child.pid) is False


def test_liveness_probe_uses_signal_zero(monkeypatch):
    sent: List[Tuple[int, int]] = []
    monkeypatch.setattr(units.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert units.pid_alive(4242) is True
    assert sent == [(4242, 0)]
