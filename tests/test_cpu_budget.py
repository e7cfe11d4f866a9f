"""The thread count of every process we start: the CPUs it may really use (affinity mask, the tightest cgroup
CPU quota above it), divided among the processes running at once; --threads and OMP_NUM_THREADS override."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lighthubert_s3prl import cpu_budget
from lighthubert_s3prl.cpu_budget import CpuBudget, cgroup_cpu_quota, choose_threads


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_on_the_way_to_the_root(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_cgroup"
    _write(proc, "0::/slice/job/step\n")
    _write(root / "slice" / "cpu.max", "max 100000\n")
    _write(root / "slice" / "job" / "cpu.max", "150000 100000\n")  # 1.5 CPUs
    _write(root / "slice" / "job" / "step" / "cpu.max", "400000 100000\n")  # looser than its parent
    assert cgroup_cpu_quota(proc, root) == pytest.approx(1.5)


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc_cgroup"
    _write(proc, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "300000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, root) == pytest.approx(3.0)
    _write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(proc, root) is None
    assert cgroup_cpu_quota(tmp_path / "missing", root) is None  # no /proc/self/cgroup: no quota, no error


def test_available_cpus_are_the_affinity_capped_by_the_quota():
    assert CpuBudget(affinity=8, quota=None).cpus == 8
    assert CpuBudget(affinity=8, quota=2.5).cpus == 2  # a fraction of a CPU is not a thread's worth
    assert CpuBudget(affinity=2, quota=6.0).cpus == 2
    assert CpuBudget(affinity=4, quota=0.5).cpus == 1


def test_affinity_mask_not_host_core_count(monkeypatch):
    monkeypatch.setattr(cpu_budget.os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    monkeypatch.setattr(cpu_budget.os, "cpu_count", lambda: 64)
    assert cpu_budget.affinity_cpus() == 3


def test_threads_are_shared_among_concurrent_processes():
    budget = CpuBudget(affinity=8, quota=None)
    no_env: dict = {}
    assert choose_threads(1, budget=budget, environ=no_env).threads == 8
    assert choose_threads(3, budget=budget, environ=no_env).threads == 2
    assert choose_threads(16, budget=budget, environ=no_env).threads == 1  # never zero
    quota = CpuBudget(affinity=16, quota=4.0)
    choice = choose_threads(2, budget=quota, environ=no_env)
    assert choice.threads == 2 and "cgroup CPU quota 4" in choice.reason and "2 process(es)" in choice.reason


def test_explicit_choices_win_and_oversubscription_is_said():
    budget = CpuBudget(affinity=2, quota=None)
    assert choose_threads(1, override=1, budget=budget, environ={"OMP_NUM_THREADS": "6"}).threads == 1
    from_env = choose_threads(1, budget=budget, environ={"OMP_NUM_THREADS": "3"})
    assert from_env.threads == 3 and "OMP_NUM_THREADS" in from_env.reason
    assert choose_threads(1, budget=budget, environ={"OMP_NUM_THREADS": "junk"}).threads == 2
    over = choose_threads(2, override=2, budget=budget, environ={})
    assert over.threads == 2 and "more than the 2 available" in over.reason
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(1, override=0, budget=budget)


def test_superb_processes_get_the_available_cpus(monkeypatch, tmp_path):
    from lighthubert_s3prl.superb.launch import Launcher
    from lighthubert_s3prl.superb.options import RunOptions

    monkeypatch.setattr(cpu_budget, "cpu_budget", lambda *a, **k: CpuBudget(affinity=3, quota=None))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = Launcher(RunOptions(upstream="fbank", tasks=["ks"], data={}, exp_root=tmp_path), tmp_path).env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    env = Launcher(RunOptions(upstream="fbank", tasks=["ks"], data={}, exp_root=tmp_path, threads=1), tmp_path).env()
    assert env["OMP_NUM_THREADS"] == "1"


class FakeCounters:
    """A machine whose busy CPU-seconds, own CPU-seconds and clock the test moves by hand."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def advance(self, seconds: float, others: float, ours: float) -> None:
        """``seconds`` pass with ``others`` CPUs kept busy by other processes and ``ours`` by this one."""
        self.t += seconds
        self.busy += seconds * (others + ours)
        self.own += seconds * ours

    def threads(self, **kwargs) -> "cpu_budget.LoadAwareThreads":
        return cpu_budget.LoadAwareThreads(busy_reader=lambda cpus: self.busy, own_reader=lambda: self.own,
                                           clock=lambda: self.t, **kwargs)


