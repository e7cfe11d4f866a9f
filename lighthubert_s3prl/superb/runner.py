"""Batch SUPERB runner behind ``scripts/run_superb.sh``: train and test any set of tasks for one upstream.

This module holds the orchestration (:class:`SuperbRunner`) and the command line. The parts it drives
live beside it, one job each: :mod:`.options` (what is asked, checked), :mod:`.units` (the units, their
state on disk, the dry run), :mod:`.launch` (s3prl command lines and processes), :mod:`.executor`
(training and testing one unit) and :mod:`.report` (the summary). Every s3prl run is its own process, so
a crash in one task cannot take the batch down and each run can be resumed on its own.

Layout of an experiment root (``--exp-root``)::

    run_superb.json            what the root was made for (upstream, -k, -g, scale); guards against mixing
    configs/<task>.yaml        the config each task was built with (tasks.build_config)
    <task>/                    s3prl expdir of asr, asv, ks, ic, pr, sid, sd, sf (qbe: the chosen layer's files)
    er/fold1 .. er/fold5/      one expdir per ER fold (test_fold=foldN)
    asv/sweep/states-N/        ASV: evaluation of each saved checkpoint on the test trials
    qbe/layers/{dev,test}-L/   QbE: DTW on hidden state L (every L on dev, the best dev layer on test)
    sd/scoring/                SD: test predictions, their RTTM at each threshold/median, superb_der.json
    logs/<unit>.{train,test}.log, logs/asv.sweep.log
    summary.json, summary.txt  the last run's outcome per unit, with where each result went

Inside each expdir, besides s3prl's own files, the runner keeps its state:
``superb_train_done.json`` (training finished), ``superb_result.json`` (the test result on the chosen
checkpoint), ``superb_done`` (written last, atomically: the unit is finished and is skipped on re-runs),
``superb_failed.json`` (the last failure), ``.superb_running.json`` (pid of a runner working on it), and
for ASV ``superb_asv_sweep.json`` (EER of every checkpoint and which one was kept), for QbE
``superb_qbe_layers.json`` (hidden-state count and every layer's dev MTWV).

A unit without ``superb_done`` is resumed: finished training is not repeated, interrupted training
continues from the latest ``states-*.ckpt`` (s3prl's ``-a``), and only the test is redone.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import shlex
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import report
from .executor import UnitExecutor
from .launch import Launcher
from .options import (LIGHTHUBERT_ENTRIES, RunnerError, RunOptions, SlurmSettings, batch_plan_for,
                      check_accumulation, default_exp_root, gpu_slots, parse_executor, parse_extra, parse_folds, parse_lr, parse_s3prl_args, parse_sets,
                      parse_task_list, resolve_data, run_subnet)
from .report import format_summary
from .units import (MANIFEST_NAME, RESULT_FILE, TASK_ORDER, Outcome, Unit, make_units, now_iso, print_plan,
                    read_json, tasks_module, unit_is_done, write_json)

if TYPE_CHECKING:  # imports the task registry, which the runner loads lazily
    from lighthubert_s3prl.superb.tasks import BatchPlan

LOG = logging.getLogger("lighthubert_s3prl.superb.runner")


class SuperbRunner:
    """Runs the units of one batch in order: configs first, each unit through its executor, then the summary.

    ``executor`` runs one unit (default: :class:`~.executor.UnitExecutor`, through s3prl processes); the
    runner only decides what runs, in which order, and what gets recorded for the whole root.
    """

    def __init__(self, opts: RunOptions, executor: Optional[UnitExecutor] = None) -> None:
        self.opts = opts
        self.root = opts.exp_root
        self.logs = self.root / "logs"
        self.configs = self.root / "configs"
        self.units = make_units(self.root, opts.tasks, opts.er_folds or list(tasks_module().ER_FOLDS))
        self.launcher = Launcher(opts, self.configs)
        # processes start through self._execute, looked up at each call, so one method decides how they run
        self.executor = executor or UnitExecutor(opts, self.launcher, self.logs,
                                                 lambda cmd, log_path: self._execute(cmd, log_path))
        self._worker = threading.local()  # under --executor local:N, which unit slot (GPUs) this thread holds

    def _execute(self, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        """Run ``cmd`` appending its output to ``log_path``; return (exit code, this run's output)."""
        return self.launcher.execute(cmd, log_path, getattr(self._worker, "cuda_devices", None))

    # -- preparation --------------------------------------------------------------------------------

    def check_identity(self) -> None:
        """Refuse to mix results of different models in one root."""
        wanted = self._identity()
        old = read_json(self.root / MANIFEST_NAME)
        if isinstance(old, dict):
            differs = {k: (old.get(k), v) for k, v in wanted.items() if old.get(k) != v}
            if differs:
                what = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differs.items())
                raise RunnerError(f"{self.root} holds runs of another model ({what}); choose another --exp-root")

    def _identity(self) -> Dict[str, Any]:
        return {"upstream": self.opts.upstream, "ckpt": self.opts.ckpt, "subnet": self.opts.subnet,
                "scale": self.opts.scale}

    def write_manifest(self) -> None:
        old = read_json(self.root / MANIFEST_NAME) or {}
        history = list(old.get("history", []))[-49:]
        history.append({"time": now_iso(), "argv": sys.argv, "tasks": self.opts.tasks})
        data = {**self._identity(), "created": old.get("created", now_iso()), "updated": now_iso(),
                "data": {t: self.opts.data[t] for t in self.opts.tasks}, "lr": self.opts.lr,
                "asv_cleaned_trials": self.opts.allow_cleaned_asv_trials,
                "sets": {t: v for t, v in self.opts.sets.items() if v}, "device": self.opts.device,
                "gpus": self.opts.gpus, "history": history,
                "tasks": sorted(set(old.get("tasks", [])) | set(self.opts.tasks), key=TASK_ORDER.index)}
        write_json(self.root / MANIFEST_NAME, data)

    def batch_plan(self, task: str) -> "BatchPlan":
        """``task``'s training batch on ``--gpus`` processes."""
        return batch_plan_for(task, self.opts.scale, self.opts.sets.get(task, {}), self.opts.gpus)

    @cached_property
    def sid_rate(self) -> Tuple[Optional[float], str]:
        """The SID learning rate to set (None: keep the config's) and why."""
        sets = self.opts.sets.get("sid", {})
        given = next((sets[k] for k in ("optimizer.lr", "lr") if k in sets), None)
        if given is not None or "sid" in self.opts.lr:
            return None, f"lr {given if given is not None else self.opts.lr['sid']}, given on the command line"
        config_lr = tasks_module().load_task_config("sid", self.opts.scale)["optimizer"]["lr"]
        if self.opts.scale != "full":
            return None, f"lr {config_lr:g}, the {self.opts.scale} config's"
        try:
            subnet, how = run_subnet(self.opts.upstream, self.opts.ckpt, self.opts.subnet)
        except ValueError as err:  # a -g or checkpoint the model would refuse as well
            raise RunnerError(f"sid: cannot tell which subnet runs: {err}") from None
        lr, why = (None, how) if subnet is None else tasks_module().sid_learning_rate(subnet)
        if lr is None:
            return None, (f"lr {config_lr:g}, the config's (the authors' rate for small): {why}; "
                          "the authors tuned SID per model, so consider --lr sid=LR")
        return lr, f"lr {lr:g}, {why} ({how}: {subnet.describe()})"

    def _overrides(self, task: str) -> Dict[str, Any]:
        tasks = tasks_module()
        spec = tasks.get_task(task)
        out: Dict[str, Any] = {k: v for k, v in self.opts.data[task].items() if k != "root"}
        if not spec.trains:
            return {**out, **self.opts.sets.get(task, {})}
        if not self.opts.test_during_training and spec.dev_split:
            # the test score is taken from the dev-best checkpoint afterwards: testing at every
            # eval_step during training only costs time (and its prediction files get overwritten)
            out["runner.eval_dataloaders"] = [spec.dev_split]
        if task in self.opts.lr:
            out["lr"] = self.opts.lr[task]
        elif task == "sid" and self.sid_rate[0] is not None:
            out["lr"] = self.sid_rate[0]
        out.update(self.opts.sets.get(task, {}))
        if self.opts.gpus > 1:  # after --set: its accumulation, too, is the one-process figure
            check_accumulation([task], self.opts.scale, self.opts.sets, self.opts.gpus)
            out["runner.gradient_accumulate_steps"] = self.batch_plan(task).accumulate_per_process
        return out

    def describe_task(self, task: str) -> List[str]:
        """What a run of ``task`` will use that is not in its config file as shipped: batch, SID rate."""
        if not tasks_module().get_task(task).trains:
            return [f"{task}: no training: DTW on each hidden state on dev, the best dev layer scored on test"]
        plan = self.batch_plan(task)
        lines = [f"{task}: effective batch {plan.describe()}"]
        if plan.processes > 1:
            lines.append(f"{task}: --gpus {plan.processes}: gradient_accumulate_steps {plan.accumulate} -> "
                         f"{plan.accumulate_per_process} per process, because s3prl accumulates in every process; "
                         f"the effective batch stays {plan.effective}")
        if task == "sid":
            lines.append(f"sid: {self.sid_rate[1]}")
        return lines

    def build_configs(self, tasks_needed: Sequence[str]) -> None:
        """Write configs/<task>.yaml for every task with work left, before any training starts."""
        tasks = tasks_module()
        for task in tasks_needed:
            path = self.configs / f"{task}.yaml"
            try:
                tasks.build_config(task, self.opts.data[task]["root"], path, scale=self.opts.scale,
                                   allow_cleaned_trials=self.opts.allow_cleaned_asv_trials, **self._overrides(task))
            except (tasks.TaskConfigError, ValueError) as err:
                raise RunnerError(str(err)) from None
            LOG.info("%s: config %s", task, path)
            for line in self.describe_task(task):
                LOG.info("%s", line)

    # -- units ---------------------------------------------------------------------------------------

    def run_unit(self, unit: Unit) -> Outcome:
        """Run one unit now, whatever the others' state (``run`` calls it for each unit in turn)."""
        return self.executor.run(unit)

    def plan(self) -> List[Outcome]:
        """Print the commands a real run would execute now; touch nothing."""
        return print_plan(self.units, self.launcher, self.logs, self.describe_task)

    # -- whole run -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the root, write the configs of the tasks with work left and the manifest: all before any unit."""
        self.check_identity()
        todo = [u for u in self.units if unit_is_done(u) is None]
        self.root.mkdir(parents=True, exist_ok=True)
        self.build_configs(sorted({u.task for u in todo}, key=TASK_ORDER.index))
        if todo and self.opts.device == "cpu":
            LOG.info("threads: %s", self.launcher.threads.reason)
        self.write_manifest()

    def run(self) -> List[Outcome]:
        if self.opts.dry_run:
            return self.plan()
        self.prepare()
        if self.opts.slurm is None and self.opts.parallel <= 1:
            outcomes = self.run_units()
        else:
            outcomes = [o for o in run_work([(self, unit) for unit in self.units], self.opts) if o is not None]
        self.write_summary(outcomes)
        return outcomes

    def run_units(self) -> List[Outcome]:
        """Every unit in order, one at a time."""
        outcomes: List[Outcome] = []
        for i, unit in enumerate(self.units, 1):
            LOG.info("[%d/%d] %s", i, len(self.units), unit.label)
            outcome = self.run_unit(unit)
            outcomes.append(outcome)
            if outcome.status == "failed" and self.opts.fail_fast:
                LOG.error("stopping after the first failure (--fail-fast)")
                break
        return outcomes

    def cuda_slots(self, parallel: int) -> List[Optional[str]]:
        """The GPUs of each of ``parallel`` concurrent units (None each on the CPU)."""
        if self.opts.device != "cuda":
            return [None] * parallel
        import torch

        return list(gpu_slots(parallel, max(1, self.opts.gpus), os.environ.get("CUDA_VISIBLE_DEVICES"),
                              torch.cuda.device_count()))

    def write_summary(self, outcomes: Sequence[Outcome]) -> None:
        report.write_summary(outcomes, self.root)


