"""collect on hand-built experiment folders: the exact result of every on-disk state of a unit.

Pinned here: the full ``TaskResult`` (task, status, percent, detail, source, params, folds) that
``unit_result`` returns for each state a unit folder can be in; which expdir ``_best_of`` prefers among
several; how ``merge_er`` averages and labels five ER folds; how an ER fold is read from a config or a
folder name; how deep and where ``discover_expdirs`` looks; which ``args_*``/``config_*`` yaml is read;
and how ``collect_model`` names a row and finds its parameter count.

Every folder is written by the test itself (runner files as ``units`` names them, s3prl's args/config
yaml, ``states-<step>.ckpt`` and ``log.log``), and every expected value is written out by hand from
those files: percent = fraction x 100 (ASR's WER is already in percent), means are summed here.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Dict, Optional

import pytest
import yaml

from lighthubert_s3prl.superb import collect, reference, units
from lighthubert_s3prl.superb.collect import ModelRow, TaskResult
from tests.test_collect_package import _s3prl_files

FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")
LOGGER = "lighthubert_s3prl.superb.collect"


def _json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _yaml(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def runner_done(expdir: Path, result: dict, marker: bool = True) -> Path:
    """The runner's result file (and, unless ``marker`` is False, its done marker)."""
    _json(expdir / units.RESULT_FILE, result)
    if marker:
        (expdir / units.DONE_FILE).write_text("done\n")
    return expdir


def manifest(root: Path, **fields: object) -> None:
    _json(root / units.MANIFEST_NAME, fields)


# ----------------------------------------------------------------------------------------------------
# unit_result: one state at a time


def test_missing_folder(tmp_path):
    where = tmp_path / "ks"
    assert collect.unit_result("ks", where) == TaskResult("ks", "missing", detail=f"no {where}")
    assert collect.unit_result("er", where, "fold2") == TaskResult("er", "missing", detail=f"no {where}")


def test_done_takes_the_recorded_percent_split_checkpoint_and_params(tmp_path):
    # the recorded percent is used as written, even where it is not value x 100
    expdir = runner_done(tmp_path / "ks", {"value": 0.5, "percent": 49.5, "split": "test", "ckpt": "dev-best.ckpt",
                                           "params": 2_520_064})
    assert collect.unit_result("ks", expdir) == TaskResult(
        "ks", "done", 49.5, "test on dev-best.ckpt", str(expdir / units.RESULT_FILE), params=2_520_064)


def test_done_without_percent_converts_the_value(tmp_path):
    ks = runner_done(tmp_path / "ks", {"value": 0.375})  # a fraction: 37.5 %; no split/ckpt recorded
    assert collect.unit_result("ks", ks) == TaskResult("ks", "done", 37.5, "test on ?", str(ks / units.RESULT_FILE))
    asr = runner_done(tmp_path / "asr", {"value": 12.5, "split": "test-clean", "ckpt": "dev-clean-best.ckpt"})
    assert collect.unit_result("asr", asr) == TaskResult(  # s3prl prints WER in percent already
        "asr", "done", 12.5, "test-clean on dev-clean-best.ckpt", str(asr / units.RESULT_FILE))


def test_done_asv_names_the_checkpoint_sweep(tmp_path):
    asv = runner_done(tmp_path / "asv", {"value": 0.0525, "percent": 5.25, "split": "test", "ckpt": "states-20.ckpt",
                                         "note": "no dev-best checkpoint"})
    _json(asv / units.SWEEP_FILE, {"best_ckpt": "states-20.ckpt", "eer_by_step": {"10": 0.06, "20": 0.0525,
                                                                                   "30": 0.07}})
    # the sweep explains the checkpoint choice, so the note's text is not added as well
    assert collect.unit_result("asv", asv) == TaskResult(
        "asv", "done", 5.25, "test on states-20.ckpt, the best EER of 3 checkpoints", str(asv / units.RESULT_FILE))


