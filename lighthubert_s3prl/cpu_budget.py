"""How many intra-op threads a process of ours should use: the CPUs it may really run on, shared by the
processes that run at once.

``os.cpu_count()`` (and torch's default thread count) is the host's core count. In a container, a Slurm job
or under ``taskset`` a process may run on fewer: its affinity mask names the CPUs it may be scheduled on,
and a cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1) caps the CPU time it gets.
More threads than that budget wait on one another at every parallel region, which is what made the CPU
path collapse on a busy machine; so every process we start takes its thread count from here unless the
user names one.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Set, Tuple

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    affinity: int  # CPUs in the process's affinity mask
    quota: Optional[float]  # the tightest cgroup CPU quota above the process, in CPUs; None: unlimited

    @property
    def cpus(self) -> int:
        """Whole CPUs available: the affinity mask, capped by the quota (at least 1)."""
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota + 1e-9)))

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup CPU quota {self.quota:g}"
        return f"{self.cpus} CPU(s) available (affinity {self.affinity} of {os.cpu_count()}, {quota})"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def _cgroup_dirs(proc_cgroup: Path, root: Path) -> Iterator[Path]:
    """The cgroup folders of this process that may hold a CPU quota, innermost first, each up to its root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        names = controllers.split(",") if controllers else []
        if controllers == "":  # cgroup v2: one unified hierarchy
            mounts = [root]
        elif "cpu" in names:  # cgroup v1: the cpu controller's own mount
            mounts = [root / controllers, root / "cpu,cpuacct", root / "cpu"]
        else:
            continue
        for mount in mounts:
            if not mount.is_dir():
                continue
            folder = mount / path.lstrip("/")
            while True:
                yield folder
                if folder == mount:
                    break
                folder = folder.parent
            break


def _quota_in(folder: Path) -> Optional[float]:
    """The CPU quota a cgroup folder sets, in CPUs, or None."""
    try:
        fields = (folder / "cpu.max").read_text().split()  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
    except OSError:
        fields = []
    if fields:
        try:
            return int(fields[0]) / int(fields[1]) if fields[0] != "max" else None
        except (ValueError, IndexError, ZeroDivisionError):
            return None
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> Optional[float]:
    """The tightest CPU quota of the cgroups this process is in (in CPUs), or None when there is none."""
    quotas = [q for q in (_quota_in(folder) for folder in _cgroup_dirs(proc_cgroup, root)) if q is not None]
    return min(quotas) if quotas else None