def run_work(work: Sequence[Tuple[SuperbRunner, Unit]], opts: RunOptions) -> List[Optional[Outcome]]:
    """Each ``(runner, unit)`` through the executor ``opts`` names: cluster jobs, or ``opts.parallel`` at a time
    here; one outcome per item, in order (None: never started)."""
    if opts.slurm is not None:
        from .cluster import run_on_cluster

        return run_on_cluster(work, opts.slurm)
    return run_concurrently(work, opts.parallel, opts.fail_fast)


def run_concurrently(work: Sequence[Tuple[SuperbRunner, Unit]], parallel: int,
                     fail_fast: bool = False) -> List[Optional[Outcome]]:
    """Run each ``(runner, unit)``, ``parallel`` at a time on this host, started in order; one outcome per
    item, in order (None: never started).

    Units are independent on disk (own expdir, lock and logs; configs are written before), so only the
    slot pool is shared: on CUDA each slot is its own set of GPUs (the first runner's settings decide).
    ``fail_fast`` starts no new unit after a failure and lets the running ones finish; so does an exception
    or an interrupt, which then propagates.
    """
    if not work:
        return []
    slots: "queue.SimpleQueue[Optional[str]]" = queue.SimpleQueue()
    for slot in work[0][0].cuda_slots(parallel):
        slots.put(slot)
    stop = threading.Event()
    several_roots = len({id(runner) for runner, _ in work}) > 1  # a grid: say which subnet a unit belongs to

    def run_one(i: int, runner: SuperbRunner, unit: Unit) -> Optional[Outcome]:
        if stop.is_set():
            return None
        slot = slots.get()
        runner._worker.cuda_devices = slot
        try:
            LOG.info("[%d/%d] %s%s", i, len(work), f"{runner.root.name}/{unit.label}" if several_roots else
                     unit.label, f" (GPUs {slot})" if slot else "")
            outcome = runner.run_unit(unit)
        except BaseException:
            stop.set()  # at once: the main thread may still be waiting on an earlier unit
            raise
        finally:
            slots.put(slot)
        if outcome.status == "failed" and fail_fast and not stop.is_set():
            stop.set()
            LOG.error("starting no further unit after the first failure (--fail-fast)")
        return outcome

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="superb-unit") as pool:
        futures = [pool.submit(run_one, i, runner, unit) for i, (runner, unit) in enumerate(work, 1)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise


def run_grid(opts: RunOptions, subnets: str) -> List[Outcome]:
    """Every unit of every subnet of ``subnets`` (see :mod:`.grid`), each subnet in ``opts.exp_root/<name>``."""
    from . import grid

    if not opts.ckpt:
        raise RunnerError("--subnets needs the supernet checkpoint the subnets are cut from: pass -k CKPT")
    if opts.subnet:
        raise RunnerError("--subnets and -g both choose the subnet; put the -g file into the --subnets list")
    if opts.upstream not in LIGHTHUBERT_ENTRIES:
        raise RunnerError(f"--subnets runs LightHuBERT subnets; -u {opts.upstream} is not a LightHuBERT entry")
    members = grid.plan_grid(opts.ckpt, grid.read_grid_items(subnets), opts.exp_root)
    runners = [SuperbRunner(replace(opts, upstream="lighthubert_local", ckpt=str(m.model), subnet=None,
                                    exp_root=m.root)) for m in members]
    for m in members:
        LOG.info("grid: %s = %s, %s parameters -> %s", m.name, m.subnet.describe(), f"{m.params:,}", m.root)
    if opts.dry_run:
        return [o for r in runners for o in r.plan()]
    grid.write_grid_record(opts.exp_root, opts.ckpt, members)
    for m in members:
        grid.export_member(opts.ckpt, m)
    for r in runners:
        r.prepare()
    work = [(r, u) for r in runners for u in r.units]
    ran = run_work(work, opts)
    outcomes: List[Outcome] = []
    for r in runners:
        mine = [o for (owner, _), o in zip(work, ran) if owner is r and o is not None]
        r.write_summary(mine)
        outcomes += [replace(o, unit=f"{r.root.name}/{o.unit}") for o in mine]
    return outcomes


# ----------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_superb.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and test SUPERB tasks for one upstream through s3prl (via lighthubert-s3prl's\n"
                    "launcher): ER over 5 folds, an ASV checkpoint sweep, QbE's DTW on every layer (the best\n"
                    "dev layer scored on test), SD's DER over SUPERB's threshold/median grid, test on the\n"
                    "dev-best checkpoint elsewhere (ASR on test-clean). Re-running skips finished work and resumes interrupted\n"
                    "training. Per-unit logs go to EXP_ROOT/logs/, a summary to EXP_ROOT/summary.txt.",
        epilog="examples:\n"
               "  scripts/run_superb.sh -u lighthubert_small -k lighthubert_small.pt --tasks all --data /data/superb\n"
               "  scripts/run_superb.sh -u lighthubert_local -k tiny.pt --tasks ks,ic,er --data corpus --scale ci\n"
               "  scripts/run_superb.sh -u lighthubert_subnet -k base.pt -g subnet.yaml --tasks sid --lr 5e-2 \\\n"
               "      --data-config datasets.yaml --gpus 4 --exp-root exp/sid_base\n"
               "data YAML: {default: /data/superb, ks: /data/speech_commands, sid: {root: /data/VoxCeleb1, "
               "meta_data: /data/iden_split.txt}}")
    parser.add_argument("-u", "--upstream", required=True, help="s3prl -u name (ours: lighthubert_small, "
                        "lighthubert_base, lighthubert_stage1, lighthubert_local, lighthubert_subnet; or any s3prl name)")
    parser.add_argument("-k", "--ckpt", help="upstream checkpoint (s3prl -k)")
    parser.add_argument("-g", "--subnet", help="subnet/model config YAML (s3prl -g)")
    parser.add_argument("--subnets", metavar="LIST|GRID.yaml",
                        help="a grid: several subnets of the -k checkpoint (any -g spec: small,base,budget:small:20e6,"
                             "random:small:3,my.yaml; or a YAML file with a 'subnets' list), each run in "
                             "EXP_ROOT/<name>/ from its own compact export; EXP_ROOT/grid.json records them")
    parser.add_argument("--tasks", default="all", help=f"comma-separated subset of {','.join(TASK_ORDER)}, or all "
                        "(default all)")
    parser.add_argument("--data", help="one root for every task: a corpus from `lighthubert-s3prl make-corpus`, or "
                        "a folder holding the real data sets under their usual names")
    parser.add_argument("--task-data", action="append", default=[], metavar="TASK=PATH",
                        help="data root of one task (repeatable); wins over --data and --data-config")
    parser.add_argument("--data-config", metavar="YAML", help="YAML mapping task (or default) -> data root, or -> "
                        "{root: PATH, <data key>: PATH} for keys tasks.build_config takes")
    scales = tasks_module().SCALE_HELP
    parser.add_argument("--scale", choices=tuple(scales), default="full",
                        help="; ".join(f"{name}: {what}" for name, what in scales.items()) + " (default full)")
    parser.add_argument("--lr", action="append", default=[], metavar="LR|TASK=LR",
                        help="learning rate for every task, or per task (sid=5e-3,ks=1e-4); repeatable")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="[TASK:]KEY=VALUE",
                        help="config override, e.g. runner.total_steps=1000 or asv:runner.save_step=500 (repeatable)")
    parser.add_argument("--er-folds", metavar="LIST", help="ER folds to run, e.g. 1,2 (default all five)")
    parser.add_argument("--asv-cleaned-trials", action="store_true",
                        help="let ASV score the cleaned VoxCeleb1-O list (veri_test2.txt, 37,611 trials); by default "
                             "it is refused, as SUPERB scores the original list (37,720 trials)")
    parser.add_argument("--exp-root", help="experiment root (default exp/superb/<upstream>[-<ckpt>][-<subnet>])")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs for training; >1 trains with torchrun (DDP) and divides each task's "
                             "gradient_accumulate_steps by N, so the effective batch stays SUPERB's (N must divide "
                             "it). Default: 1 if CUDA is available, else 0")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when --gpus > 0, else cpu")
    parser.add_argument("--seed", type=int, help="s3prl --seed (s3prl's default 1337)")
    parser.add_argument("--executor", default="local", metavar="local|local:N|slurm",
                        help="how units run: local (one at a time, the default), local:N (N at once on this "
                             "host: on CUDA each gets its own --gpus GPUs through CUDA_VISIBLE_DEVICES, on the CPU "
                             "each gets 1/N of the CPUs as threads) or slurm (each unit a job of one SLURM job "
                             "array, through submitit; requeued on timeout or preemption; --slurm-* options)")
    slurm = parser.add_argument_group("--executor slurm (GPUs per unit: --gpus)")
    slurm.add_argument("--slurm-partition", help="partition to submit to")
    slurm.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN",
                       help="time limit of each unit job in minutes (default 1440); a unit that hits it is "
                            "requeued and resumes from its newest checkpoint")
    slurm.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per unit job (its s3prl threads follow)")
    slurm.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per unit job")
    slurm.add_argument("--slurm-array-parallelism", type=int, metavar="N",
                       help="unit jobs running at once (the job array's %%N cap; default: no cap)")
    slurm.add_argument("--slurm-account", help="account to charge")
    slurm.add_argument("--slurm-qos", help="quality of service")
    slurm.add_argument("--slurm-constraint", help="node features, e.g. a100")
    slurm.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-extra exclude=node3 (repeatable)")
    slurm.add_argument("--slurm-folder", metavar="DIR",
                       help="submitit's folder: job scripts and each job's output (default EXP_ROOT/slurm)")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads per s3prl process (default: the CPUs this "
                        "process may use, from its affinity and cgroup quota, divided among the units at once)")
    parser.add_argument("--feature-cache-mb", type=float, metavar="MB",
                        help="keep a frozen LightHuBERT upstream's features of each utterance seen, up to MB per "
                             "s3prl process, instead of computing them every epoch (CPU only; exact). Default: "
                             "2048 at the mini and ci scales, off at full; 0 turns it off")
    parser.add_argument("--s3prl-args", default="", metavar="'ARGS'",
                        help="extra s3prl flags for training, e.g. -f (fine-tune the upstream), '-s hidden_states "
                             "-l 6' or --upstream_feature_normalize; flags after a lone -- are passed the same way "
                             "(evaluation takes them from the checkpoint)")
    parser.add_argument("--test-during-training", action="store_true",
                        help="keep s3prl's test evaluation at every eval_step (off: only dev, then test on dev-best)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run; change nothing")
    parser.add_argument("--stream", action="store_true", help="also copy s3prl's output to the terminal")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed unit")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    tasks = parse_task_list(args.tasks)
    er_folds = parse_folds(args.er_folds) if "er" in tasks else []
    if args.ckpt and not re.match(r"^[a-z]+://", args.ckpt):
        ckpt_path = Path(args.ckpt).expanduser()
        if not ckpt_path.is_file():
            raise RunnerError(f"checkpoint not found: {ckpt_path} (-k)")
        args.ckpt = str(ckpt_path.resolve())
    if args.subnet:
        subnet_path = Path(args.subnet).expanduser()
        if not subnet_path.is_file():
            raise RunnerError(f"subnet config not found: {subnet_path} (-g)")
        args.subnet = str(subnet_path.resolve())
    if args.upstream in ("lighthubert_local", "lighthubert_subnet", "lighthubert_url") and not args.ckpt:
        raise RunnerError(f"-u {args.upstream} needs a checkpoint: pass -k CKPT")
    if args.upstream == "lighthubert_subnet" and not args.subnet:
        raise RunnerError("-u lighthubert_subnet needs the subnet: pass -g subnet.yaml")
    if args.feature_cache_mb is not None and not args.feature_cache_mb >= 0:
        raise RunnerError(f"--feature-cache-mb {args.feature_cache_mb:g}: give a size in MB, or 0 to turn the cache off")
    gpus = args.gpus
    if gpus is not None and gpus < 0:
        raise RunnerError("--gpus must be 0 or more")
    executor, parallel = parse_executor(args.executor)
    if executor == "slurm":  # the GPUs are on the nodes, not on the host that submits: take --gpus as given
        gpus = gpus or 0
    elif gpus is None or (args.device is None and gpus > 0):
        import torch

        has_cuda = torch.cuda.is_available()
        if gpus is None:
            gpus = 1 if has_cuda and args.device != "cpu" else 0
        elif not has_cuda and not args.dry_run:
            raise RunnerError(f"--gpus {gpus} needs CUDA, which this machine does not have")
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    if gpus > 1 and device != "cuda":
        raise RunnerError("--gpus > 1 trains with DDP on CUDA; drop --device cpu")
    exp_root = Path(args.exp_root).expanduser() if args.exp_root else default_exp_root(args.upstream, args.ckpt, args.subnet)
    if args.subnets and not args.exp_root:  # a grid root holds one folder per subnet: keep it apart
        exp_root = exp_root.with_name(exp_root.name + "-grid")
    sets = parse_sets(args.sets, tasks)
    check_accumulation(tasks, args.scale, sets, gpus)
    return RunOptions(
        upstream=args.upstream, tasks=tasks, exp_root=exp_root.resolve(), ckpt=args.ckpt, subnet=args.subnet,
        data=resolve_data(tasks, args.data, args.task_data, args.data_config), scale=args.scale,
        lr=parse_lr(args.lr, tasks), sets=sets, er_folds=er_folds, gpus=gpus, device=device,
        allow_cleaned_asv_trials=args.asv_cleaned_trials, seed=args.seed, threads=args.threads,
        parallel=parallel, slurm=slurm_settings(args, executor, exp_root.resolve()),
        feature_cache_mb=args.feature_cache_mb, dry_run=args.dry_run, stream=args.stream, fail_fast=args.fail_fast,
        test_during_training=args.test_during_training, extra_args=parse_s3prl_args(args.s3prl_args))