def test_done_asv_with_an_empty_sweep_falls_back_to_the_note(tmp_path):
    asv = runner_done(tmp_path / "asv", {"value": 0.06, "percent": 6.0, "ckpt": "states-30.ckpt", "note": "x"})
    _json(asv / units.SWEEP_FILE, {"eer_by_step": {}})
    assert collect.unit_result("asv", asv) == TaskResult(
        "asv", "done", 6.0, "test on states-30.ckpt (no dev-best checkpoint was saved)", str(asv / units.RESULT_FILE))


def test_done_with_a_note_and_no_sweep_meaning_for_other_tasks(tmp_path):
    ks = runner_done(tmp_path / "ks", {"value": 0.8, "percent": 80.0, "split": "test", "ckpt": "states-40.ckpt",
                                       "note": "no dev-best checkpoint was saved; tested the newest",
                                       "params": 1_000})
    # a sweep file only means something for ASV
    _json(ks / units.SWEEP_FILE, {"eer_by_step": {"10": 0.1, "20": 0.2}})
    assert collect.unit_result("ks", ks) == TaskResult(
        "ks", "done", 80.0, "test on states-40.ckpt (no dev-best checkpoint was saved)", str(ks / units.RESULT_FILE),
        params=1_000)


def test_result_without_done_marker_is_not_a_number(tmp_path):
    # a crash between writing the result and the marker: trained, the number not confirmed
    ks = runner_done(tmp_path / "ks", {"value": 0.5, "percent": 50.0}, marker=False)
    (ks / units.TRAIN_DONE_FILE).write_text("{}")
    assert collect.unit_result("ks", ks) == TaskResult("ks", "untested", detail="trained, no test result")
    # a marker beside a result that holds no value is no result either
    ic = runner_done(tmp_path / "ic", {"percent": 50.0})
    (ic / units.TRAIN_DONE_FILE).write_text("{}")
    assert collect.unit_result("ic", ic) == TaskResult("ic", "untested", detail="trained, no test result")


