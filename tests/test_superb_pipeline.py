"""The SUPERB pipeline end to end: scripts/run_superb.sh -> s3prl (through our launcher) -> collect -> package.

One module-scoped run trains and tests all ten tasks (ER: five folds; ASV: a two-checkpoint sweep; SD: the
RTTM threshold/median grid; QbE: every layer on dev, the best on test, nothing trained) on the ``ci`` mini corpus with a tiny seeded LightHuBERT, every run cut to 4 steps; the other tests
read, copy or re-run it. Error paths use the runner in-process (no s3prl start-up).
"""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from lighthubert_s3prl.commands.cli import main as cli_main
from lighthubert_s3prl.superb import report, runner, units
from lighthubert_s3prl.superb.reference import ALL_TASKS, superb_score

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_superb.sh"
ALL_UNITS = ["pr", "ks", "ic", "sid", "er_fold1", "er_fold2", "er_fold3", "er_fold4", "er_fold5", "asr", "asv",
             "sd", "qbe", "sf"]
# 4 steps, one dev evaluation and one checkpoint at the end; ASV saves twice so the sweep has a choice
TINY = ["--set", "runner.total_steps=4", "--set", "runner.eval_step=4", "--set", "runner.save_step=4",
        "--set", "runner.log_step=2", "--set", "asv:runner.save_step=2", "--set", "asv:runner.max_keep=2",
        "--threads", "1"]


@pytest.fixture(scope="session")
def superb_corpus(tmp_path_factory) -> Path:
    from lighthubert_s3prl.superb.corpus import make_corpus

    out = tmp_path_factory.mktemp("superb_corpus") / "corpus"
    make_corpus(out, preset="ci", seed=0)
    return out


@pytest.fixture(scope="session")
def superb_ckpt(tmp_path_factory) -> Path:
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("superb_ckpt") / "tiny.pt", "small", seed=0,
                                   model_cfg=tiny_model_config())