def slurm_settings(args: argparse.Namespace, executor: str, exp_root: Path) -> Optional[SlurmSettings]:
    """The ``--slurm-*`` options for ``--executor slurm`` (None for the local executors, which refuse them)."""
    defaults = build_parser()
    given = [name for name in vars(args) if name.startswith("slurm_") and getattr(args, name) not in
             (None, [], defaults.get_default(name))]
    if executor != "slurm":
        if given:
            raise RunnerError(f"--{given[0].replace('_', '-')} applies to --executor slurm only")
        return None
    for name in ("slurm_time", "slurm_cpus", "slurm_array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RunnerError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return SlurmSettings(
        folder=Path(args.slurm_folder).expanduser().resolve() if args.slurm_folder else exp_root / "slurm",
        partition=args.slurm_partition, time_min=args.slurm_time, cpus_per_unit=args.slurm_cpus,
        mem_gb=args.slurm_mem_gb, array_parallelism=args.slurm_array_parallelism, account=args.slurm_account,
        qos=args.slurm_qos, constraint=args.slurm_constraint, extra=parse_extra(args.slurm_extra))


def run_superb(opts: RunOptions) -> List[Outcome]:
    """Run (or with ``opts.dry_run`` print) every unit; returns one outcome per unit."""
    runner = SuperbRunner(opts)
    outcomes = runner.run()
    return outcomes