def test_running_on_a_lock_of_a_live_runner(tmp_path):
    ks = tmp_path / "ks"
    _json(ks / units.LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
    (ks / units.TRAIN_DONE_FILE).write_text("{}")  # the lock outranks what the folder holds so far
    assert collect.unit_result("ks", ks) == TaskResult("ks", "running",
                                                       detail=f"pid {os.getpid()} on {socket.gethostname()}")
    # another machine's pid cannot be checked: taken as alive
    ic = tmp_path / "ic"
    _json(ic / units.LOCK_FILE, {"pid": 4242, "host": "gpu-node-7.invalid"})
    assert collect.unit_result("ic", ic) == TaskResult("ic", "running", detail="pid 4242 on gpu-node-7.invalid")


def test_a_finished_unit_is_done_even_while_locked(tmp_path):
    ks = runner_done(tmp_path / "ks", {"value": 0.25})
    _json(ks / units.LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
    assert collect.unit_result("ks", ks) == TaskResult("ks", "done", 25.0, "test on ?", str(ks / units.RESULT_FILE))


def test_failed_shows_stage_first_message_line_and_log(tmp_path):
    ks = tmp_path / "ks"
    _json(ks / units.FAILED_FILE, {"stage": "test", "message": "s3prl exited with code 1\nTraceback (most recent)",
                                   "log": "/runs/ks/test.log"})
    assert collect.unit_result("ks", ks) == TaskResult("ks", "failed", detail="test: s3prl exited with code 1",
                                                       source="/runs/ks/test.log")
    bare = tmp_path / "ic"
    _json(bare / units.FAILED_FILE, {"stage": "train"})
    assert collect.unit_result("ic", bare) == TaskResult("ic", "failed", detail="train: ", source="")
    empty = tmp_path / "pr"
    _json(empty / units.FAILED_FILE, {"stage": "train", "message": "", "log": None})
    assert collect.unit_result("pr", empty) == TaskResult("pr", "failed", detail="train: ", source="")


def test_plain_s3prl_evaluate_log_asr_is_already_percent(tmp_path):
    asr = tmp_path / "asr_eval"
    _s3prl_files(asr, "asr")
    log = asr / "log.log"
    log.write_text("test at step 0: 12.5\n")
    assert collect.unit_result("asr", asr) == TaskResult("asr", "done", 12.5, "s3prl -m evaluate", str(log))
    ks = tmp_path / "ks_eval"
    _s3prl_files(ks, "ks")
    (ks / "log.log").write_text("test at step 0: 0.875\n")
    assert collect.unit_result("ks", ks) == TaskResult("ks", "done", 87.5, "s3prl -m evaluate", str(ks / "log.log"))


def test_plain_s3prl_dev_best_log_asr_is_already_percent(tmp_path):
    asr = tmp_path / "asr_run"
    _s3prl_files(asr, "asr", total=20, save=10, steps=(10, 20))
    log = asr / "log.log"
    log.write_text("dev at step 10: 20.0\nNew best on dev at step 10: 20.0\ntest at step 10: 15.25\n"
                   "dev at step 20: 21.0\ntest at step 20: 14.0\n")
    assert collect.unit_result("asr", asr) == TaskResult("asr", "done", 15.25, "test at dev-best step 10", str(log))


def test_trained_but_untested(tmp_path):
    marked = tmp_path / "ks"  # the runner's training marker
    marked.mkdir()
    (marked / units.TRAIN_DONE_FILE).write_text("{}")
    assert collect.unit_result("ks", marked) == TaskResult("ks", "untested", detail="trained, no test result")
    plain = tmp_path / "ic_run"  # s3prl's own files: the newest checkpoint is at total_steps
    _s3prl_files(plain, "ic", total=20, save=10, steps=(10, 20))
    assert collect.unit_result("ic", plain) == TaskResult("ic", "untested", detail="trained, no test result")


def test_config_without_total_steps_counts_any_checkpoint_as_the_end(tmp_path):
    expdir = tmp_path / "ks_run"
    _s3prl_files(expdir, "ks", steps=(0,))
    _yaml(expdir / "config_2026-01-01-00-00-00.yaml", {"runner": {}})  # total_steps 0, save_step 1
    assert collect.unit_result("ks", expdir) == TaskResult("ks", "untested", detail="trained, no test result")


def test_unfinished_training_without_runner_manifest_may_still_be_running(tmp_path):
    plain = tmp_path / "plain" / "ks_run"
    _s3prl_files(plain, "ks", total=20, save=5, steps=(5, 10))
    assert collect.unit_result("ks", plain) == TaskResult(
        "ks", "running", detail="training not finished (last checkpoint step 10)")
    empty = tmp_path / "plain" / "ic_run"
    empty.mkdir()
    assert collect.unit_result("ic", empty) == TaskResult("ic", "running", detail="training not finished")


def test_unfinished_runner_made_folder_without_lock_was_stopped(tmp_path):
    root = tmp_path / "exp"
    manifest(root, upstream="lighthubert_local")
    ks = root / "ks"  # manifest one level up
    _s3prl_files(ks, "ks", total=20, save=5, steps=(5,))
    assert collect.unit_result("ks", ks) == TaskResult("ks", "stopped",
                                                       detail="training not finished (last checkpoint step 5)")
    fold = root / "er" / "fold3"  # manifest two levels up
    fold.mkdir(parents=True)
    assert collect.unit_result("er", fold, "fold3") == TaskResult("er", "stopped", detail="training not finished")
    # no manifest, but a half-written failure record shows the runner was here
    elsewhere = tmp_path / "other" / "pr"
    elsewhere.mkdir(parents=True)
    (elsewhere / units.FAILED_FILE).write_text('{"stage": "tr')
    assert collect.unit_result("pr", elsewhere) == TaskResult("pr", "stopped", detail="training not finished")


# ----------------------------------------------------------------------------------------------------
# _best_of: several expdirs for one unit


@pytest.fixture
def six_states(tmp_path) -> Dict[str, Path]:
    """One expdir per status, under a runner root (so an unfinished one without a lock is 'stopped')."""
    base = tmp_path / "exp"
    manifest(base, upstream="lighthubert_local")
    dirs = {s: base / f"{i}_{s}" for i, s in enumerate(["done", "running", "untested", "stopped", "failed",
                                                         "missing"])}
    runner_done(dirs["done"], {"value": 0.5, "percent": 50.0, "ckpt": "dev-best.ckpt"})
    _json(dirs["running"] / units.LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
    dirs["untested"].mkdir()
    (dirs["untested"] / units.TRAIN_DONE_FILE).write_text("{}")
    dirs["stopped"].mkdir()
    (dirs["stopped"] / "states-5.ckpt").write_bytes(b"x")
    _json(dirs["failed"] / units.FAILED_FILE, {"stage": "train", "message": "boom"})
    return dirs


def test_best_of_prefers_done_running_untested_stopped_failed_missing(six_states):
    preference = ["done", "running", "untested", "stopped", "failed", "missing"]
    # given worst first, so that keeping the given order would pick the wrong one
    candidates = [six_states[s] for s in reversed(preference)]
    chosen = []
    while candidates:
        chosen.append(collect._best_of("ks", candidates, None).status)
        candidates = [d for d in candidates if d != six_states[chosen[-1]]]
    assert chosen == preference
    done = six_states["done"]
    assert collect._best_of("ks", [six_states["failed"], done], None) == TaskResult(
        "ks", "done", 50.0, "test on dev-best.ckpt", str(done / units.RESULT_FILE))


def test_best_of_keeps_the_first_of_equals(tmp_path):
    a = runner_done(tmp_path / "a", {"value": 0.25})
    b = runner_done(tmp_path / "b", {"value": 0.75})
    assert collect._best_of("ks", [b, a], None).percent == 75.0
    assert collect._best_of("ks", [a, b], None).percent == 25.0


def test_best_of_warns_how_many_expdirs_it_chose_from(six_states, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    collect._best_of("er", [six_states["failed"], six_states["untested"]], "fold2")
    collect._best_of("ks", [six_states["missing"], six_states["stopped"], six_states["done"]], None)
    collect._best_of("ic", [six_states["done"]], None)  # one candidate: nothing to say
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages == ["er/fold2: 2 expdirs found, using the one that is untested",
                        "ks: 3 expdirs found, using the one that is done"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)


# ----------------------------------------------------------------------------------------------------
# merge_er


def _fold(percent: Optional[float], status: str = "done", params: Optional[int] = None) -> TaskResult:
    return TaskResult("er", status, percent, "test on dev-best.ckpt" if status == "done" else "", params=params)


def test_merge_er_five_folds_is_their_mean():
    folds = {"fold1": _fold(61.25), "fold2": _fold(70.0, params=2_520_064), "fold3": _fold(55.5),
             "fold4": _fold(64.75, params=9), "fold5": _fold(68.5)}
    # 61.25 + 70 + 55.5 + 64.75 + 68.5 = 320, / 5 = 64 (all exact in binary); params: the first fold that has any
    assert collect.merge_er(folds) == TaskResult("er", "done", 64.0, "mean of 5 folds", "", params=2_520_064,
                                                 folds=folds)


def test_merge_er_without_params_has_none():
    folds = {f: _fold(50.0) for f in FOLDS}
    assert collect.merge_er(folds) == TaskResult("er", "done", 50.0, "mean of 5 folds", "", params=None, folds=folds)


def test_merge_er_no_fold_run_is_missing():
    folds = {f: TaskResult("er", "missing") for f in FOLDS}
    assert collect.merge_er(folds) == TaskResult("er", "missing", detail="no fold run", folds=folds)


def test_merge_er_some_folds_is_partial_with_the_other_statuses():
    folds = {"fold1": _fold(60.0), "fold2": _fold(None, "running"), "fold3": TaskResult("er", "missing"),
             "fold4": _fold(None, "failed"), "fold5": _fold(70.0)}
    merged = collect.merge_er(folds)
    assert merged == TaskResult("er", "partial", detail="2/5 folds (failed, running)", folds=folds)
    assert merged.display == "2/5 folds (failed, running)"
    only_missing = {f: (_fold(60.0) if f in ("fold1", "fold2", "fold5") else TaskResult("er", "missing"))
                    for f in FOLDS}
    assert collect.merge_er(only_missing) == TaskResult("er", "partial", detail="3/5 folds", folds=only_missing)


def test_merge_er_a_fold_done_without_a_number_does_not_count():
    folds = {f: _fold(50.0) for f in FOLDS}
    folds["fold4"] = TaskResult("er", "done")
    assert collect.merge_er(folds) == TaskResult("er", "partial", detail="4/5 folds (done)", folds=folds)


# ----------------------------------------------------------------------------------------------------
# ModelRow.values, reference_row


def test_values_holds_only_done_tasks_with_a_number():
    row = ModelRow("m", "ours", None, {"ks": TaskResult("ks", "done", 50.0), "ic": TaskResult("ic", "done"),
                                       "pr": TaskResult("pr", "failed", 12.0), "sid": TaskResult("sid", "running")})
    assert row.values() == {"ks": 50.0}


def test_reference_row_takes_our_tasks_with_the_published_source():
    ref = reference.ReferenceModel("toy", "Toy Model", 12.5, {"pr": 6.6, "ks": 96, "asv": 5.42, "sd": 5.5},
                                   880.0, "Toy et al. (2030), Table 2")
    row = collect.reference_row(ref)
    assert row == ModelRow("Toy Model", "reference", 12.5, {
        "pr": TaskResult("pr", "done", 6.6, source="Toy et al. (2030), Table 2"),
        "ks": TaskResult("ks", "done", 96.0, source="Toy et al. (2030), Table 2"),
        "asv": TaskResult("asv", "done", 5.42, source="Toy et al. (2030), Table 2"),
        "sd": TaskResult("sd", "done", 5.5, source="Toy et al. (2030), Table 2")},
        leaderboard_score=880.0, source="Toy et al. (2030), Table 2")
    assert list(row.tasks) == ["pr", "ks", "asv", "sd"]


def test_reference_row_splits_sf_into_f1_and_cer():
    ref = reference.REFERENCES["lighthubert_small"]
    row = collect.reference_row(ref)
    assert list(row.tasks) == list(reference.ALL_TASKS)
    sf = row.tasks["sf"]
    assert (sf.percent, sf.second, sf.display, sf.value) == (87.58, 26.90, "87.58 / 26.90", (87.58, 26.90))
    assert row.tasks["qbe"].display == "0.0764"  # MTWV, not a percentage
    # the row's ten values give the published leaderboard score back (901 for LightHuBERT Small)
    assert round(reference.superb_score(row.values()).value) == ref.leaderboard_score == 901


# ----------------------------------------------------------------------------------------------------
# _latest_yaml, _train_config


def test_latest_yaml_is_the_last_by_name_with_an_optional_mode(tmp_path):
    old = _yaml(tmp_path / "args_2026-01-05-10-00-00.yaml", {"mode": "train", "downstream": "speech_commands"})
    _yaml(tmp_path / "args_2026-02-01-09-00-00.yaml", {"mode": "evaluate", "downstream": "speech_commands"})
    _yaml(tmp_path / "config_2026-03-01-00-00-00.yaml", {"mode": "train", "runner": {}})
    os.utime(old, (4_000_000_000, 4_000_000_000))  # modification times do not count, names do
    assert collect._latest_yaml(tmp_path, "args") == {"mode": "evaluate", "downstream": "speech_commands"}
    assert collect._latest_yaml(tmp_path, "args", mode="train") == {"mode": "train", "downstream": "speech_commands"}
    assert collect._latest_yaml(tmp_path, "args", mode="evaluate") == {"mode": "evaluate",
                                                                        "downstream": "speech_commands"}
    assert collect._latest_yaml(tmp_path, "args", mode="inference") is None
    assert collect._latest_yaml(tmp_path, "config") == {"mode": "train", "runner": {}}
    assert collect._latest_yaml(tmp_path / "nothing", "args") is None


def test_latest_yaml_skips_unreadable_and_non_mapping_files(tmp_path):
    _yaml(tmp_path / "args_2026-01-01-00-00-00.yaml", {"mode": "train", "downstream": "emotion"})
    (tmp_path / "args_2026-01-02-00-00-00.yaml").write_text("- a list\n- not a mapping\n")
    (tmp_path / "args_2026-01-03-00-00-00.yaml").write_text("mode: [train\n")  # half-written
    assert collect._latest_yaml(tmp_path, "args") == {"mode": "train", "downstream": "emotion"}
    assert collect._latest_yaml(tmp_path, "args", mode="train") == {"mode": "train", "downstream": "emotion"}


def test_train_config_is_the_one_beside_the_newest_training_args(tmp_path):
    _yaml(tmp_path / "args_2026-01-01-00-00-00.yaml", {"mode": "train"})
    _yaml(tmp_path / "config_2026-01-01-00-00-00.yaml", {"runner": {"total_steps": 10}})
    _yaml(tmp_path / "args_2026-02-01-00-00-00.yaml", {"mode": "train"})
    _yaml(tmp_path / "config_2026-02-01-00-00-00.yaml", {"runner": {"total_steps": 20}})
    _yaml(tmp_path / "args_2026-03-01-00-00-00.yaml", {"mode": "evaluate"})  # a later test run
    _yaml(tmp_path / "config_2026-03-01-00-00-00.yaml", {"runner": {"total_steps": 30}})
    (tmp_path / "args_2026-04-01-00-00-00.yaml").write_text("mode: [tr\n")  # unreadable: skipped
    assert collect._train_config(tmp_path) == {"runner": {"total_steps": 20}}


def test_train_config_missing_beside_its_args_is_none(tmp_path):
    _yaml(tmp_path / "args_2026-01-01-00-00-00.yaml", {"mode": "train"})
    _yaml(tmp_path / "config_2026-01-01-00-00-00.yaml", {"runner": {"total_steps": 10}})
    _yaml(tmp_path / "args_2026-02-01-00-00-00.yaml", {"mode": "train"})  # its config was never written
    assert collect._train_config(tmp_path) is None
    assert collect._train_config(tmp_path / "absent") is None


def test_train_config_swaps_only_the_file_name_prefix(tmp_path):
    _yaml(tmp_path / "args_run_args_1.yaml", {"mode": "train"})
    _yaml(tmp_path / "config_run_args_1.yaml", {"runner": {"total_steps": 7}})
    assert collect._train_config(tmp_path) == {"runner": {"total_steps": 7}}


# ----------------------------------------------------------------------------------------------------
# _fold_of, discover_expdirs


def _er_expdir(expdir: Path, config: Optional[dict]) -> Path:
    _yaml(expdir / "args_2026-01-01-00-00-00.yaml", {"mode": "train", "downstream": "emotion"})
    if config is not None:
        _yaml(expdir / "config_2026-01-01-00-00-00.yaml", config)
    return expdir


@pytest.mark.parametrize("name, config, fold", [
    ("emotion_fold5", {"downstream_expert": {"datarc": {"test_fold": "fold2"}}}, "fold2"),  # config wins
    ("er_fold4", {"downstream_expert": {"datarc": {"test_fold": "fold7"}}}, "fold4"),  # not an IEMOCAP fold
    ("fold3", {"runner": {"total_steps": 10}}, "fold3"),  # no downstream_expert at all
    ("x_fold1", {"downstream_expert": {"modelrc": {}}}, "fold1"),  # no datarc
    ("fold5", None, "fold5"),  # no config written yet
    ("emotion", {"runner": {}}, None),
    ("emotion_fold6", None, None),
], ids=["config", "bad-config-fold", "no-expert", "no-datarc", "no-config", "no-fold", "fold6"])
def test_fold_of(tmp_path, name, config, fold):
    assert collect._fold_of(_er_expdir(tmp_path / name, config)) == fold


def test_discover_looks_three_levels_deep(tmp_path):
    root = tmp_path / "runs"
    _s3prl_files(root / "a" / "b" / "ks_run", "ks")  # level 3: found
    _s3prl_files(root / "a" / "b" / "c" / "ic_run", "ic")  # level 4: too deep
    _s3prl_files(root / "pr_run", "pr")  # level 1
    assert collect.discover_expdirs(root) == {("ks", None): [root / "a" / "b" / "ks_run"],
                                              ("pr", None): [root / "pr_run"]}
    assert collect.discover_expdirs(root, depth=1) == {("pr", None): [root / "pr_run"]}


def test_discover_a_single_expdir_and_not_below_it(tmp_path):
    _s3prl_files(tmp_path / "ks_run", "ks")
    _s3prl_files(tmp_path / "ks_run" / "nested", "ic")
    assert collect.discover_expdirs(tmp_path / "ks_run") == {("ks", None): [tmp_path / "ks_run"]}


def test_discover_skips_sweep_logs_and_configs_folders(tmp_path):
    for name in ("sweep", "logs", "configs"):
        _s3prl_files(tmp_path / name, "ks")
        _s3prl_files(tmp_path / "x" / name / "inner", "ic")
    _s3prl_files(tmp_path / "sid_run", "sid")
    assert collect.discover_expdirs(tmp_path) == {("sid", None): [tmp_path / "sid_run"]}


def test_discover_by_evaluate_args_when_no_training_args(tmp_path):
    only_eval = tmp_path / "ic_eval"
    _yaml(only_eval / "args_2026-01-01-00-00-00.yaml", {"mode": "evaluate", "downstream": "fluent_commands"})
    assert collect.discover_expdirs(tmp_path) == {("ic", None): [only_eval]}


def test_discover_prefers_the_training_args(tmp_path):
    # a later args file that records no downstream does not hide the training run's
    ks = tmp_path / "ks_run"
    _yaml(ks / "args_2026-01-01-00-00-00.yaml", {"mode": "train", "downstream": "speech_commands"})
    _yaml(ks / "args_2026-02-01-00-00-00.yaml", {"mode": "evaluate"})
    unknown = tmp_path / "other"  # a downstream collect does not know
    _yaml(unknown / "args_2026-01-01-00-00-00.yaml", {"mode": "train", "downstream": "separation_stft"})
    assert collect.discover_expdirs(tmp_path) == {("ks", None): [ks]}


def test_discover_keys_folds_for_er_only(tmp_path):
    _s3prl_files(tmp_path / "ks_fold2", "ks")  # "fold" in a non-ER name means nothing
    _er_expdir(tmp_path / "emotion_b", {"downstream_expert": {"datarc": {"test_fold": "fold1"}}})
    _er_expdir(tmp_path / "emotion_a", {"downstream_expert": {"datarc": {"test_fold": "fold1"}}})
    _er_expdir(tmp_path / "er_fold4", {"runner": {}})
    assert collect.discover_expdirs(tmp_path) == {
        ("ks", None): [tmp_path / "ks_fold2"], ("er", "fold1"): [tmp_path / "emotion_a", tmp_path / "emotion_b"],
        ("er", "fold4"): [tmp_path / "er_fold4"]}


# ----------------------------------------------------------------------------------------------------
# collect_model


def _all_missing() -> Dict[str, TaskResult]:
    tasks = {t: TaskResult(t, "missing") for t in reference.OUR_TASKS}
    folds = {f: TaskResult("er", "missing") for f in FOLDS}
    tasks["er"] = TaskResult("er", "missing", detail="no fold run", folds=folds)
    return tasks


@pytest.mark.parametrize("fields, name", [
    ({"upstream": "lighthubert_local", "ckpt": "/models/lighthubert_small.pt", "subnet": "/subnets/base_like.yaml"},
     "lighthubert_local-lighthubert_small-base_like"),
    ({"upstream": "lighthubert_local", "ckpt": None, "subnet": None}, "lighthubert_local"),
    ({"ckpt": "/models/tiny.pt"}, "model-tiny"),
    ({"upstream": "lighthubert_hub", "subnet": "/s/stage2.json"}, "lighthubert_hub-stage2"),
], ids=["all", "upstream-only", "no-upstream", "subnet-only"])
def test_collect_model_name_from_the_manifest(tmp_path, fields, name):
    root = tmp_path / "exp"
    manifest(root, **fields)
    assert collect.collect_model(root) == ModelRow(name, "ours", None, _all_missing(), str(root.resolve()))


def test_collect_model_name_from_the_folder_or_given(tmp_path):
    plain = tmp_path / "my_runs"
    plain.mkdir()
    assert collect.collect_model(plain) == ModelRow("my_runs", "ours", None, _all_missing(), str(plain.resolve()))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / units.MANIFEST_NAME).write_text("[1, 2]")  # not a mapping: ignored
    assert collect.collect_model(odd).name == "odd"
    manifest(plain, upstream="lighthubert_local")
    assert collect.collect_model(plain, name="given").name == "given"


def test_collect_model_params_from_the_first_task_in_table_order(tmp_path):
    root = tmp_path / "exp"
    runner_done(root / "ks", {"value": 0.5, "params": 5_000_000})
    runner_done(root / "pr", {"value": 0.25, "params": 3_000_000})  # PR comes first in the table
    assert collect.collect_model(root).params_m == 3.0
    assert collect.collect_model(root, params_m=7.5).params_m == 7.5


def test_collect_model_params_from_an_er_fold_when_no_task_has_them(tmp_path):
    root = tmp_path / "exp"
    manifest(root, upstream="lighthubert_local")
    fold2 = runner_done(root / "er" / "fold2", {"value": 0.625, "params": 4_500_000, "ckpt": "dev-best.ckpt"})
    runner_done(root / "ks", {"value": 0.5})
    row = collect.collect_model(root)
    assert row.params_m == 4.5
    folds = {f: TaskResult("er", "missing") for f in FOLDS}
    folds["fold2"] = TaskResult("er", "done", 62.5, "test on dev-best.ckpt", str(fold2 / units.RESULT_FILE),
                                params=4_500_000)
    assert row.tasks["er"] == TaskResult("er", "partial", detail="1/5 folds", folds=folds)
    assert row.tasks["ic"] == TaskResult("ic", "missing")


def test_collect_model_reads_started_unit_folders_without_args(tmp_path):
    root = tmp_path / "exp"
    manifest(root, upstream="lighthubert_local")
    (root / "ks").mkdir(parents=True)
    (root / "er" / "fold2").mkdir(parents=True)
    row = collect.collect_model(root)
    assert row.tasks["ks"] == TaskResult("ks", "stopped", detail="training not finished")
    assert row.tasks["er"].folds["fold2"] == TaskResult("er", "stopped", detail="training not finished")
    assert row.tasks["er"].detail == "0/5 folds (stopped)"
    assert row.tasks["pr"] == TaskResult("pr", "missing")


def test_collect_model_prefers_discovered_expdirs_over_bare_unit_folders(tmp_path):
    root = tmp_path / "exp"
    manifest(root, upstream="lighthubert_local")
    (root / "ks").mkdir(parents=True)  # nothing in it
    rerun = tmp_path / "exp" / "ks_rerun"
    _s3prl_files(rerun, "ks")
    runner_done(rerun, {"value": 0.5, "ckpt": "dev-best.ckpt"})
    (root / "er" / "fold1").mkdir(parents=True)
    fold1 = _er_expdir(root / "er" / "fold1_rerun", {"downstream_expert": {"datarc": {"test_fold": "fold1"}}})
    runner_done(fold1, {"value": 0.75, "ckpt": "dev-best.ckpt"})
    row = collect.collect_model(root)
    assert row.tasks["ks"] == TaskResult("ks", "done", 50.0, "test on dev-best.ckpt", str(rerun / units.RESULT_FILE))
    assert row.tasks["er"].folds["fold1"] == TaskResult("er", "done", 75.0, "test on dev-best.ckpt",
                                                        str(fold1 / units.RESULT_FILE))


def test_collect_model_names_the_fold_when_it_has_several_expdirs(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    root = tmp_path / "exp"
    for name in ("a", "b"):
        expdir = _er_expdir(root / name, {"downstream_expert": {"datarc": {"test_fold": "fold3"}}})
        runner_done(expdir, {"value": 0.5})
    collect.collect_model(root)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "er/fold3: 2 expdirs found, using the one that is done"]