def test_load_aware_threads_leave_the_cpus_others_use():
    machine = FakeCounters()
    threads = machine.threads()
    assert threads.choose(2) == 2  # first forward right away: no evidence yet, the budget
    assert "no interval of 0.2 s yet" in threads.describe()
    machine.advance(1.0, others=0.05, ours=2.0)  # quiet but for a little noise
    assert threads.choose(2) == 2
    machine.advance(1.0, others=0.67, ours=1.33)  # a busy process shares a core with one of our two threads
    assert threads.choose(2) == 1 and threads.others == pytest.approx(0.67)
    machine.advance(1.0, others=1.0, ours=1.0)  # still there, now on its own core
    assert threads.choose(2) == 1
    machine.advance(1.0, others=2.0, ours=0.0)  # two busy processes: never fewer than one thread
    assert threads.choose(2) == 1
    machine.advance(1.0, others=0.0, ours=1.0)  # they are gone
    assert threads.choose(2) == 2
    assert "other processes kept 0.00 of the" in threads.describe()
    machine.advance(1.0, others=2.0, ours=6.0)
    assert threads.choose(8) == 6  # 8 threads of budget, 2 CPUs taken by others
    assert threads.choose(4) == 4  # never more than the budget of the call


def test_load_aware_threads_keep_their_choice_between_close_forwards():
    machine = FakeCounters()
    threads = machine.threads(min_interval_s=0.2)
    machine.advance(1.0, others=1.0, ours=1.0)
    assert threads.choose(2) == 1
    machine.advance(0.05, others=0.0, ours=2.0)  # 50 ms later: too short to measure, the last choice holds
    assert threads.choose(2) == 1
    machine.advance(0.5, others=0.0, ours=2.0)  # measured from the last real look (0.55 s, quiet since)
    assert threads.choose(2) == 2 and threads.interval_s == pytest.approx(0.55)


def test_load_aware_threads_without_counters_use_the_budget():
    threads = cpu_budget.LoadAwareThreads(busy_reader=lambda cpus: None)
    assert threads.choose(3) == 3 and "whole budget" in threads.describe()


def test_proc_stat_counts_only_the_usable_cpus(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    stat.write_text("cpu  900 0 90 5000 10 0 0 0 0 0\n"
                    "cpu0 100 0 10 2000 5 1 2 3 0 0\n"
                    "cpu1 800 0 80 3000 5 0 0 0 0 0\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert cpu_budget._proc_stat_busy({0}, stat) == pytest.approx(116 / tick)
    assert cpu_budget._proc_stat_busy({0, 1}, stat) == pytest.approx(996 / tick)
    assert cpu_budget._proc_stat_busy({5}, stat) is None


def test_the_upstream_runs_each_cpu_forward_with_the_chosen_threads(monkeypatch, tiny_ckpt):
    import torch

    from lighthubert_s3prl.upstream.expert import UpstreamExpert

    seen = []
    expert = UpstreamExpert(str(tiny_ckpt))
    budget = torch.get_num_threads()
    monkeypatch.setattr(expert.threads, "choose", lambda b: 1)
    real = expert.model.forward_utterances
    monkeypatch.setattr(expert.model, "forward_utterances",
                        lambda wavs: seen.append(torch.get_num_threads()) or real(wavs))
    expert([torch.randn(4000), torch.randn(3000)])
    assert seen == [1] and torch.get_num_threads() == budget  # restored after the forward
    fixed = UpstreamExpert(str(tiny_ckpt), cpu_threads="fixed")
    assert fixed.threads is None
    with pytest.raises(Exception, match="cpu_threads='often'; allowed values"):
        UpstreamExpert(str(tiny_ckpt), cpu_threads="often")


def test_cnn_chunks_follow_the_thread_count():
    from lighthubert_s3prl.model.fast_cnn import FoldedConvFeatureExtractor

    cnn = FoldedConvFeatureExtractor([(8, 10, 5), (8, 3, 2)], "default", False)
    assert (cnn.chunk_for(1), cnn.chunk_for(2), cnn.chunk_for(16)) == (50, 200, 200)
    cnn.chunk_frames = 0
    assert cnn.chunk_for(1) == 0
    import torch

    from lighthubert_s3prl.model.config import ModelConfig

    cfg = ModelConfig()
    cnn = FoldedConvFeatureExtractor(cfg.conv_layers, "default", cfg.conv_bias).eval()
    calls = []
    real = cnn._later_layers
    cnn._later_layers = lambda x: calls.append(x.shape[-1]) or real(x)
    wav = torch.randn(1, 16000 * 3)  # 149 frames
    budget = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for threads, chunks in ((1, 3), (2, 1)):
                torch.set_num_threads(threads)
                calls.clear()
                cnn(wav)
                assert len(calls) == chunks, (threads, calls)
    finally:
        torch.set_num_threads(budget)