def gather_s3prl_args(argv: List[str]) -> List[str]:
    """Our arguments with s3prl's folded into one ``--s3prl-args=...``: everything after ``--``, and the value
    after ``--s3prl-args`` even when it starts with a dash (``--s3prl-args -f``, which argparse would take for
    an option of ours)."""
    ours: List[str] = []
    theirs: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            theirs += argv[i + 1:]
            break
        if arg == "--s3prl-args" and i + 1 < len(argv):
            theirs += shlex.split(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--s3prl-args="):
            theirs += shlex.split(arg.split("=", 1)[1])
        else:
            ours.append(arg)
        i += 1
    return ours + ([f"--s3prl-args={shlex.join(theirs)}"] if theirs else [])


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = gather_s3prl_args(argv)
    except ValueError as err:
        print(f"run_superb: error: --s3prl-args: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s run_superb: %(message)s", datefmt="%H:%M:%S")
    try:
        opts = options_from_args(args)
        outcomes = run_grid(opts, args.subnets) if args.subnets else run_superb(opts)
    except RunnerError as err:
        print(f"run_superb: error: {err}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(f"# dry run: {len(outcomes)} unit(s), nothing was run or written")
        return 0
    print()
    print(format_summary(outcomes, opts.exp_root, where_to_look=not args.subnets))
    if args.subnets:
        print(f"grid:    {opts.exp_root / 'grid.json'}; per subnet: <name>/<task>/{RESULT_FILE}, <name>/logs/, "
              f"<name>/summary.txt")
        print(f"table:   lighthubert-s3prl collect {opts.exp_root} -o {opts.exp_root}/results   (one row per "
              "subnet, and the size-vs-score figure)")
    return 1 if any(o.status in ("failed", "busy") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