def run_script(args, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def base_args(ckpt: Path, corpus: Path, root: Path, tasks: str = "all"):
    return ["-u", "lighthubert_local", "-k", ckpt, "--tasks", tasks, "--data", corpus, "--scale", "ci",
            "--exp-root", root, *TINY]


@pytest.fixture(scope="module")
def pipeline(superb_corpus, superb_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("superb_run") / "exp"
    args = base_args(superb_ckpt, superb_corpus, root)
    started = time.monotonic()
    out = _check(run_script(args))
    return SimpleNamespace(root=root, args=args, output=out, seconds=time.monotonic() - started,
                           ckpt=superb_ckpt, corpus=superb_corpus)


def _units(root: Path):
    return {name: (root / "er" / name[3:] if name.startswith("er_") else root / name) for name in ALL_UNITS}


# ----------------------------------------------------------------------------------------------------
# the real run


def test_every_task_trains_and_tests(pipeline):
    root = pipeline.root
    for name, expdir in _units(root).items():
        assert (expdir / units.DONE_FILE).is_file(), name
        result = json.loads((expdir / units.RESULT_FILE).read_text())
        pred = expdir / result["prediction_file"]
        assert pred.exists() and units.prediction_sha256(pred) == result["prediction_sha256"], name
        assert result["params"] == 2_520_064  # the tiny checkpoint's subnet, read from the s3prl log
        assert (root / "logs" / f"{name}.{'layers' if name == 'qbe' else 'train'}.log").is_file()
        assert result["percent"] == pytest.approx(units.to_percent(result["task"], result["value"]))
    results = {n: json.loads((d / units.RESULT_FILE).read_text()) for n, d in _units(root).items()}
    assert results["asr"]["split"] == "test-clean" and results["asr"]["prediction_file"] == "test-clean-noLM-hyp.ark"
    for fold in range(1, 6):  # each ER fold really tested its own session
        assert results[f"er_fold{fold}"]["prediction_file"] == f"test_fold{fold}_predict.txt"
        assert (root / "er" / f"fold{fold}" / f"test_fold{fold}_predict.txt").read_text().startswith(f"Ses0{fold}")
    # ASV: both saved checkpoints were evaluated on the test trials and the best EER's predictions kept
    sweep = json.loads((root / "asv" / units.SWEEP_FILE).read_text())
    assert sorted(sweep["eer_by_step"]) == ["2", "4"]
    assert sweep["best_eer"] == min(sweep["eer_by_step"].values()) == results["asv"]["value"]
    chosen = root / "asv" / "sweep" / f"states-{sweep['best_step']}" / "test_predict.txt"
    assert chosen.read_bytes() == (root / "asv" / "test_predict.txt").read_bytes()
    # SD: the test predictions scored at all ten grid points, the lowest DER reported
    sd = results["sd"]
    assert sorted(sd["scoring"]["grid"]) == sorted(f"th{t}_med{m}" for t in ("0.3", "0.4", "0.5", "0.6", "0.7")
                                                   for m in (1, 11))
    assert sd["value"] == min(sd["scoring"]["grid"].values()) and 0 <= sd["value"]
    assert sorted(p.name for p in (root / "sd" / "scoring" / "predictions").iterdir()) == sorted(
        f"{line.split()[0]}.h5" for line in (pipeline.corpus / "Libri2Mix" / "data" / "test" / "reco2dur")
        .read_text().splitlines())
    # QbE: nothing trained; every hidden state of the tiny model's small subnet (projection + 12 layers) scored
    # on dev, the best of them on test
    qbe = results["qbe"]
    assert sorted(qbe["dev_mtwv_by_layer"], key=int) == [str(i) for i in range(13)]
    assert qbe["dev_mtwv_by_layer"][str(qbe["layer"])] == max(qbe["dev_mtwv_by_layer"].values())
    assert (root / "qbe" / "layers" / f"test-{qbe['layer']}" / "benchmark.stdlist.xml").read_bytes() == \
        (root / "qbe" / "benchmark.stdlist.xml").read_bytes()
    assert not list((root / "qbe").glob("*.ckpt"))
    # SF: slot-type F1 with the slot-value CER beside it
    assert 0 <= results["sf"]["value"] <= 1 and 0 <= results["sf"]["extra"]["slot_value_cer"]
    summary = json.loads((root / report.SUMMARY_JSON).read_text())
    assert [(u["unit"], u["status"]) for u in summary["units"]] == [(n, "done") for n in ALL_UNITS]
    assert "units: 14 done" in pipeline.output and "lighthubert-s3prl collect" in pipeline.output
    print(f"\n10 tasks / 14 units trained and tested in {pipeline.seconds:.0f} s")


def test_collect_builds_the_table(pipeline, tmp_path):
    out = tmp_path / "table"
    assert cli_main(["collect", str(pipeline.root), "-o", str(out), "-q"]) == 0
    data = json.loads((out / "superb_results.json").read_text())
    ours = data["rows"][0]
    assert ours["kind"] == "ours" and ours["params_m"] == pytest.approx(2.520064)
    for task in ALL_TASKS:
        cell = ours["tasks"][task]
        assert cell["status"] == "done" and isinstance(cell["percent"], float), (task, cell)
    sf = json.loads((pipeline.root / "sf" / units.RESULT_FILE).read_text())
    assert ours["tasks"]["sf"]["second"] == pytest.approx(100 * sf["extra"]["slot_value_cer"])
    qbe = json.loads((pipeline.root / "qbe" / units.RESULT_FILE).read_text())
    assert ours["tasks"]["qbe"]["percent"] == qbe["value"]  # MTWV as it is
    ks = json.loads((pipeline.root / "ks" / units.RESULT_FILE).read_text())
    assert ours["tasks"]["ks"]["percent"] == pytest.approx(100 * ks["value"])
    folds = [json.loads((pipeline.root / "er" / f"fold{i}" / units.RESULT_FILE).read_text())["percent"]
             for i in range(1, 6)]
    assert ours["tasks"]["er"]["percent"] == pytest.approx(sum(folds) / 5)
    # all ten tasks: the full score, no longer partial (in the offline column: synthetic speech, ci scale)
    assert data["score_tasks"] == list(ALL_TASKS) and data["score_partial"] is False
    values = {t: (ours["tasks"][t]["percent"], ours["tasks"][t]["second"]) if t == "sf" else ours["tasks"][t]["percent"]
              for t in ALL_TASKS}
    assert ours["superb_score"] == pytest.approx(superb_score(values).value)
    assert [r["name"] for r in data["rows"][1:]] == ["LightHuBERT Small", "HuBERT Base", "DistilHuBERT", "DPHuBERT"]
    md = (out / "superb_results.md").read_text()
    assert "| SUPERB score |" in md and "SUPERB score over all 10 tasks" in md and "partial" not in md
    assert (out / "superb_results.csv").is_file() and (out / "superb_results.png").stat().st_size > 1000


def test_package_public_archive_validates(pipeline, tmp_path, capsys):
    out = tmp_path / "predict.zip"
    assert cli_main(["package", "public", "--from", str(pipeline.root), "-o", str(out)]) == 0
    assert "valid public-set submission (14 file(s))" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        names = sorted(i.filename for i in archive.infolist() if not i.is_dir())
        assert archive.read("predict/sv_public/predict.txt") == (pipeline.root / "asv" / "test_predict.txt").read_bytes()
        assert archive.read("predict/sd_public/frame_shift").strip() == b"320"
    assert names == sorted(["predict/asr_public/predict.ark", "predict/ic_public/predict.csv",
                            "predict/ks_public/predict.txt", "predict/pr_public/predict.ark",
                            "predict/sid_public/predict.txt", "predict/sv_public/predict.txt",
                            "predict/sf_public/predict.ark", "predict/qbe_public/benchmark.stdlist.xml",
                            "predict/sd_public/frame_shift"] +
                           [f"predict/er_fold{i}_public/predict.txt" for i in range(1, 6)] +
                           [f"predict/sd_public/scoring/predictions/{p.name}"
                            for p in (pipeline.root / "sd" / "scoring" / "predictions").iterdir()])
    assert cli_main(["package", "validate", str(out)]) == 0


def test_incomplete_run_is_shown_and_refused(pipeline, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(pipeline.root, partial, ignore=shutil.ignore_patterns("*.ckpt"))
    shutil.rmtree(partial / "er" / "fold3")
    table_dir = tmp_path / "table"
    assert cli_main(["collect", str(partial), "-o", str(table_dir), "-q"]) == 0
    row = json.loads((table_dir / "superb_results.json").read_text())["rows"][0]
    assert row["tasks"]["er"]["display"] == "4/5 folds" and row["tasks"]["er"]["percent"] is None
    assert cli_main(["package", "public", "--from", str(partial), "-o", str(tmp_path / "p.zip")]) == 2
    err = capsys.readouterr().err
    assert "er: 4/5 folds finished (fold3 missing)" in err and "all 5 folds" in err
    assert not (tmp_path / "p.zip").exists()


def test_rerun_skips_finished_units(pipeline):
    stamps = {p: p.stat().st_mtime_ns for p in pipeline.root.rglob("*.ckpt")}
    logs = {p: p.stat().st_size for p in (pipeline.root / "logs").iterdir()}
    started = time.monotonic()
    out = _check(run_script(pipeline.args))
    assert time.monotonic() - started < 120
    for unit in ("pr", "ks", "ic", "sid", "er/fold1", "er/fold5", "asr", "asv", "sd", "qbe", "sf"):
        assert f"{unit}: skipped, finished earlier" in out
    assert "training (log" not in out and "testing" not in out and "units: 14 skipped" in out
    assert {p: p.stat().st_mtime_ns for p in pipeline.root.rglob("*.ckpt")} == stamps  # no new training
    assert {p: p.stat().st_size for p in (pipeline.root / "logs").iterdir()} == logs
    summary = json.loads((pipeline.root / report.SUMMARY_JSON).read_text())
    assert {u["status"] for u in summary["units"]} == {"skipped"}


def test_interrupted_training_resumes_from_latest_checkpoint(pipeline, tmp_path):
    """A unit whose training stopped after saving states-4.ckpt continues with s3prl -a, in a moved root."""
    moved = tmp_path / "moved"
    shutil.copytree(pipeline.root, moved)
    for name in (units.DONE_FILE, units.RESULT_FILE, units.TRAIN_DONE_FILE):
        (moved / "ks" / name).unlink()
    args = base_args(pipeline.ckpt, pipeline.corpus, moved, tasks="ks")
    out = _check(run_script(args))
    assert "ks: resuming training from states-4.ckpt" in out and "units: 1 done" in out
    log = (moved / "logs" / "ks.train.log").read_text(errors="replace")
    last_run = log.rsplit("=====", 2)[-2]
    assert f"Resume from {moved / 'ks' / 'states-4.ckpt'}" in last_run
    result = json.loads((moved / "ks" / units.RESULT_FILE).read_text())
    assert result["test_log"].startswith(str(moved)) and (moved / "ks" / units.DONE_FILE).is_file()


# ----------------------------------------------------------------------------------------------------
# dry run and bad input (no s3prl process)


def test_help():
    proc = run_script(["--help"], timeout=120)
    assert proc.returncode == 0
    for flag in ("--tasks", "--data-config", "--scale", "--lr", "--exp-root", "--gpus", "--dry-run", "-k", "-g"):
        assert flag in proc.stdout


def test_dry_run_lists_commands(superb_corpus, superb_ckpt, tmp_path, capsys):
    root = tmp_path / "dry"
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text("subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_ratio: 2.0}\n")
    argv = ["-u", "lighthubert_subnet", "-k", str(superb_ckpt), "-g", str(subnet), "--tasks", "all",
            "--data", str(superb_corpus), "--exp-root", str(root), "--dry-run", "--gpus", "2", "--lr", "sid=5e-3", "--s3prl-args", "-l -1",
            # 2 GPUs halve every task's accumulation; KS, IC and ASR accumulate once, so double it for all
            "--set", "runner.gradient_accumulate_steps=2"]
    assert runner.main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    train = [line for line in lines if " -m train " in line]
    test = [line for line in lines if " -m evaluate " in line]
    assert len(train) == 13 and len(test) == 14  # QbE trains nothing: its one line evaluates a layer
    qbe = next(line for line in test if "-d quesst14_dtw" in line)
    assert "-t dev -p" in qbe and "-l LAYER" in qbe and f"{root}/qbe/layers/dev-LAYER" in qbe
    assert any("-m lighthubert_s3prl.upstream.probe -u lighthubert_subnet" in line for line in lines)
    test = [line for line in test if line != qbe]
    assert all("torch.distributed.run --standalone --nproc_per_node=2 -m lighthubert_s3prl.run_downstream" in line
               for line in train)
    assert all("-m lighthubert_s3prl.run_downstream" in line and "torch.distributed" not in line for line in test)
    assert all(f"-k {superb_ckpt} -g {subnet}" in line and " -a " in line and "--device cuda" in line
               and line.split(" > ")[0].rstrip().endswith(" -l -1") for line in train)
    asr_test = next(line for line in test if "/asr/" in line)
    assert "-t test-clean" in asr_test and "dev-clean-best.ckpt" in asr_test
    for fold in range(1, 6):
        assert any(f"test_fold=\"fold{fold}\"" in line and f"/er/fold{fold}" in line for line in train)
    assert "states-N.ckpt" in out and "nothing was run or written" in out
    assert not root.exists()


@pytest.mark.parametrize("s3prl_flags", [
    ["--s3prl-args", "-f"], ["--s3prl-args=-f"], ["--", "-f"], ["--s3prl-args", "-f -l -1"], ["--", "-f", "-l", "-1"],
    ["--s3prl-args", "-f", "--", "-l", "-1"],
])
def test_s3prl_flags_pass_to_training_the_natural_ways(s3prl_flags, superb_corpus, superb_ckpt, tmp_path, capsys):
    argv = ["-u", "lighthubert_local", "-k", str(superb_ckpt), "--tasks", "ks", "--data", str(superb_corpus),
            "--exp-root", str(tmp_path / "e"), "--dry-run", "--gpus", "0"] + s3prl_flags
    assert runner.main(argv) == 0
    lines = [line.split(" > ")[0].rstrip() for line in capsys.readouterr().out.splitlines() if " -m " in line]
    train = [line for line in lines if " -m train " in line]
    evaluate = [line for line in lines if " -m evaluate " in line]
    expected = " ".join(a for a in s3prl_flags if a not in ("--", "--s3prl-args")).replace("--s3prl-args=", "")
    assert len(train) == 1 and train[0].endswith(f" {expected}"), train
    assert evaluate and not any(" -f" in line for line in evaluate)


def test_the_shell_script_passes_s3prl_flags_after_its_options(superb_corpus, superb_ckpt, tmp_path):
    proc = run_script(["-u", "lighthubert_local", "-k", str(superb_ckpt), "--tasks", "ks", "--data",
                       str(superb_corpus), "--exp-root", str(tmp_path / "e"), "--dry-run", "--gpus", "0",
                       "--s3prl-args", "-f"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert any(" -m train " in line and line.split(" > ")[0].rstrip().endswith(" -f") for line in proc.stdout.splitlines())


def test_data_config_yaml_and_task_roots(superb_corpus, superb_ckpt, tmp_path, capsys):
    data = tmp_path / "data.yaml"
    data.write_text(f"default: {superb_corpus}\nks:\n  root: {superb_corpus}\n")
    argv = ["-u", "lighthubert_local", "-k", str(superb_ckpt), "--tasks", "ks,er", "--data-config", str(data),
            "--task-data", f"er={superb_corpus}", "--er-folds", "2", "--exp-root", str(tmp_path / "e"),
            "--dry-run", "--gpus", "0"]
    assert runner.main(argv) == 0
    out = capsys.readouterr().out
    assert "/er/fold2" in out and "/er/fold1" not in out and "# dry run: 2 unit(s)" in out


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "ks,se"], "unknown task(s) se"),
    (["--data", "/nonexistent/superb"], "data root /nonexistent/superb does not exist"),
    (["--no-data"], "no data root for task(s) ks"),
    (["-k", "/nonexistent/ckpt.pt"], "checkpoint not found: /nonexistent/ckpt.pt"),
    (["--no-ckpt"], "-u lighthubert_local needs a checkpoint"),
    (["-u", "lighthubert_subnet"], "-u lighthubert_subnet needs the subnet"),
    (["-g", "/nonexistent/subnet.yaml"], "subnet config not found"),
    (["--lr", "kws=1e-3"], "unknown task 'kws'"),
    (["--lr", "ks=fast"], "is not a number"),
    (["--set", "runner.total_steps"], "expected KEY=VALUE"),
    (["--tasks", "er", "--er-folds", "7"], "unknown ER fold"),
    (["--data-config", "/nonexistent/data.yaml"], "no such file"),
    (["--gpus", "-1"], "--gpus must be 0 or more"),
    (["--s3prl-args", "-d asr"], "-d is set by the runner"),
    (["--", "-n", "other"], "-n is set by the runner"),
    (["--s3prl-args", "-l 'unclosed"], "No closing quotation"),
])
def test_bad_input_is_refused_with_the_reason(superb_corpus, superb_ckpt, tmp_path, capsys, extra, message):
    argv = ["-u", "lighthubert_local", "-k", str(superb_ckpt), "--tasks", "ks", "--data", str(superb_corpus),
            "--exp-root", str(tmp_path / "exp"), "--gpus", "0"]
    if "--no-data" in extra:
        argv.remove("--data"), argv.remove(str(superb_corpus))
    if "--no-ckpt" in extra:
        argv.remove("-k"), argv.remove(str(superb_ckpt))
    if "-u" in extra:
        argv = argv[2:]
    argv += [e for e in extra if e not in ("--no-data", "--no-ckpt")]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_superb: error:") and message in err, err
    assert not (tmp_path / "exp").exists()


def test_bad_config_override_and_other_model_root(pipeline, superb_ckpt, superb_corpus, tmp_path, capsys):
    argv = ["-u", "lighthubert_local", "-k", str(superb_ckpt), "--tasks", "ks", "--data", str(superb_corpus),
            "--exp-root", str(tmp_path / "exp"), "--gpus", "0", "--set", "bogus_key=1"]
    assert runner.main(argv) == 2
    assert "unknown override 'bogus_key'" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    shutil.copy(superb_ckpt, other)
    argv = ["-u", "lighthubert_local", "-k", str(other), "--tasks", "ks", "--data", str(superb_corpus),
            "--exp-root", str(pipeline.root), "--gpus", "0"]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds runs of another model" in err and "choose another --exp-root" in err


def test_script_reports_errors_with_exit_code_2(tmp_path):
    proc = run_script(["-u", "lighthubert_local", "-k", tmp_path / "missing.pt", "--tasks", "ks", "--data", tmp_path],
                      timeout=300)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr


# ----------------------------------------------------------------------------------------------------
# quickstart


def test_quickstart_ranks_its_rows_and_resumes(superb_corpus, tmp_path, capsys):
    from lighthubert_s3prl.commands import quickstart

    work = tmp_path / "qs"
    argv = [str(work), "--tasks", "ks", "--steps", "4", "--distil-steps", "2", "--scale", "ci", "--preset", "ci",
            "--corpus", str(superb_corpus)]
    assert quickstart.main(argv) == 0
    out = capsys.readouterr().out
    # the three rows, their parameter counts (the tiny model: 2.52 M; fbank: none), the offline score column
    assert "| **LightHuBERT tiny, distilled from fbank** | 2.52 |" in out
    assert "| **LightHuBERT tiny, random init** | 2.52 |" in out
    assert "| **fbank_no_cmvn (no weights)** | 0.00 |" in out
    assert "mini-SUPERB score (synthetic, not comparable to the leaderboard)" in out
    assert re.search(r"^ranking by mini-SUPERB score over KS: .+ > .+ > .+; distilled beats random on [01]/1 tasks$",
                     out, re.MULTILINE)
    for name in ("tiny_random_seed0.pt", "tiny_distilled_seed0.pt"):
        assert (work / "checkpoints" / name).is_file()
    for row in ("distilled", "random", "fbank"):
        assert (work / "exp" / row / "ks" / units.DONE_FILE).is_file()
    assert (work / "results" / "superb_results.md").is_file()
    assert quickstart.main(argv) == 0  # everything is reused
    again = capsys.readouterr().out
    assert "units: 3 skipped" in again

def _upstream_weights(checkpoint: Path):
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("Upstream")


def test_fine_tuning_with_f_trains_the_upstream_and_saves_it(pipeline, superb_ckpt, superb_corpus, tmp_path):
    """-f through the runner: the saved checkpoint holds the upstream, changed by training except what
    freeze_cnn keeps; the frozen run of the same task saved no upstream at all."""
    from lighthubert_s3prl.upstream.expert import UpstreamExpert

    options = tmp_path / "finetune.yaml"
    options.write_text("freeze_cnn: true\n")
    root = tmp_path / "ft"
    args = base_args(superb_ckpt, superb_corpus, root, tasks="ks") + ["-g", options, "--s3prl-args", "-f"]
    _check(run_script(args))
    saved = _upstream_weights(root / "ks" / "states-4.ckpt")
    assert saved is not None, "a fine-tuned run must save the upstream's weights"
    initial = UpstreamExpert(str(superb_ckpt)).state_dict()
    assert set(saved) == set(initial)
    changed = {k for k in initial if not initial[k].equal(saved[k])}
    cnn = {k for k in initial if k.startswith("model.feature_extractor.")}
    assert cnn and not changed & cnn, f"freeze_cnn: the CNN must not move, moved: {sorted(changed & cnn)[:3]}"
    assert "model.post_extract_proj.weight" in changed
    assert all(any(k.startswith(f"model.encoder.layers.{i}.") for k in changed) for i in range(12))
    assert json.loads((root / "ks" / units.RESULT_FILE).read_text())["split"] == "test"
    assert _upstream_weights(pipeline.root / "ks" / "states-4.ckpt") is None


def test_a_subnet_grid_through_the_real_runner_two_units_at_once(superb_ckpt, superb_corpus, tmp_path, capsys):
    """3 subnets x (KS, one ER fold) with --executor local:2, then the printed collect command over the grid."""
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(
        "subnets:\n"
        "  - {name: narrow, subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_embed: 192}}\n"
        "  - {name: mid, subnet: {embed_dim: 96, layer_num: 11, heads_num: 1, ffn_embed: 256}}\n"
        "  - {name: full, subnet: {embed_dim: 128, layer_num: 12, heads_num: 2, ffn_embed: 512}}\n")
    root = tmp_path / "grid"
    args = base_args(superb_ckpt, superb_corpus, root, tasks="ks,er") + [
        "--er-folds", "1", "--executor", "local:2", "--subnets", grid_file]
    args.remove("--threads"), args.remove("1")  # let the runner divide the CPUs among the units itself
    out = _check(run_script(args))
    assert "units: 6 done" in out
    from lighthubert_s3prl.cpu_budget import cpu_budget

    per_process = max(1, cpu_budget().cpus // 2)
    assert f"threads: {per_process} thread(s) per process" in out and "2 process(es) at a time" in out
    record = json.loads((root / "grid.json").read_text())
    for member in record["members"]:
        for unit in ("ks", "er/fold1"):
            result = json.loads((root / member["name"] / unit / units.RESULT_FILE).read_text())
            assert result["params"] == member["params"], (member["name"], unit)  # the unit ran that subnet
    collect = next(line for line in out.splitlines() if line.startswith("table:"))
    argv = collect.split("lighthubert-s3prl ", 1)[1].split("   (")[0].split()
    assert argv == ["collect", str(root), "-o", f"{root}/results"]
    assert cli_main(argv + ["-q"]) == 0
    table = json.loads((root / "results" / "superb_results.json").read_text())
    ours = [row for row in table["rows"] if row["kind"] == "ours"]
    assert [(r["name"], r["params_m"], r["gmacs_per_second"]) for r in ours] == \
        [(m["name"], m["params"] / 1e6, m["gmacs_per_second"]) for m in record["members"]]
    assert all(r["tasks"][t]["status"] == "done" for r in ours for t in ("ks",))
    assert (root / "results" / "superb_grid.png").stat().st_size > 0
