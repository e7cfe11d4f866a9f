"""``--executor local:N``: N units at once on one host, each with its share of the CPUs or its own GPUs.

The s3prl processes are the recorder of ``test_superb_runner_states`` (it writes what s3prl would write),
slowed down and watched here so that the number of units running at any moment is known exactly.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from lighthubert_s3prl.superb import runner
from lighthubert_s3prl.superb.launch import Launcher
from lighthubert_s3prl.superb.options import RunnerError, RunOptions, gpu_slots, parse_executor
from lighthubert_s3prl.superb.runner import SuperbRunner

from .test_superb_runner_states import FakeS3prl

TASKS = ["pr", "ks", "ic", "er"]
FOLDS = ["fold1", "fold2", "fold3"]
UNITS = ["pr", "ks", "ic", "er_fold1", "er_fold2", "er_fold3"]


class Watched:
    """The recorder, holding each process for ``seconds`` and counting how many run at once."""

    def __init__(self, fake: FakeS3prl, seconds: float = 0.15) -> None:
        self.fake = fake
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: List[str] = []  # "<mode> <unit>" in start order
        self.devices: Dict[str, Optional[str]] = {}
        self.interrupt_at: Optional[str] = None  # raise KeyboardInterrupt when this train starts

    def unit(self, cmd: Sequence[str]) -> str:
        args = list(cmd)
        path = Path(args[args.index("-p") + 1]) if "-p" in args else Path(args[args.index("-e") + 1]).parent
        parts = path.relative_to(self.fake.root).parts
        return f"er_{parts[1]}" if parts[0] == "er" else parts[0]

    def __call__(self, sr: SuperbRunner, cmd: List[str], log_path: Path):
        mode = cmd[cmd.index("-m", cmd.index("lighthubert_s3prl.run_downstream")) + 1]
        name = self.unit(cmd)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(f"{mode} {name}")
            self.devices[name] = getattr(sr._worker, "cuda_devices", None)
        try:
            if mode == "train" and name == self.interrupt_at:
                raise KeyboardInterrupt
            time.sleep(self.seconds)
            return self.fake(cmd, log_path)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def watched(tmp_path, monkeypatch) -> Watched:
    recorder = Watched(FakeS3prl(tmp_path / "exp"))
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: recorder(self, cmd, log_path))
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)
    return recorder


def make_runner(root: Path, parallel: int, fail_fast: bool = False, device: str = "cpu", gpus: int = 0) -> SuperbRunner:
    opts = RunOptions(upstream="lighthubert_local", tasks=list(TASKS), data={t: {"root": "/data"} for t in TASKS},
                      exp_root=root, ckpt="/models/tiny.pt", device=device, gpus=gpus, er_folds=list(FOLDS),
                      fail_fast=fail_fast, parallel=parallel)
    return SuperbRunner(opts)


@pytest.mark.parametrize("parallel", [2, 3])
def test_n_units_run_at_once_each_exactly_once(parallel, watched):
    outcomes = make_runner(watched.fake.root, parallel).run()
    assert [(o.unit, o.status) for o in outcomes] == [(u, "done") for u in UNITS]
    assert watched.most == parallel
    starts = Counter(watched.started)
    assert all(starts[f"train {u}"] == 1 and starts[f"evaluate {u}"] == 1 for u in UNITS)
    assert sum(starts.values()) == 2 * len(UNITS)
    # units start in order: the first `parallel` units are the first to train (threads race within them)
    assert {s.split()[1] for s in watched.started[:parallel]} == set(UNITS[:parallel])


def test_one_at_a_time_is_the_default_and_is_sequential(watched):
    make_runner(watched.fake.root, 1).run()
    assert watched.most == 1
    assert watched.started == [f"{mode} {u}" for u in UNITS for mode in ("train", "evaluate")]


def test_fail_fast_starts_no_unit_after_a_failure(watched):
    watched.fake.fail = {"train": 1}
    outcomes = make_runner(watched.fake.root, 2, fail_fast=True).run()
    # the two first units were running together when the first failed; nothing else started
    assert [(o.unit, o.status) for o in outcomes] == [("pr", "failed"), ("ks", "failed")]
    assert watched.started == ["train pr", "train ks"] or watched.started == ["train ks", "train pr"]


def test_an_interrupted_parallel_run_resumes_with_nothing_lost_or_run_twice(watched):
    root = watched.fake.root
    watched.interrupt_at = "ic"  # Ctrl-C reaches the runner while ic starts training
    with pytest.raises(KeyboardInterrupt):
        make_runner(root, 2).run()
    first = list(watched.started)
    finished = [u for u in UNITS if (root / (u.replace("er_", "er/")) / "superb_done").is_file()]
    assert "train ic" in first and "ic" not in finished
    assert not any(s.endswith(("fold2", "fold3")) for s in first), "no unit may start after the interrupt"
    watched.started.clear()
    watched.interrupt_at = None
    outcomes = make_runner(root, 2).run()
    assert {o.unit: o.status for o in outcomes} == {u: ("skipped" if u in finished else "done") for u in UNITS}
    again = Counter(watched.started)
    assert all(again[f"train {u}"] == 0 and again[f"evaluate {u}"] == 0 for u in finished)
    assert all(again[f"evaluate {u}"] == 1 for u in UNITS if u not in finished)


def test_each_concurrent_unit_gets_its_own_gpus(watched, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(runner, "gpu_slots", gpu_slots)  # the real one, with the machine's device count faked
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    sr = make_runner(watched.fake.root, 2, device="cuda", gpus=2)
    monkeypatch.setattr(runner, "check_accumulation", lambda *a, **k: None)
    sr.run()
    assert set(watched.devices.values()) == {"4,5", "6,7"}
    assert watched.most == 2


def test_gpu_slots_split_the_visible_devices_without_sharing():
    assert gpu_slots(2, 2, "3,5,7,9", 16) == ["3,5", "7,9"]
    assert gpu_slots(3, 1, None, 4) == ["0", "1", "2"]
    assert gpu_slots(1, 4, " 0, 1,2,3 ", 8) == ["0,1,2,3"]
    with pytest.raises(RunnerError, match=r"local:3 with --gpus 2 needs 6 GPU\(s\).*4 visible \(0,1,2,3\)"):
        gpu_slots(3, 2, None, 4)


@pytest.mark.parametrize("text, expected", [("local", ("local", 1)), ("local:1", ("local", 1)),
                                            ("local:4", ("local", 4)), (" local:2 ", ("local", 2)),
                                            ("slurm", ("slurm", 1))])
def test_executor_values(text, expected):
    assert parse_executor(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:", "local:x", "slurmish", "local:-1", "remote:2", "slurm:2"])
def test_bad_executor_values_are_refused_with_the_forms_allowed(text):
    with pytest.raises(RunnerError, match=r"use local \(one unit at a time\), local:N .* or slurm"):
        parse_executor(text)


def test_cpu_threads_are_divided_among_the_units_at_once(tmp_path, monkeypatch):
    from lighthubert_s3prl import cpu_budget

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_budget, "cpu_budget", lambda *a, **k: cpu_budget.CpuBudget(affinity=6, quota=None))

    def opts(n: int, threads: Optional[int] = None) -> RunOptions:
        return RunOptions(upstream="x", tasks=["ks"], data={}, exp_root=tmp_path, parallel=n, threads=threads)

    assert Launcher(opts(1), tmp_path).threads.threads == 6
    three = Launcher(opts(3), tmp_path)
    assert three.threads.threads == 2 and "3 process(es) at a time" in three.threads.reason
    assert Launcher(opts(4), tmp_path).threads.threads == 1
    assert Launcher(opts(3, threads=5), tmp_path).threads.threads == 5
    env = three.env("2,3")
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert three.env()["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # no slot: the runner's own setting passes through
