"""collect / package / reference on hand-made s3prl expdirs: every status, format check and refusal.

These need no s3prl run (each test takes milliseconds); tests/test_superb_pipeline.py runs the same
commands on real runs.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Dict, Optional

import pytest
import yaml

from lighthubert_s3prl.commands.cli import main as cli_main
from lighthubert_s3prl.superb import collect, package, reference, units

DOWNSTREAM = {"pr": "ctc", "ks": "speech_commands", "ic": "fluent_commands", "sid": "voxceleb1", "er": "emotion",
              "asr": "asr", "asv": "sv_voxceleb1"}
PRED = {"pr": ("test-hyp.ark", "utt{i} AH B K"), "asr": ("test-clean-noLM-hyp.ark", "utt{i} HELLO WORLD"),
        "ks": ("test_predict.txt", "yes-{i}.wav yes"), "ic": ("test_predict.csv", "f{i},activate,lamp,none"),
        "sid": ("test_predict.txt", "id10001-v-{i} id10002"), "asv": ("test_predict.txt", "a{i}_b{i} 0.5")}
TRUTH = {"pr": "test-ref.ark", "asr": "test-clean-noLM-ref.ark", "ks": "test_truth.txt", "ic": "test_truth.csv",
         "sid": "test_truth.txt", "asv": "test_truth.txt"}


def _s3prl_files(expdir: Path, task: str, fold: Optional[str] = None, total: int = 10, save: int = 10,
                 steps=(10,)) -> None:
    """What s3prl leaves in an expdir: args/config yaml, states checkpoints."""
    expdir.mkdir(parents=True, exist_ok=True)
    (expdir / "args_2026-01-01-00-00-00.yaml").write_text(yaml.safe_dump(
        {"downstream": DOWNSTREAM[task], "mode": "train", "expdir": str(expdir)}))
    config = {"runner": {"total_steps": total, "save_step": save}}
    if fold:
        config["downstream_expert"] = {"datarc": {"test_fold": fold}}
    (expdir / "config_2026-01-01-00-00-00.yaml").write_text(yaml.safe_dump(config))
    for step in steps:
        (expdir / f"states-{step}.ckpt").write_bytes(b"x")


def fake_unit(root: Path, task: str, value: float, fold: Optional[str] = None, lines: int = 3,
              params: int = 2_520_064) -> Path:
    """A unit the runner finished: s3prl files + predictions + runner result and done marker."""
    expdir = units.unit_expdir(root, task, fold)
    _s3prl_files(expdir, task, fold)
    if task == "er":
        name, line = f"test_{fold}_predict.txt", "Ses0{i}F_impro01_F000 neu"
        (expdir / f"test_{fold}_truth.txt").write_text("".join(f"s{i} neu\n" for i in range(lines)))
    else:
        name, line = PRED[task]
        (expdir / TRUTH[task]).write_text("".join(f"t{i} x\n" for i in range(lines)))
    pred = expdir / name
    pred.write_text("".join(line.format(i=i) + "\n" for i in range(lines)))
    result = {"task": task, "fold": fold, "value": value, "percent": units.to_percent(task, value),
              "split": "test-clean" if task == "asr" else "test", "ckpt": "dev-best.ckpt", "prediction_file": name,
              "prediction_sha256": units.sha256_of(pred), "params": params}
    if task == "asv":
        result["ckpt"] = "states-10.ckpt"
        units.write_json(expdir / units.SWEEP_FILE, {"best_ckpt": "states-10.ckpt",
                                                       "prediction_sha256": units.sha256_of(pred)})
    units.write_json(expdir / units.RESULT_FILE, result)
    (expdir / units.DONE_FILE).write_text("done\n")
    (expdir / units.TRAIN_DONE_FILE).write_text("{}")
    return expdir


VALUES = {"pr": 0.25, "ks": 0.5, "ic": 0.25, "sid": 0.125, "asr": 80.0, "asv": 0.25}
ER_VALUES = {"fold1": 0.5, "fold2": 0.25, "fold3": 0.5, "fold4": 0.25, "fold5": 0.5}


@pytest.fixture
def full_root(tmp_path) -> Path:
    """An experiment root with all seven tasks finished (ER: five folds)."""
    root = tmp_path / "exp"
    root.mkdir()
    units.write_json(root / units.MANIFEST_NAME, {"upstream": "lighthubert_local", "ckpt": "/x/tiny.pt",
                                                    "subnet": None, "scale": "full", "tasks": list(units.TASK_ORDER)})
    for task, value in VALUES.items():
        fake_unit(root, task, value)
    for fold, value in ER_VALUES.items():
        fake_unit(root, "er", value, fold)
    return root


# ----------------------------------------------------------------------------------------------------
# reference rows and the score


def test_score_formula_reproduces_published_leaderboard_scores():
    checks = reference.check_reference_scores()
    assert len(checks) == 7
    for key, computed, published in checks:
        assert abs(computed - published) < 2.0, (key, computed, published)


def test_partial_score_is_the_mean_of_task_terms():
    small = reference.REFERENCES["lighthubert_small"]
    score = reference.superb_score(small.values, ["ks", "pr"])
    expected = 1000 * (reference.task_term("ks", 96.07) + reference.task_term("pr", 6.60)) / 2
    assert score.partial and score.tasks == ("pr", "ks") and score.value == pytest.approx(expected)
    assert "partial: 2/10 tasks" in score.describe()
    assert reference.superb_score({}, None) is None
    assert reference.task_term("ks", 41.38) == pytest.approx(0.0) and reference.task_term("asr", 3.62) == pytest.approx(1.0)


def test_reference_selection_errors():
    assert [r.key for r in reference.select_references(None)] == list(reference.DEFAULT_REFERENCES)
    assert reference.select_references("none") == []
    with pytest.raises(reference.ScoreError, match="unknown reference model"):
        reference.select_references("wav2vec9")
    with pytest.raises(reference.ScoreError, match="takes 2 values"):
        reference.task_term("sf", 80.0)


# ----------------------------------------------------------------------------------------------------
# collect


def test_collect_full_root(full_root, tmp_path):
    out = tmp_path / "table"
    assert cli_main(["collect", str(full_root), "-o", str(out), "--names", "mine", "-q"]) == 0
    data = json.loads((out / "superb_results.json").read_text())
    mine = data["rows"][0]
    assert mine["name"] == "mine" and mine["kind"] == "ours" and mine["params_m"] == pytest.approx(2.520064)
    shown = {t: mine["tasks"][t]["display"] for t in reference.OUR_TASKS}
    assert shown == {"pr": "25.00", "ks": "50.00", "ic": "25.00", "sid": "12.50", "er": "40.00", "asr": "80.00",
                     "asv": "25.00", "sd": "missing", "qbe": "missing", "sf": "missing"}
    assert data["score_tasks"] == ["pr", "ks", "ic", "sid", "er", "asr", "asv"] and data["score_partial"] is True
    # SUPERB score by hand: 1000/T * sum over tasks of (x - FBANK) / (SOTA - FBANK), here over our T = 7
    # tasks, with FBANK from DPHuBERT's table and SOTA from the leaderboard (SID 90.30, as its Data.js has
    # it). Error metrics (PER, WER, EER) need no sign flip: their SOTA lies below FBANK.
    mine_terms = [(25 - 82.01) / (3.53 - 82.01),  # PR PER 25 %: better than FBANK, term 0.7264
                  (50 - 41.38) / (96.66 - 41.38),  # KS 50 %: 0.1559
                  (25 - 9.65) / (98.76 - 9.65),  # IC 25 %: 0.1723
                  (12.5 - 20.06) / (90.30 - 20.06),  # SID 12.5 %: below FBANK, -0.1076
                  (40 - 48.24) / (67.62 - 48.24),  # ER mean of 50, 25, 50, 25, 50 = 40 %: -0.4252
                  (80 - 23.18) / (3.62 - 23.18),  # ASR WER 80 % (printed in percent): -2.9049
                  (25 - 9.56) / (5.11 - 9.56)]  # ASV EER 25 % (printed as 0.25): -3.4697
    assert mine["superb_score"] == pytest.approx(1000 / 7 * sum(mine_terms), rel=1e-9)
    assert mine["superb_score"] == pytest.approx(-836.109, abs=1e-3)
    names = [r["name"] for r in data["rows"]]
    assert names == ["mine", "LightHuBERT Small", "HuBERT Base", "DistilHuBERT", "DPHuBERT"]
    # reference rows are scored over the same seven tasks, beside their published 10-task score;
    # LightHuBERT Small's published public-set values (SUPERB leaderboard)
    small = data["rows"][1]
    assert small["leaderboard_score"] == 901
    small_terms = [(6.60 - 82.01) / (3.53 - 82.01), (96.07 - 41.38) / (96.66 - 41.38),
                   (98.23 - 9.65) / (98.76 - 9.65), (69.70 - 20.06) / (90.30 - 20.06),
                   (64.12 - 48.24) / (67.62 - 48.24), (8.33 - 23.18) / (3.62 - 23.18), (5.42 - 9.56) / (5.11 - 9.56)]
    assert small["superb_score"] == pytest.approx(1000 / 7 * sum(small_terms), rel=1e-9)
    assert small["superb_score"] == pytest.approx(879.989, abs=1e-3)
    md = (out / "superb_results.md").read_text()
    assert ("| **mine** | 2.52 | 25.00 | 50.00 | 25.00 | 12.50 | 40.00 | 80.00 | 25.00 | missing | missing | missing "
            "| -836.1 | — |") in md
    # the published rows show all ten tasks, SF as F1 / CER and QbE as MTWV; the score stays over our 7
    assert ("| LightHuBERT Small (published) | 27.00 | 6.60 | 96.07 | 98.23 | 69.70 | 64.12 | 8.33 | 5.42 | 5.85 "
            "| 0.0764 | 87.58 / 26.90 | 880.0 | 901 |") in md
    assert "SUPERB score (partial, 7 tasks)" in md and "7/10 tasks" in md
    csv_lines = (out / "superb_results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,kind,params_m,pr,ks,ic,sid,er,asr,asv,sd,qbe,sf,superb_score")
    assert csv_lines[1].startswith("mine,ours,2.5201,25.00,50.00,25.00,12.50,40.00,80.00,25.00,missing,missing,"
                                   "missing,-836.11,")
    assert (out / "superb_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collect_shows_unfinished_work_by_status(full_root, tmp_path):
    import shutil

    shutil.rmtree(full_root / "er" / "fold3")  # an ER fold missing
    (full_root / "ks" / units.DONE_FILE).unlink()  # trained, test result not recorded
    (full_root / "ks" / units.RESULT_FILE).unlink()
    shutil.rmtree(full_root / "ic")  # never started
    sid = full_root / "sid"  # interrupted training: checkpoints, no markers
    for name in (units.DONE_FILE, units.RESULT_FILE, units.TRAIN_DONE_FILE):
        (sid / name).unlink()
    (sid / "states-10.ckpt").rename(sid / "states-5.ckpt")
    (full_root / "asr" / units.DONE_FILE).unlink()
    units.write_json(full_root / "asr" / units.FAILED_FILE, {"stage": "test", "message": "s3prl exited with code 1"})
    table = collect.collect([full_root])
    row = table.rows[0]
    shown = {t: row.tasks[t].display for t in reference.OUR_TASKS}
    assert shown == {"pr": "25.00", "ks": "untested", "ic": "missing", "sid": "stopped", "er": "4/5 folds",
                     "asr": "failed", "asv": "25.00", "sd": "missing", "qbe": "missing", "sf": "missing"}
    assert row.tasks["er"].folds["fold3"].status == "missing"
    assert table.score_tasks == ("pr", "asv")  # only finished tasks are scored
    md = collect.to_markdown(table)
    assert "4/5 folds" in md and "partial" in md and "2/10 tasks (PR, ASV)" in md


def test_collect_running_unit_is_running(full_root):
    import os
    import socket

    (full_root / "ks" / units.DONE_FILE).unlink()
    units.write_json(full_root / "ks" / units.LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
    assert collect.collect([full_root]).rows[0].tasks["ks"].display == "running"


def test_collect_reads_plain_s3prl_expdirs(tmp_path):
    """No runner files: numbers from s3prl's own log.log and test_expdir.sh outputs."""
    exps = tmp_path / "plain"
    ks = exps / "ks_run"
    _s3prl_files(ks, "ks")
    (ks / "log.log").write_text("dev at step 5: 0.3\nNew best on dev at step 5: 0.3\ntest at step 5: 0.4\n"
                                "dev at step 10: 0.2\ntest at step 10: 0.1\n")
    ic = exps / "ic_run"  # evaluated with -m evaluate afterwards: "test at step 0"
    _s3prl_files(ic, "ic")
    (ic / "log.log").write_text("dev at step 10: 0.5\nNew best on dev at step 10: 0.5\ntest at step 0: 0.75\n")
    er = exps / "emotion_a"  # fold read from the saved config, not the folder name
    _s3prl_files(er, "er", fold="fold2", total=20, steps=(10,))  # training half done
    (er / "log.log").write_text("dev at step 10: 0.5\nNew best on dev at step 10: 0.5\ntest at step 10: 0.6\n")
    asv = exps / "sv"
    _s3prl_files(asv, "asv", steps=(10, 20), total=20)
    for step, eer in ((10, 0.3), (20, 0.2)):
        (asv / f"states-{step}").mkdir()
        (asv / f"states-{step}" / "log.txt").write_text(f"sv-voxceleb1/test-EER: {eer}\n")
    pr = exps / "pr_run"
    _s3prl_files(pr, "pr")  # trained, no result anywhere
    row = collect.collect_model(exps)
    assert row.tasks["ks"].percent == pytest.approx(40.0) and "dev-best step 5" in row.tasks["ks"].detail
    assert row.tasks["ic"].percent == pytest.approx(75.0)
    assert row.tasks["asv"].percent == pytest.approx(20.0)
    assert row.tasks["pr"].status == "untested"
    assert row.tasks["er"].display == "0/5 folds (running)"
    assert row.tasks["er"].folds["fold2"].status == "running"
    assert row.tasks["asr"].status == "missing"


