"""Units as cluster jobs: ``--executor slurm`` through submitit, the library the field uses for SLURM.

The command that starts a run prepares it as usual (configs, manifests, exports), then submits every unit
with work left as one task of a job array (``--slurm-array-parallelism`` caps how many run at once) and
waits for them; re-running the command skips what finished, as always. Each job rebuilds the unit's runner
from the pickled options and runs the unit exactly as a local run would, in its allocation: its CPUs
(affinity) set the threads, its GPUs are the ones SLURM gave it, and ``--gpus N > 1`` runs torchrun inside.

Preemption and time limits: a unit job is checkpointable. When SLURM signals the end of its time (or a
preemption), submitit asks the job for a checkpoint; the job hands itself back for requeueing (the
scheduler stops its s3prl with it), and the requeued run resumes training from the newest ``states-*.ckpt`` (s3prl's ``-a``),
taking over the lock its earlier run left. The job id is in the lock, the unit's result and
``superb_jobs.json`` (one line per run of the unit, requeues included).

``LIGHTHUBERT_S3PRL_SUBMITIT_CLUSTER=local`` runs the same jobs through submitit's ``LocalExecutor`` on this
machine (the tests do): a way to try a cluster command line without a cluster.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .options import RunnerError, RunOptions, SlurmSettings
from .units import JOB_ID_ENV, Outcome, Unit, now_iso, read_json, unit_is_done, write_json

LOG = logging.getLogger("lighthubert_s3prl.superb.runner")

CLUSTER_ENV = "LIGHTHUBERT_S3PRL_SUBMITIT_CLUSTER"
JOBS_FILE = "superb_jobs.json"
INSTALL_HINT = "pip install 'lighthubert-s3prl[slurm]'"


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise RunnerError(f"--executor slurm runs units through submitit, which is not installed: {INSTALL_HINT}") \
            from None
    return submitit


class UnitJob:
    """One unit as a submitit job: picklable, rebuilt in the job's process, requeued on timeout.

    ``runner_class`` is the runner to rebuild there (``SuperbRunner``; handed in, and pickled by name, so
    that this module does not import the runner that imports it)."""

    def __init__(self, opts: RunOptions, unit_name: str, runner_class: Any) -> None:
        self.opts = opts
        self.unit_name = unit_name
        self.runner_class = runner_class

    def __call__(self) -> Outcome:
        job_id = str(_submitit().JobEnvironment().job_id)
        os.environ[JOB_ID_ENV] = job_id
        logging.basicConfig(level=logging.INFO, format="%(asctime)s run_superb: %(message)s", datefmt="%H:%M:%S")
        runner = self.runner_class(dataclasses.replace(self.opts, parallel=1))
        unit = next((u for u in runner.units if u.name == self.unit_name), None)
        if unit is None:
            raise RunnerError(f"unit {self.unit_name!r} is not among this run's units "
                              f"({', '.join(u.name for u in runner.units)}); were the options changed?")
        record_run(unit, job_id)
        return runner.run_unit(unit)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit before a timeout or preemption: be submitted again as is. The scheduler stops
        this run's s3prl with the job; the next run resumes the unit from its newest checkpoint (``-a``)."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def record_run(unit: Unit, job_id: str) -> None:
    """Append this run of ``unit`` (job id, host, time) to its ``superb_jobs.json``."""
    path = unit.expdir / JOBS_FILE
    unit.expdir.mkdir(parents=True, exist_ok=True)
    runs = read_json(path)
    runs = runs if isinstance(runs, list) else []
    runs.append({"job": job_id, "host": socket.gethostname(), "started": now_iso(),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    write_json(path, runs)


def make_executor(settings: SlurmSettings, opts: RunOptions) -> Any:
    """A submitit executor for the unit jobs: SLURM, or the local one when :data:`CLUSTER_ENV` says so."""
    submitit = _submitit()
    cluster = os.environ.get(CLUSTER_ENV) or "slurm"
    if cluster not in ("slurm", "local"):
        raise RunnerError(f"{CLUSTER_ENV}={cluster!r}: use slurm (the default) or local")
    common: Dict[str, Any] = {"timeout_min": settings.time_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": max(0, opts.gpus)}
    if cluster == "local":  # one machine: SLURM's options mean nothing here, the time limit and signal do
        executor = submitit.LocalExecutor(folder=str(settings.folder))
        executor.update_parameters(**common, signal_delay_s=settings.signal_delay_s)
        return executor
    executor = submitit.AutoExecutor(folder=str(settings.folder), cluster="slurm")
    params: Dict[str, Any] = {**common, "name": "superb", "slurm_signal_delay_s": settings.signal_delay_s}
    if settings.cpus_per_unit:
        params["cpus_per_task"] = settings.cpus_per_unit
    if settings.mem_gb:
        params["mem_gb"] = settings.mem_gb
    for key, value in (("partition", settings.partition), ("account", settings.account), ("qos", settings.qos),
                       ("constraint", settings.constraint), ("array_parallelism", settings.array_parallelism)):
        if value is not None:
            params[f"slurm_{key}"] = value
    if settings.extra:
        params["slurm_additional_parameters"] = dict(settings.extra)
    executor.update_parameters(**params)
    return executor


def run_on_cluster(work: Sequence[Tuple[Any, Unit]], settings: SlurmSettings) -> List[Optional[Outcome]]:
    """Submit every unit with work left as one job array, wait, and return one outcome per item (finished
    units are skipped here, without a job)."""
    from .units import outcome_from_result

    outcomes: List[Optional[Outcome]] = [None] * len(work)
    todo = []
    for i, (runner, unit) in enumerate(work):
        done = unit_is_done(unit)
        if done is not None:
            outcomes[i] = outcome_from_result(unit, done, "skipped", 0.0, "finished earlier")
        else:
            todo.append(i)
    if not todo:
        return outcomes
    executor = make_executor(settings, work[0][0].opts)
    with executor.batch():
        jobs = [executor.submit(UnitJob(work[i][0].opts, work[i][1].name, type(work[i][0]))) for i in todo]
    for i, job in zip(todo, jobs):
        LOG.info("%s: job %s", _label(*work[i]), job.job_id)
    for i, job in zip(todo, jobs):
        runner, unit = work[i]
        try:
            outcomes[i] = job.result()
        except Exception as err:  # noqa: BLE001 - a job that died (cancelled, node failure): the unit failed
            message = f"job {job.job_id} ended without a result: {_job_error(err)}"
            LOG.error("%s: %s (submitit logs: %s)", _label(runner, unit), message, settings.folder)
            outcomes[i] = Outcome(unit.name, unit.task, unit.fold, "failed", str(unit.expdir), message=message,
                                  logs=[str(settings.folder)])
    return outcomes


def _job_error(err: BaseException) -> str:
    """The job's own exception line out of submitit's report (which ends with log paths), else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return raised[-1] if raised else (lines[0] if lines else type(err).__name__)


def _label(runner: Any, unit: Unit) -> str:
    return f"{runner.root.name}/{unit.label}"
