"""``--executor slurm``: every unit a submitit job, driven here through submitit's LocalExecutor (the same
code path; ``LIGHTHUBERT_S3PRL_SUBMITIT_CLUSTER=local``). The jobs are real processes that rebuild the unit's
runner from the pickled options; s3prl itself is ``tests/fake_s3prl.py`` (the recorder of
``test_superb_runner_states`` as a program), so a job is seconds and its files are known exactly.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lighthubert_s3prl.superb import cluster, units
from lighthubert_s3prl.superb.options import RunnerError, RunOptions, SlurmSettings
from lighthubert_s3prl.superb.runner import SuperbRunner, main as runner_main, run_grid

REPO = Path(__file__).resolve().parents[1]
GRID = ("subnets:\n  - {name: narrow, subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_embed: 192}}\n"
        "  - {name: full, subnet: {embed_dim: 128, layer_num: 12, heads_num: 2, ffn_embed: 512}}\n")


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> str:
    """An executable standing in for the python that runs s3prl: it runs tests/fake_s3prl.py instead."""
    path = tmp_path / "fake-python"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'fake_s3prl.py'} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(cluster.CLUSTER_ENV, "local")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)  # no data behind "/data"
    return str(path)


def options(root: Path, python: str, ckpt: Path, **slurm) -> RunOptions:
    tasks = ["ks", "er"]
    return RunOptions(upstream="lighthubert_local", tasks=tasks, data={t: {"root": "/data"} for t in tasks},
                      exp_root=root, ckpt=str(ckpt), device="cpu", gpus=0, er_folds=["fold1"], python=python,
                      slurm=SlurmSettings(folder=root / "slurm", **slurm))


def jobs_of(expdir: Path) -> list:
    return json.loads((expdir / cluster.JOBS_FILE).read_text())


def test_each_unit_runs_as_its_own_job_and_records_it(fake_python, tiny_ckpt, tmp_path):
    root = tmp_path / "exp"
    outcomes = SuperbRunner(options(root, fake_python, tiny_ckpt, time_min=5)).run()
    assert [(o.unit, o.status) for o in outcomes] == [("ks", "done"), ("er_fold1", "done")]
    job_ids = set()
    for expdir in (root / "ks", root / "er" / "fold1"):
        runs = jobs_of(expdir)
        result = json.loads((expdir / units.RESULT_FILE).read_text())
        assert len(runs) == 1 and runs[0]["job"] == result["job"] and result["value"] == pytest.approx(0.75)
        job_ids.add(result["job"])
        assert not (expdir / units.LOCK_FILE).exists()
    assert len(job_ids) == 2  # one job per unit
    assert list((root / "slurm").glob("*_submission.sh")) or list((root / "slurm").iterdir())
    # a second run submits nothing: every unit is done
    again = SuperbRunner(options(root, fake_python, tiny_ckpt, time_min=5)).run()
    assert {o.status for o in again} == {"skipped"}
    assert all(len(jobs_of(d)) == 1 for d in (root / "ks", root / "er" / "fold1"))


def run_two_subnet_grid(tmp_path: Path, python: str, ckpt: Path, time_min: int) -> Path:
    """The grid of GRID (2 subnets x KS and one ER fold) as unit jobs, two at a time; every unit must finish."""
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    root = tmp_path / "exp"
    outcomes = run_grid(options(root, python, ckpt, time_min=time_min, array_parallelism=2), str(grid_file))
    assert sorted((o.unit, o.status) for o in outcomes) == [
        ("full/er_fold1", "done"), ("full/ks", "done"), ("narrow/er_fold1", "done"), ("narrow/ks", "done")]
    return root


def test_a_grid_through_jobs(fake_python, tiny_ckpt, tmp_path):
    root = run_two_subnet_grid(tmp_path, fake_python, tiny_ckpt, time_min=5)
    for member in ("narrow", "full"):
        cmd = json.loads((root / member / "ks" / units.RESULT_FILE).read_text())
        assert cmd["ckpt_file"] == str(root / member / "model.pt")  # the job ran its member's export


def test_a_unit_that_hits_its_time_limit_is_requeued_and_resumes(fake_python, tiny_ckpt, tmp_path, monkeypatch):
    """The first training of KS hangs after its first checkpoint; the job's time runs out, submitit asks for a
    checkpoint, the job stops s3prl and is requeued under the same id, and the next run resumes with -a."""
    monkeypatch.setenv("FAKE_S3PRL_SLOW_TRAIN", "/ks")
    root = tmp_path / "exp"
    opts = replace(options(root, fake_python, tiny_ckpt, time_min=1, signal_delay_s=48), tasks=["ks"],
                   data={"ks": {"root": "/data"}})
    outcomes = SuperbRunner(opts).run()
    assert [(o.unit, o.status) for o in outcomes] == [("ks", "done")]
    runs = jobs_of(root / "ks")
    assert len(runs) == 2 and runs[0]["job"] == runs[1]["job"]  # requeued: the same job, run twice
    marker = json.loads((root / "ks" / units.TRAIN_DONE_FILE).read_text())
    assert marker["resumed_from"] == "states-2.ckpt"  # continued, not started again
    assert sorted(p.name for p in (root / "ks").glob("states-*.ckpt")) == ["states-2.ckpt", "states-4.ckpt"]
    # the hanging training did not outlive its job: nothing writes beside the requeued run
    left = [d for d in Path("/proc").glob("[0-9]*") if _cmdline(d).count("fake_s3prl.py") and str(root) in _cmdline(d)]
    assert not left, [_cmdline(d) for d in left]


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_lock_left_by_the_same_job_is_taken_over_and_another_jobs_is_respected(tmp_path, monkeypatch):
    expdir = tmp_path / "ks"
    expdir.mkdir()
    units.write_json(expdir / units.LOCK_FILE, {"pid": 1, "host": "node-elsewhere", "job": "77_3"})
    monkeypatch.setenv(units.JOB_ID_ENV, "77_3")
    assert units.lock_owner(expdir) is None
    monkeypatch.setenv(units.JOB_ID_ENV, "78_0")
    assert units.lock_owner(expdir)["job"] == "77_3"
    monkeypatch.delenv(units.JOB_ID_ENV)
    assert units.lock_owner(expdir) is not None


def test_job_parameters_reach_submitit(tmp_path, monkeypatch):
    monkeypatch.setenv(cluster.CLUSTER_ENV, "local")
    settings = SlurmSettings(folder=tmp_path / "s", partition="gpu", time_min=90, cpus_per_unit=8, mem_gb=32,
                             array_parallelism=3, account="lab", extra={"exclude": "node3"})
    opts = RunOptions(upstream="x", tasks=["ks"], data={}, exp_root=tmp_path, gpus=2, slurm=settings)
    local = cluster.make_executor(settings, opts).parameters
    assert (local["timeout_min"], local["gpus_per_node"], local["tasks_per_node"], local["signal_delay_s"]) == \
        (90, 2, 1, 120)
    monkeypatch.setenv(cluster.CLUSTER_ENV, "slurm")
    slurm = cluster.make_executor(settings, opts)._executor.parameters
    assert (slurm["partition"], slurm["time"], slurm["cpus_per_task"], slurm["mem"], slurm["array_parallelism"],
            slurm["account"], slurm["gpus_per_node"]) == ("gpu", 90, 8, "32GB", 3, "lab", 2)
    assert slurm["additional_parameters"] == {"exclude": "node3"}


@pytest.mark.parametrize("argv, message", [
    (["--slurm-partition", "gpu"], "--slurm-partition applies to --executor slurm only"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be at least 1"),
    (["--executor", "slurm", "--slurm-extra", "novalue"], "expected KEY=VALUE"),
])
def test_bad_cluster_options_are_refused(argv, message, tiny_ckpt, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    base = ["-u", "lighthubert_local", "-k", str(tiny_ckpt), "--tasks", "ks", "--data", str(corpus),
            "--exp-root", str(tmp_path / "e"), "--dry-run"]
    assert runner_main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_without_submitit_the_install_line_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(RunnerError, match=r"pip install 'lighthubert-s3prl\[slurm\]'"):
        cluster.make_executor(SlurmSettings(folder=tmp_path), RunOptions(upstream="x", tasks=[], data={},
                                                                         exp_root=tmp_path))
    assert os.environ.get(cluster.CLUSTER_ENV) in (None, "local", "slurm")


def _slurm_answers() -> bool:
    import shutil
    import subprocess

    if not shutil.which("sinfo"):
        return False
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout.split()
    return bool(state) and state[0] in ("idle", "mix", "alloc")


REAL_SLURM_ENV = "LIGHTHUBERT_TEST_REAL_SLURM"  # .ci/run sets it after starting scripts/slurm_local.sh


@pytest.mark.timeout(300)
def test_a_grid_on_a_real_one_machine_slurm(fake_python, tiny_ckpt, tmp_path, monkeypatch):
    """The same grid as above through a real slurmctld/slurmd (scripts/slurm_local.sh): sbatch job arrays,
    SLURM job ids recorded with the units."""
    if not _slurm_answers():
        if os.environ.get(REAL_SLURM_ENV):
            pytest.fail(f"{REAL_SLURM_ENV} is set but no SLURM cluster answers (scripts/slurm_local.sh start)")
        pytest.skip("no SLURM cluster answers here; scripts/slurm_local.sh start runs one (as root)")
    monkeypatch.delenv(cluster.CLUSTER_ENV)
    root = run_two_subnet_grid(tmp_path, fake_python, tiny_ckpt, time_min=10)
    runs = [jobs_of(root / m / u)[0] for m in ("narrow", "full") for u in ("ks", "er/fold1")]
    array = {r["job"].split("_")[0] for r in runs}
    assert len(array) == 1 and sorted(r["job"].split("_")[1] for r in runs) == ["0", "1", "2", "3"]  # one array
    assert all(r["slurm_job_id"] for r in runs)
    scripts = list((root / "slurm").glob("*submission.sh"))
    assert scripts and "#SBATCH --array=0-3%2" in scripts[0].read_text()


def test_a_job_that_ends_without_a_result_fails_its_unit_with_the_reason(fake_python, tiny_ckpt, tmp_path):
    """A job that raises (here: asked for a unit its rebuilt runner does not have) is a failed unit whose
    message carries the job's error, not a hang or a crash of the submitting command."""
    root = tmp_path / "exp"
    runner = SuperbRunner(options(root, fake_python, tiny_ckpt, time_min=5))
    stray = units.Unit("sid", None, root / "sid")  # sid is not among this run's tasks (ks, er)
    [outcome] = cluster.run_on_cluster([(runner, stray)], runner.opts.slurm)
    assert outcome.status == "failed" and outcome.unit == "sid"
    assert "ended without a result" in outcome.message
    assert "unit 'sid' is not among this run's units (ks, er_fold1)" in outcome.message


def test_an_unknown_submitit_cluster_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(cluster.CLUSTER_ENV, "debug")
    with pytest.raises(RunnerError, match=r"LIGHTHUBERT_S3PRL_SUBMITIT_CLUSTER='debug': use slurm \(the default\) or local"):
        cluster.make_executor(SlurmSettings(folder=tmp_path), RunOptions(upstream="x", tasks=[], data={},
                                                                         exp_root=tmp_path))