def test_collect_plain_log_takes_the_test_score_at_the_last_dev_best_step(tmp_path):
    """s3prl tests at every eval_step and writes "New best on dev" whenever dev improves; the number to
    report is the test score of the last improvement (the dev-best checkpoint), which here is neither
    the first best's (40), the highest test score (90) nor the last test line (65)."""
    # checkpoints every 5 steps up to 25: by name states-5 would sort last and look unfinished
    ks = tmp_path / "plain" / "ks_run"
    _s3prl_files(ks, "ks", total=25, save=5, steps=(5, 10, 15, 20, 25))
    (ks / "log.log").write_text(
        "dev at step 5: 0.30\nNew best on dev at step 5: 0.30\ntest at step 5: 0.40\n"
        "dev at step 10: 0.25\ntest at step 10: 0.90\n"
        "dev at step 15: 0.45\nNew best on dev at step 15: 0.45\ntest at step 15: 0.55\n"
        "dev at step 20: 0.40\ntest at step 20: 0.60\n"
        "dev at step 25: 0.45\ntest at step 25: 0.65\n")  # equal to the best dev score: no new best
    sid = tmp_path / "plain" / "sid_run"  # the same rule for another recipe's log
    _s3prl_files(sid, "sid", total=20, save=10, steps=(10, 20))
    (sid / "log.log").write_text(
        "dev at step 10: 0.1\nNew best on dev at step 10: 0.1\ntest at step 10: 0.2\n"
        "dev at step 20: 0.3\nNew best on dev at step 20: 0.3\ntest at step 20: 0.125\n")
    row = collect.collect_model(tmp_path / "plain")
    assert (row.tasks["ks"].status, row.tasks["ks"].percent) == ("done", pytest.approx(55.0))
    assert row.tasks["ks"].detail == "test at dev-best step 15"
    assert (row.tasks["sid"].status, row.tasks["sid"].percent) == ("done", pytest.approx(12.5))


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    for name in ("states-10.ckpt", "states-100.ckpt", "states-9.ckpt", "states-4.ckpt", "dev-best.ckpt",
                 "states-3.ckpt.tmp", "states-x.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert units.states_checkpoints(tmp_path) == [(4, tmp_path / "states-4.ckpt"), (9, tmp_path / "states-9.ckpt"),
                                                   (10, tmp_path / "states-10.ckpt"),
                                                   (100, tmp_path / "states-100.ckpt")]
    # collect: training to step 12 is finished, the newest checkpoint being states-12, not states-8
    done = tmp_path / "plain" / "ic_run"
    _s3prl_files(done, "ic", total=12, save=4, steps=(4, 8, 12))
    (done / "log.log").write_text("dev at step 8: 0.5\nNew best on dev at step 8: 0.5\ntest at step 8: 0.75\n")
    unfinished = tmp_path / "plain" / "ks_run"  # stopped at step 12 of 20
    _s3prl_files(unfinished, "ks", total=20, save=4, steps=(4, 8, 12))
    row = collect.collect_model(tmp_path / "plain")
    assert (row.tasks["ic"].status, row.tasks["ic"].percent) == ("done", pytest.approx(75.0))
    assert row.tasks["ks"].status == "running" and row.tasks["ks"].detail == "training not finished " \
                                                                               "(last checkpoint step 12)"