def affinity_set() -> Set[int]:
    """The CPUs this process may be scheduled on (all of them where the OS does not say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return set(range(os.cpu_count() or 1))


def affinity_cpus() -> int:
    return len(affinity_set())


def cpu_budget(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> CpuBudget:
    return CpuBudget(affinity=affinity_cpus(), quota=cgroup_cpu_quota(proc_cgroup, root))


def choose_threads(concurrent: int = 1, override: Optional[int] = None, budget: Optional[CpuBudget] = None,
                   environ: Optional[Mapping[str, str]] = None) -> ThreadChoice:
    """Threads per process when ``concurrent`` processes run at once: ``override`` when given, else
    ``OMP_NUM_THREADS`` when the environment sets it, else the available CPUs divided among the processes
    (at least 1); the reason says which and why."""
    if override is not None and override < 1:
        raise ValueError(f"a thread count must be at least 1, got {override}")
    budget = budget or cpu_budget()
    environ = os.environ if environ is None else environ
    if override is None and environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        omp = int(environ["OMP_NUM_THREADS"])
        return ThreadChoice(omp, f"{omp} thread(s) per process, from OMP_NUM_THREADS ({budget.describe()})")
    share = max(1, budget.cpus // max(1, concurrent))
    if override is not None:
        note = "" if override * max(1, concurrent) <= budget.cpus else \
            f"; more than the {budget.cpus} available CPU(s) allow, so threads will wait on one another"
        return ThreadChoice(override, f"{override} thread(s) per process, as given (--threads, or the share a "
                                      f"calling command chose){note}")
    return ThreadChoice(share, f"{share} thread(s) per process: {budget.describe()}, {max(1, concurrent)} "
                               f"process(es) at a time (--threads overrides)")


def _proc_stat_busy(cpus: Set[int], path: Path = Path("/proc/stat")) -> Optional[float]:
    """CPU-seconds the CPUs in ``cpus`` have spent busy since boot (None where /proc/stat is unreadable)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, seen = 0, False
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if not (line.startswith("cpu") and line[3:4].isdigit()):
                    continue
                name, *values = line.split()
                if int(name[3:]) in cpus:
                    v = [int(x) for x in values[:8]] + [0] * max(0, 8 - len(values))
                    busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
                    seen = True
    except (OSError, ValueError):
        return None
    return busy / tick if seen else None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadAwareThreads:
    """Intra-op threads for the next CPU forward: the process's thread budget less the CPUs that *other*
    processes kept busy lately.

    Each parallel region of a forward waits for its slowest thread. When another process holds one of the
    CPUs our threads run on, the thread sharing that CPU gets half of it and every region waits for it: on 2
    cores with one busy process beside it, the small subnet ran 2.5-3.5x slower with 2 threads than alone,
    while 1 thread kept its single-thread speed. So before a forward this looks at how much CPU time the
    CPUs of the affinity mask spent busy since the last look, subtracts this process's own, and runs with the
    CPUs left (at least 1, at most the budget). Looks closer together than ``min_interval_s`` reuse the last
    choice; without /proc/stat (not Linux) the budget is used as it is.
    """

    def __init__(self, min_interval_s: float = 0.2, slack: float = 0.25,
                 busy_reader: Callable[[Set[int]], Optional[float]] = _proc_stat_busy,
                 own_reader: Callable[[], float] = _own_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval_s, self.slack = min_interval_s, slack
        self._busy, self._own, self._clock = busy_reader, own_reader, clock
        self.cpus: Set[int] = affinity_set()
        self._last = self._sample()
        self.others: Optional[float] = None  # CPUs other processes kept busy in the last interval
        self.interval_s: Optional[float] = None
        self.threads: Optional[int] = None  # the last choice

    def _sample(self) -> Tuple[float, Optional[float], float]:
        return self._clock(), self._busy(self.cpus), self._own()

    def choose(self, budget: int) -> int:
        """Threads for the next forward, given the process's budget (its configured thread count)."""
        now = self._sample()
        wall = now[0] - self._last[0]
        if now[1] is None or self._last[1] is None:
            self.threads = budget
            return budget
        if wall < self.min_interval_s:  # too short to measure: the last choice, or the budget at first
            self.threads = budget if self.threads is None else self.threads
            return min(self.threads, budget)
        self.others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self.interval_s, self._last = wall, now
        self.threads = max(1, min(budget, math.floor(budget - self.others + self.slack)))
        return min(self.threads, budget)

    @contextmanager
    def applied(self) -> Iterator[int]:
        """``with threads.applied() as n:`` runs the block with ``n`` torch threads, then restores the count."""
        import torch

        budget = torch.get_num_threads()
        n = self.choose(budget)
        if n != budget:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if n != budget:
                torch.set_num_threads(budget)

    def describe(self) -> str:
        if self.threads is None:
            return "load-aware threads: no forward yet"
        if self._last[1] is None:
            return f"{self.threads} thread(s) (load-aware; no CPU counters here, so the whole budget)"
        if self.others is None:
            return (f"{self.threads} thread(s) (load-aware; no interval of {self.min_interval_s:g} s yet to measure "
                    f"others' load in, so the whole budget)")
        return (f"{self.threads} thread(s) (load-aware: other processes kept {self.others:.2f} of the "
                f"{len(self.cpus)} usable CPU(s) busy over the last {self.interval_s:.1f} s)")