def test_collect_errors(tmp_path, capsys):
    assert cli_main(["collect", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    tmp_path.joinpath("a").mkdir()
    assert cli_main(["collect", str(tmp_path / "a"), "--names", "x", "y"]) == 2
    assert "one per dir" in capsys.readouterr().err
    assert cli_main(["collect", str(tmp_path / "a"), "--references", "bogus"]) == 2
    assert "unknown reference model" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# package public


def _members(path: Path) -> Dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def test_package_public_from_root(full_root, tmp_path, capsys):
    out = tmp_path / "predict.zip"
    assert cli_main(["package", "public", "--from", str(full_root), "-o", str(out)]) == 0
    members = _members(out)
    assert sorted(members) == sorted([
        "predict/pr_public/predict.ark", "predict/asr_public/predict.ark", "predict/ks_public/predict.txt",
        "predict/ic_public/predict.csv", "predict/sid_public/predict.txt", "predict/sv_public/predict.txt"] +
        [f"predict/er_fold{i}_public/predict.txt" for i in range(1, 6)])
    assert members["predict/ks_public/predict.txt"] == (full_root / "ks" / "test_predict.txt").read_bytes()
    assert "valid public-set submission (11 file(s))" in capsys.readouterr().out
    assert cli_main(["package", "validate", str(out)]) == 0
    # same inputs, same bytes
    again = tmp_path / "again.zip"
    package.build_public(package.sources_from_exp_root(full_root), again)
    assert again.read_bytes() == out.read_bytes()


def test_package_public_with_exp_keys(full_root, tmp_path):
    out = tmp_path / "p.zip"
    args = ["package", "public", "--exp", f"ks={full_root / 'ks'}", "--exp", f"sv={full_root / 'asv'}",
            "--exp", f"er={full_root / 'er'}", "-o", str(out)]
    assert cli_main(args) == 0
    assert len(_members(out)) == 7


@pytest.mark.parametrize("breakage, message", [
    ("er_fold_missing", "er: 4/5 folds finished (fold2 missing)"),
    ("unfinished_task", "sid: not finished"),
    ("empty_prediction", "is empty"),
    ("fewer_predictions", "has 2 predictions but test_truth.txt lists 3"),
    ("asv_unswept", "was not chosen by a checkpoint sweep"),
    ("changed_after_test", "changed after the runner tested"),
    ("bad_line", "expected 2"),
])
def test_package_refuses_incomplete_or_broken(full_root, tmp_path, capsys, breakage, message):
    import shutil

    if breakage == "er_fold_missing":
        shutil.rmtree(full_root / "er" / "fold2")
    elif breakage == "unfinished_task":
        (full_root / "sid" / units.DONE_FILE).unlink()
    elif breakage == "empty_prediction":
        (full_root / "ks" / "test_predict.txt").write_text("")
    elif breakage == "fewer_predictions":
        pred = full_root / "ks" / "test_predict.txt"
        pred.write_text("".join(pred.read_text().splitlines(keepends=True)[:2]))
    elif breakage == "asv_unswept":
        (full_root / "asv" / units.SWEEP_FILE).unlink()
    elif breakage == "changed_after_test":
        pred = full_root / "sid" / "test_predict.txt"
        pred.write_text(pred.read_text().replace("id10002", "id10003"))
    elif breakage == "bad_line":
        (full_root / "ks" / "test_predict.txt").write_text("a yes\nb\nc no\n")
    out = tmp_path / "predict.zip"
    assert cli_main(["package", "public", "--from", str(full_root), "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("unit, key, name, lines, repeat", [
    ("ks", "ks", "test_predict.txt", ["yes-0.wav yes", "yes-1.wav no", "yes-0.wav yes"], (3, "yes-0.wav")),
    ("sid", "sid", "test_predict.txt", ["id10001-v-0 id10002", "id10001-v-0 id10003", "id10001-v-2 id10002"],
     (2, "id10001-v-0")),
    ("ic", "ic", "test_predict.csv", ["f0,activate,lamp,none", "f1,activate,lamp,none", "f1,deactivate,lamp,none"],
     (3, "f1")),
    ("pr", "pr", "test-hyp.ark", ["utt0 AH B", "utt1 K", "utt0 AH B"], (3, "utt0")),
    ("asr", "asr", "test-clean-noLM-hyp.ark", ["utt0 HELLO", "utt0 ", "utt2 WORLD"], (2, "utt0")),
    ("er/fold3", "er_fold3", "test_fold3_predict.txt", ["Ses03F_a neu", "Ses03F_b sad", "Ses03F_b neu"],
     (3, "Ses03F_b")),
], ids=["ks", "sid", "ic", "pr", "asr", "er_fold3"])
def test_package_refuses_a_duplicated_utterance_id(full_root, tmp_path, capsys, unit, key, name, lines, repeat):
    """One prediction per test utterance: a repeated id (as many lines as test items, so the count check
    passes, and recorded by the runner, so only the repeat is wrong) is refused by packaging and by
    the archive check."""
    import hashlib

    expdir = full_root / unit
    pred = expdir / name
    pred.write_text("".join(line + "\n" for line in lines))
    result = json.loads((expdir / units.RESULT_FILE).read_text())
    result["prediction_sha256"] = hashlib.sha256(pred.read_bytes()).hexdigest()
    (expdir / units.RESULT_FILE).write_text(json.dumps(result))
    line, utterance = repeat
    out = tmp_path / "predict.zip"
    assert cli_main(["package", "public", "--from", str(full_root), "-o", str(out)]) == 2
    assert f"{key}: {pred} line {line} repeats {utterance!r}" in capsys.readouterr().err
    assert not out.exists()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(package.ENTRIES[key].dest, pred.read_bytes())
    with pytest.raises(package.PackageError, match=rf"line {line} repeats {utterance!r}$"):
        package.validate_archive(out)


def test_package_refuses_four_er_folds_by_key(full_root, tmp_path, capsys):
    args = ["package", "public", "-o", str(tmp_path / "p.zip")]
    for i in (1, 2, 3, 5):
        args += ["--exp", f"er_fold{i}={full_root / 'er' / f'fold{i}'}"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "ER is incomplete: er_fold4 missing" in err and "all 5 folds" in err
    # leaving ER out entirely is a valid (subset) submission
    assert cli_main(["package", "public", "--from", str(full_root), "--skip", "er", "-o", str(tmp_path / "q.zip")]) == 0


def test_package_argument_errors(full_root, tmp_path, capsys):
    assert cli_main(["package", "public", "--exp", "se=/x", "-o", str(tmp_path / "p.zip")]) == 2
    assert "unknown task key 'se'" in capsys.readouterr().err
    assert cli_main(["package", "public", "--exp", f"ks={tmp_path / 'nope'}", "-o", str(tmp_path / "p.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["package", "public", "-o", str(tmp_path / "p.zip")]) == 2
    assert "nothing to package" in capsys.readouterr().err
    assert cli_main(["package", "public", "--from", str(tmp_path), "-o", str(tmp_path / "p.zip")]) == 2
    assert "not a run_superb.sh experiment root" in capsys.readouterr().err
    assert cli_main(["package", "public", "--exp", f"ks={full_root / 'ks'}", "-o", str(tmp_path / "p.tar")]) == 2
    assert "takes a .zip" in capsys.readouterr().err


def test_validate_archive_rejects_bad_layouts(tmp_path):
    def make(members):
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return path

    with pytest.raises(package.PackageError, match="unexpected member 'ks_public/predict.txt'"):
        package.validate_archive(make({"ks_public/predict.txt": "a yes\n"}))
    with pytest.raises(package.PackageError, match="ER is incomplete"):
        package.validate_archive(make({"predict/er_fold1_public/predict.txt": "a neu\n"}))
    with pytest.raises(package.PackageError, match="is not a number"):
        package.validate_archive(make({"predict/sv_public/predict.txt": "a_b high\n"}))
    with pytest.raises(package.PackageError, match=r"ic_public/predict\.csv line 1 has 3 comma-separated fields; "
                                                   r"expected 4 \(file,action,object,location\)$"):
        package.validate_archive(make({"predict/ic_public/predict.csv": "a,b,c\n"}))
    with pytest.raises(package.PackageError, match="not a zip archive"):
        (tmp_path / "x.zip").write_text("no")
        package.validate_archive(tmp_path / "x.zip")
    assert package.validate_archive(make({"predict/pr_public/predict.ark": "u1 AH\nu2 \n"})) == {"pr": 2}


# ----------------------------------------------------------------------------------------------------
# package hidden


FAKE_EXPERT = '''
import torch

class UpstreamExpert(torch.nn.Module):
    def __init__(self, ckpt, **kwargs):
        super().__init__()
        self.proj = torch.nn.Linear(320, {dim})
        self.proj.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))

    def get_downsample_rates(self, key):
        return {rate}

    def forward(self, wavs):
        n = max(len(w) for w in wavs) // 320
        x = torch.stack([torch.nn.functional.pad(w, (0, n * 320 - len(w)))[: n * 320].view(n, 320) for w in wavs])
        h = self.proj(x)
        return {{"hidden_states": [h, h + 1]}}
'''


def _fake_hidden(folder: Path, rate: int = 320, extra: str = "") -> Path:
    import torch

    folder.mkdir(parents=True)
    (folder / "expert.py").write_text(extra + FAKE_EXPERT.format(dim=8, rate=rate))
    torch.save(torch.nn.Linear(320, 8).state_dict(), folder / "model.pt")
    (folder / ".gitattributes").write_text("*.pt filter=lfs diff=lfs merge=lfs -text\n")
    return folder


def test_validate_hidden_folder(tmp_path):
    report = package.validate_hidden_folder(_fake_hidden(tmp_path / "ok"))
    assert report["tasks"]["PR"] == {"layers": 2, "shape": [3, 185, 8], "rate": 320}
    assert set(report["tasks"]) == set(package.HIDDEN_TASKS)
    with pytest.raises(package.PackageError, match="frames but round"):
        package.validate_hidden_folder(_fake_hidden(tmp_path / "rate", rate=160))
    # the folder must not need this package: it is not importable during the check
    with pytest.raises(package.PackageError, match="must load on its own"):
        package.validate_hidden_folder(_fake_hidden(tmp_path / "dep", extra="import lighthubert_s3prl\n"))
    # ... unless its requirements.txt declares it (the evaluators pip-install those)
    declared = _fake_hidden(tmp_path / "declared", extra="import lighthubert_s3prl\n")
    (declared / "requirements.txt").write_text("torch>=2.8  # cpu is fine\nlighthubert_s3prl>=0.1.0\n")
    assert package.validate_hidden_folder(declared)["requirements"] == ["torch", "lighthubert-s3prl"]
    # ... or bundles a copy of its own, which is then the one imported
    bundled = _fake_hidden(tmp_path / "bundled", extra="import lighthubert_s3prl\nassert lighthubert_s3prl.BUNDLED\n")
    (bundled / "lighthubert_s3prl").mkdir()
    (bundled / "lighthubert_s3prl" / "__init__.py").write_text("BUNDLED = True\n")
    assert package.validate_hidden_folder(bundled)["requirements"] == []
    # a bundled copy does not open the rest of the installed package
    partial = _fake_hidden(tmp_path / "partial", extra="import lighthubert_s3prl.superb\n")
    (partial / "lighthubert_s3prl").mkdir()
    (partial / "lighthubert_s3prl" / "__init__.py").write_text("")
    with pytest.raises(package.PackageError, match="lighthubert_s3prl.superb is not available to a hidden-set folder"):
        package.validate_hidden_folder(partial)
    (tmp_path / "empty").mkdir()
    with pytest.raises(package.PackageError, match="has no expert.py"):
        package.validate_hidden_folder(tmp_path / "empty")


def test_package_hidden_bad_checkpoint(tmp_path, capsys):
    assert cli_main(["package", "hidden", "--ckpt", str(tmp_path / "none.pt"), "--subnet", "small",
                     "-o", str(tmp_path / "h")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_package_hidden_end_to_end(tmp_path):
    """With the export module present: a tiny checkpoint's subnet becomes a folder that loads on its own."""
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "tiny.pt", "small", seed=3, model_cfg=tiny_model_config())
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text("subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_ratio: 2.0}\n")
    report = package.build_hidden(ckpt, str(subnet), tmp_path / "hidden")
    assert report["tasks"]["PR"]["rate"] == 320 and report["tasks"]["PR"]["layers"] == 11
    assert report["requirements"] == ["torch", "pyyaml"]  # the folder bundles its inference code


# ----------------------------------------------------------------------------------------------------
# collect: s3prl's own files, field by field


def _train_files(expdir: Path, config: dict, steps=()) -> Path:
    """An expdir holding s3prl's args/config pair of a training run with ``config`` and these checkpoints."""
    expdir.mkdir(parents=True, exist_ok=True)
    (expdir / "args_2026-01-01-00-00-00.yaml").write_text(yaml.safe_dump({"downstream": "speech_commands",
                                                                          "mode": "train"}))
    (expdir / "config_2026-01-01-00-00-00.yaml").write_text(yaml.safe_dump(config))
    for step in steps:
        (expdir / f"states-{step}.ckpt").write_bytes(b"x")
    return expdir


@pytest.mark.parametrize("runner_section, steps, expected", [
    ({"total_steps": 25, "save_step": 10}, (10, 20), True),  # s3prl's last save is at 20 when 25 % 10 = 5
    ({"total_steps": 25, "save_step": 10}, (10,), False),
    ({"total_steps": 25}, (24,), False),  # no save_step: a save may fall on any step, so 25 is the last
    ({"total_steps": 25}, (25,), True),
    ({"total_steps": 25, "save_step": None}, (24,), False),  # an empty save_step counts as 1 too
    ({"total_steps": 25, "save_step": 0}, (24,), False),
    ({"save_step": 5}, (5,), True),  # no total_steps recorded: any saved checkpoint ends it
    (None, (3,), True),  # a config without a runner section: the same
], ids=["last_save_before_total", "early", "no_save_step", "no_save_step_done", "save_step_null", "save_step_0",
        "no_total_steps", "no_runner_section"])
def test_training_complete_rounds_total_steps_down_to_the_last_save(tmp_path, runner_section, steps, expected):
    """Training is finished once the newest checkpoint is at the last multiple of save_step that does not
    exceed total_steps, the last step at which s3prl saves."""
    config = {"downstream_expert": {}} if runner_section is None else {"runner": runner_section}
    expdir = _train_files(tmp_path / "ks", config, steps)
    assert collect._training_complete(expdir) is expected


def test_training_complete_is_unknown_without_checkpoints_and_false_without_a_config(tmp_path):
    """No checkpoint: nothing to judge by (None), config or not. Checkpoints but no training config: the
    total is unknown, so training is not taken as finished (False, not None)."""
    (tmp_path / "empty").mkdir()
    assert collect._training_complete(tmp_path / "empty") is None
    config_only = _train_files(tmp_path / "config_only", {"runner": {"total_steps": 10, "save_step": 10}})
    assert collect._training_complete(config_only) is None
    ckpts_only = tmp_path / "ckpts_only"
    ckpts_only.mkdir()
    (ckpts_only / "states-10.ckpt").write_bytes(b"x")
    assert collect._training_complete(ckpts_only) is False
    # so such a folder is shown as still training, not as trained and untested
    assert collect.unit_result("ks", ckpts_only).status == "running"


def test_plain_asv_expdir_reports_the_lowest_last_eer_over_checkpoint_logs(tmp_path):
    """test_expdir.sh writes one log per checkpoint; each log's last EER counts, the lowest of them is
    reported, and a log that is not valid UTF-8 is still read."""
    asv = tmp_path / "sv"
    _s3prl_files(asv, "asv", steps=(10, 20, 30, 40), total=40)
    logs = {10: b"sv-voxceleb1/test-EER: 0.3\n",
            20: b"\xff\xfe noise\nsv-voxceleb1/test-EER: 0.5\nsv-voxceleb1/test-EER: 0.125\n",
            30: b"sv-voxceleb1/test-EER: 0.25\n",
            40: b"interrupted before the score\n"}
    for step, text in logs.items():
        (asv / f"states-{step}").mkdir()
        (asv / f"states-{step}" / "log.txt").write_bytes(text)
    assert collect.unit_result("asv", asv) == collect.TaskResult(
        "asv", "done", 12.5, "best of 3 checkpoints (states-20)", "states-*/log.txt (test_expdir.sh)")


def test_plain_log_of_an_evaluate_run_is_reported_with_its_source(tmp_path):
    """An ``-m evaluate`` run logs its test score at step 0; the row names the log it came from, and bytes
    that are not UTF-8 (a progress bar cut mid-character) do not stop the reading."""
    ks = tmp_path / "ks_run"
    _s3prl_files(ks, "ks", total=20, steps=(10,))  # training unfinished: the evaluate line still counts
    (ks / "log.log").write_bytes(b"dev at step 10: 0.5\n\xe2\x96 progress\ntest at step 0: 0.75\n")
    assert collect.unit_result("ks", ks) == collect.TaskResult("ks", "done", 75.0, "s3prl -m evaluate",
                                                               str(ks / "log.log"))


@pytest.mark.parametrize("task", ["sd", "qbe", "sf"])
def test_a_plain_log_is_not_a_result_for_tasks_the_runner_scores(task, tmp_path):
    """SD's number is the DER over SUPERB's RTTM grid, QbE's the best dev layer's MTWV, SF's an F1 with a CER:
    a bare s3prl log line holds none of them, so such an expdir is shown by status, not as a number."""
    run = tmp_path / f"{task}_run"
    _s3prl_files(run, "ks", total=20, steps=(10,))
    (run / "log.log").write_text("test at step 0: 0.75\n")
    assert collect.unit_result("ks", run).status == "done"  # the same files count for a recipe-scored task
    assert collect.unit_result(task, run).status != "done"


def test_plain_log_of_a_finished_training_is_reported_with_its_source(tmp_path):
    ic = tmp_path / "ic_run"
    _s3prl_files(ic, "ic", total=8, save=4, steps=(4, 8))
    (ic / "log.log").write_bytes(b"dev at step 4: 0.5\nNew best on dev at step 4: 0.5\ntest at step 4: 0.625\n"
                                 b"\xff\ndev at step 8: 0.25\ntest at step 8: 0.875\n")
    assert collect.unit_result("ic", ic) == collect.TaskResult("ic", "done", 62.5, "test at dev-best step 4",
                                                               str(ic / "log.log"))


# ----------------------------------------------------------------------------------------------------
# package: archive bytes, sources and messages in full


def _raises(call, *args) -> str:
    with pytest.raises(package.PackageError) as err:
        call(*args)
    return str(err.value)


def test_public_archive_members_order_times_and_modes(full_root, tmp_path):
    """The archive is what `zip -r predict.zip predict/` gives: the folder entries first (empty, drwxr-xr-x
    with the MS-DOS directory bit), then the files in path order (deflated, rw-r--r--), every member
    dated 2020-01-01 so that the same predictions always give the same bytes."""
    sources = {"ks": full_root / "ks", "asv": full_root / "asv", "asr": full_root / "asr"}
    out = tmp_path / "predict.zip"
    assert package.build_public(sources, out) == (out, {"asr": 3, "ks": 3, "asv": 3})
    when, folder_mode, file_mode = (2020, 1, 1, 0, 0, 0), 0x41ED0010, 0x01A40000  # 0o40755 << 16 | 0x10, 0o644 << 16
    data = {"predict/asr_public/predict.ark": (full_root / "asr" / "test-clean-noLM-hyp.ark").read_bytes(),
            "predict/ks_public/predict.txt": (full_root / "ks" / "test_predict.txt").read_bytes(),
            "predict/sv_public/predict.txt": (full_root / "asv" / "test_predict.txt").read_bytes()}
    expected = [(name, when, folder_mode, zipfile.ZIP_STORED, 0) for name in
                ("predict/", "predict/asr_public/", "predict/ks_public/", "predict/sv_public/")]
    expected += [(name, when, file_mode, zipfile.ZIP_DEFLATED, len(body)) for name, body in data.items()]
    with zipfile.ZipFile(out) as archive:
        assert [(i.filename, i.date_time, i.external_attr, i.compress_type, i.file_size)
                for i in archive.infolist()] == expected
        assert {name: archive.read(name) for name in data} == data


def test_public_without_sources_says_how_to_give_them(tmp_path):
    assert _raises(package.build_public, {}, tmp_path / "p.zip") == \
        "nothing to package: give --exp KEY=DIR (repeatable) or --from EXP_ROOT"


def test_asv_predictions_must_be_the_sweeps_choice(full_root):
    """ASV predictions are accepted when they are the checkpoint sweep's, or when s3prl's test_expdir.sh
    chose them (a symlink to the best checkpoint's file next to its report.txt) — only both together."""
    asv = full_root / "asv"
    pred = asv / "test_predict.txt"
    pred.write_text("a0_b0 0.9\na1_b1 0.9\na2_b2 0.9\n")  # same count, not the sweep's bytes
    assert _raises(package.source_file, package.ENTRIES["asv"], asv) == (
        f"asv: {pred} differs from the predictions the checkpoint sweep chose (states-10.ckpt); "
        "re-run scripts/run_superb.sh --tasks asv to redo the sweep")


def test_asv_predictions_picked_by_test_expdir_need_the_link_and_the_report(tmp_path):
    entry = package.ENTRIES["asv"]
    not_chosen = ("asv: {pred} was not chosen by a checkpoint sweep (no superb_asv_sweep.json in {expdir}). ASV has "
                  "no dev set: every states-*.ckpt must be evaluated on the test trials and the best EER's "
                  "predictions kept; run scripts/run_superb.sh --tasks asv (it does the sweep)")

    def expdir(name: str, link: bool, report: bool) -> Path:
        d = tmp_path / name
        (d / "states-20").mkdir(parents=True)
        (d / "states-20" / "test_predict.txt").write_text("a_b 0.5\nc_d 0.25\n")
        (d / "test_truth.txt").write_text("1 a b\n0 c d\n")
        if link:
            (d / "test_predict.txt").symlink_to(d / "states-20" / "test_predict.txt")
        else:
            (d / "test_predict.txt").write_text("a_b 0.5\nc_d 0.25\n")
        if report:
            (d / "report.txt").write_text("states-20 EER 0.25\n")
        return d

    picked = expdir("picked", link=True, report=True)
    assert package.source_file(entry, picked) == picked / "test_predict.txt"
    for name, link, report in (("link_only", True, False), ("report_only", False, True)):
        d = expdir(name, link, report)
        assert _raises(package.source_file, entry, d) == not_chosen.format(pred=d / "test_predict.txt", expdir=d)


def test_source_file_counts_predictions_against_a_non_empty_truth_file(tmp_path):
    """The line count is checked against the truth file when there is one with content; without one (or
    for an entry that names none) the predictions are taken as they are."""
    ks = tmp_path / "ks"
    ks.mkdir()
    entry = package.ENTRIES["ks"]
    assert _raises(package.source_file, entry, ks) == f"ks: no test_predict.txt in {ks} (has the test been run?)"
    pred = ks / "test_predict.txt"
    pred.write_text("a yes\nb no\n")
    assert package.source_file(entry, ks) == pred  # no truth file, no result file
    no_truth = package.Entry("ks", "test_predict.txt", "predict/ks_public/predict.txt", "label")
    assert package.source_file(no_truth, ks) == pred
    truth = ks / "test_truth.txt"
    truth.write_text("")  # empty: says nothing about the count
    assert package.source_file(entry, ks) == pred
    truth.write_text("a")  # a single item, even without a newline, is counted
    assert _raises(package.source_file, entry, ks) == (
        f"ks: {pred} has 2 predictions but test_truth.txt lists 1 test items (an interrupted or mismatched "
        "evaluation?)")
    truth.write_text("a yes\nb no\n")
    assert package.source_file(entry, ks) == pred


def test_source_file_checks_the_hash_only_of_the_file_the_runner_tested(tmp_path):
    ks = tmp_path / "ks"
    ks.mkdir()
    entry = package.ENTRIES["ks"]
    pred = ks / "test_predict.txt"
    pred.write_text("a yes\nb no\n")
    stale = "0" * 64
    result = ks / units.RESULT_FILE
    result.write_text(json.dumps({"value": 0.5}))  # an older result without hashes
    assert package.source_file(entry, ks) == pred
    result.write_text(json.dumps({"prediction_file": "other_predict.txt", "prediction_sha256": stale}))
    assert package.source_file(entry, ks) == pred  # the hash is of another file
    result.write_text(json.dumps({"prediction_file": "test_predict.txt", "prediction_sha256": stale,
                                  "ckpt": "dev-best.ckpt"}))
    assert _raises(package.source_file, entry, ks) == (
        f"ks: {pred} changed after the runner tested dev-best.ckpt (another evaluation overwrote it?); re-run "
        "the test step")


def test_exp_arguments_split_at_the_first_equals_sign(tmp_path):
    assert package.parse_exp_args(["ks=/data/run=2/ks", "SV=/data/asv"]) == {"ks": Path("/data/run=2/ks"),
                                                                          "asv": Path("/data/asv")}
    for item in ("ks=", "ks"):
        assert _raises(package.parse_exp_args, [item]) == f"--exp {item!r}: expected KEY=DIR, e.g. --exp ks=exp/ks"
    assert _raises(package.parse_exp_args, ["se=/x"]) == (
        "--exp 'se=/x': unknown task key 'se'; use one of pr, asr, asr_lm, ks, ic, sid, asv, er_fold1, er_fold2, "
        "er_fold3, er_fold4, er_fold5, sf, sd, qbe (or er=DIR for all five folds)")


def test_exp_arguments_refuse_a_task_given_twice(tmp_path):
    assert _raises(package.parse_exp_args, ["sv=/a", "asv=/b"]) == "--exp gives asv more than once"
    assert _raises(package.parse_exp_args, ["er_fold2=/a", "er1=/b", "er=/e"]) == \
        "--exp gives er_fold1, er_fold2 more than once"


def test_er_directory_holds_fold_expdirs_or_the_files_themselves(tmp_path):
    """``er=DIR``: a fold's subfolder is used when it exists, DIR itself otherwise."""
    flat = tmp_path / "flat"
    flat.mkdir()
    assert package.parse_exp_args([f"er={flat}"]) == {f"er_fold{i}": flat for i in range(1, 6)}
    mixed = tmp_path / "mixed"
    (mixed / "fold2").mkdir(parents=True)
    assert package.parse_exp_args([f"er={mixed}"]) == {"er_fold1": mixed, "er_fold2": mixed / "fold2",
                                                       "er_fold3": mixed, "er_fold4": mixed, "er_fold5": mixed}


def _zip(path: Path, members: Dict[str, bytes], folders=()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for folder in folders:
            archive.writestr(zipfile.ZipInfo(folder), b"")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_validate_archive_messages(tmp_path):
    missing = tmp_path / "missing.zip"
    assert _raises(package.validate_archive, missing) == f"{missing}: no such file"
    stray = _zip(tmp_path / "stray.zip", {"ks_public/predict.txt": b"a yes\n"})
    assert _raises(package.validate_archive, stray) == (
        f"{stray}: unexpected member 'ks_public/predict.txt'; a public-set submission holds only "
        "predict/<task>_public/ files (predict.{ark,txt,csv}, benchmark.stdlist.xml, scoring/predictions/*.h5 and "
        "frame_shift)")
    extra = _zip(tmp_path / "extra.zip", {"predict/ks_public/predict.txt": b"a yes\n"}, folders=["predict/extra/"])
    assert _raises(package.validate_archive, extra) == (
        f"{extra}: unexpected folder 'predict/extra/'; the layout is predict/<task>_public/")
    empty = _zip(tmp_path / "empty.zip", {}, folders=["predict/", "predict/ks_public/"])
    assert _raises(package.validate_archive, empty) == f"{empty} holds no prediction file"


def test_validate_archive_reports_a_corrupt_member(tmp_path):
    """A member whose bytes no longer match their CRC is reported by name (not as a zipfile traceback)."""
    path = _zip(tmp_path / "p.zip", {"predict/ks_public/predict.txt": b"a yes\nb no\n"})  # stored, not deflated
    raw = path.read_bytes()
    assert raw.count(b"a yes\nb no\n") == 1
    path.write_bytes(raw.replace(b"a yes\nb no\n", b"a yes\nb NO\n"))
    assert _raises(package.validate_archive, path) == f"{path}: member predict/ks_public/predict.txt is corrupt"


def test_validate_prints_every_file_in_archive_order(tmp_path, capsys):
    path = _zip(tmp_path / "p.zip", {"predict/sv_public/predict.txt": b"a_b 0.5\n",
                                     "predict/ks_public/predict.txt": b"a yes\nb no\n",
                                     "predict/asr_public/predict.ark": b"u1 HI\nu2 \nu3 YO\n"})
    assert cli_main(["package", "validate", str(path)]) == 0
    rows = [("predict/asr_public/predict.ark", 3), ("predict/ks_public/predict.txt", 2),
            ("predict/sv_public/predict.txt", 1)]
    assert capsys.readouterr().out == "".join(f"  {dest.ljust(36)} {str(n).rjust(7)} lines\n" for dest, n in rows) + \
        f"{path}: valid public-set submission (3 file(s))\n"


HIDDEN_REPORT = {"tasks": {t: {"layers": 11, "shape": [3, 185, 64], "rate": 320} for t in package.HIDDEN_TASKS},
                 "params": 422016}


def test_validate_hidden_prints_the_report(tmp_path, capsys, monkeypatch):
    """The report line shows PR's forward pass, the task count and the parameters, plus a note when the
    folder needs this package installed."""
    report = dict(HIDDEN_REPORT, requirements=["torch", "lighthubert-s3prl"])
    report["tasks"] = dict(report["tasks"], SID={"layers": 2, "shape": [1, 2, 3], "rate": 160})
    seen = []
    monkeypatch.setattr(package, "validate_hidden_folder", lambda folder: seen.append(folder) or report)
    assert cli_main(["package", "validate-hidden", str(tmp_path)]) == 0
    assert seen == [str(tmp_path)]
    assert capsys.readouterr().out == (
        "  forward: 11 hidden states of shape [3, 185, 64] for 3 test wavs, rate 320; all 11 task keys pass; "
        "422016 parameters\n"
        "  note: requirements.txt lists lighthubert-s3prl, so the evaluators must be able to pip-install it\n"
        f"{tmp_path}: valid hidden-set folder\n")


def test_package_hidden_prints_the_report_without_a_parameter_count(tmp_path, capsys, monkeypatch):
    report = dict(HIDDEN_REPORT, params=None, requirements=["torch", "pyyaml"])
    monkeypatch.setattr(package, "build_hidden", lambda ckpt, subnet, out, validate: report)
    out = tmp_path / "h"
    assert cli_main(["package", "hidden", "--ckpt", "x.pt", "--subnet", "small", "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"{out}: hidden-set folder written and validated\n"
        "  forward: 11 hidden states of shape [3, 185, 64] for 3 test wavs, rate 320; all 11 task keys pass; "
        "? parameters\n")
    package._print_hidden(HIDDEN_REPORT)  # a report that lists no requirements has no note
    assert capsys.readouterr().out == (
        "  forward: 11 hidden states of shape [3, 185, 64] for 3 test wavs, rate 320; all 11 task keys pass; "
        "422016 parameters\n")


def test_build_hidden_writes_the_requested_subnet_and_validates_that_folder(tmp_path, monkeypatch):
    """The folder holds the subnet asked for, exported from the checkpoint given, and is then checked
    (by default) in the place it was written."""
    import torch

    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    ckpt = write_random_checkpoint(tmp_path / "tiny.pt", "small", seed=3, model_cfg=tiny_model_config())
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text("subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_ratio: 2.0}\n")
    checked = []
    monkeypatch.setattr(package, "validate_hidden_folder", lambda folder: checked.append(folder) or {"ok": 1})
    out = tmp_path / "hidden"
    assert package.build_hidden(ckpt, str(subnet), out) == {"ok": 1}
    assert checked == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden", "subnet.yaml", "tiny.pt"]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert saved["source"] == "tiny.pt"
    assert {k: saved["subnet"][k] for k in ("embed_dim", "layer_num", "heads_num", "ffn_embed")} == \
        {"embed_dim": 64, "layer_num": 10, "heads_num": [1] * 10, "ffn_embed": [128] * 10}


def test_build_hidden_without_validation_passes_its_arguments_through(tmp_path, monkeypatch):
    from lighthubert_s3prl.upstream import hidden_set

    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    written, checked = [], []
    monkeypatch.setattr(hidden_set, "write_hidden_set_folder", lambda *args: written.append(args))
    monkeypatch.setattr(package, "validate_hidden_folder", lambda folder: checked.append(folder) or {"ok": 1})
    assert package.build_hidden(ckpt, "small", tmp_path / "h", validate=False) == {}
    assert written == [(str(ckpt), "small", str(tmp_path / "h"))] and checked == []
