"""``lighthubert-s3prl quickstart``: a mini-SUPERB that ranks three upstreams, offline, on 2 CPU cores.

1. the ``mini`` corpus (``make_corpus``) in ``WORKDIR/corpus``: KS, IC, ER and the unlabelled
   train-clean-100 audio the distillation reads;
2. two tiny LightHuBERT checkpoints in the official format in ``WORKDIR/checkpoints``: one random, one
   distilled from fbank by ``train stage1`` (``configs/train/stage1_mini.yaml``, about a minute);
3. the ``mini`` task scale for three rows, random, distilled and s3prl's weight-free ``fbank_no_cmvn`` (the
   known-good reference feature), through the batch runner, two s3prl processes at a time, in
   ``WORKDIR/exp/<row>``;
4. the results table (Markdown/CSV/JSON/PNG) in ``WORKDIR/results``, printed with one line on what the
   ranking shows. The score is labelled mini-SUPERB: synthetic speech, not comparable to the leaderboard.

Every step keeps its output, so running it again skips what is finished and resumes the rest.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lighthubert_s3prl.cpu_budget import choose_threads

LOG = logging.getLogger("lighthubert_s3prl.commands.quickstart")

DEFAULT_TASKS = "ks,ic,er"
DISTIL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "stage1_mini.yaml"
RANDOM_CKPT = "tiny_random_seed{seed}.pt"
DISTILLED_CKPT = "tiny_distilled_seed{seed}.pt"


@dataclass(frozen=True)
class Row:
    key: str  # folder under WORKDIR/exp
    name: str  # in the table
    upstream: str
    params_m: Optional[float]  # for the table; None: the count the upstream logs


ROWS: Tuple[Row, ...] = (
    Row("distilled", "LightHuBERT tiny, distilled from fbank", "lighthubert_local", None),
    Row("random", "LightHuBERT tiny, random init", "lighthubert_local", None),
    Row("fbank", "fbank_no_cmvn (no weights)", "fbank_no_cmvn", 0.0),  # s3prl logs no count for it
)


def ensure_random_checkpoint(workdir: Path, seed: int) -> Path:
    """A tiny random supernet in the released format (kept between runs; written atomically)."""
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    path = workdir / "checkpoints" / RANDOM_CKPT.format(seed=seed)
    if path.is_file():
        LOG.info("random checkpoint: %s exists, reusing", path)
        return path
    LOG.info("random checkpoint: writing a tiny seeded LightHuBERT supernet to %s", path)
    return write_random_checkpoint(path, "small", seed=seed, model_cfg=tiny_model_config())


def train_once(config: Path, overrides: List[str], out: Path, stage: str, again: str = "run it again") -> Path:
    """One training run copied to ``out`` when done: kept, so a re-run skips it (an interrupted one resumes)."""
    from lighthubert_s3prl.io_utils import atomic_write
    from lighthubert_s3prl.training.config import load_config
    from lighthubert_s3prl.training.trainer import train

    if out.is_file():
        LOG.info("%s: %s exists, reusing", stage, out)
        return out
    cfg = load_config(config, overrides + ["train.tensorboard=false"], stage)
    LOG.info("%s: %d steps of train %s (teacher %s) in %s", out.name, cfg.train.steps, stage, cfg.teachers[0].label,
             cfg.train.output_dir)
    result = train(cfg)
    if result.interrupted or result.model_path is None:
        raise RuntimeError(f"train {stage} stopped at step {result.step}; {again} to resume it")
    data = Path(result.model_path).read_bytes()
    atomic_write(out, lambda f: f.write(data))
    return out


def ensure_distilled_checkpoint(workdir: Path, corpus_dir: Path, seed: int, steps: Optional[int] = None) -> Path:
    """The tiny student distilled from fbank on the corpus's train-clean-100 audio (resumes; kept once done)."""
    overrides = [f"data.train={corpus_dir / 'LibriSpeech' / 'train-clean-100'}",
                 f"train.output_dir={workdir / 'distil'}", f"train.seed={seed}"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    return train_once(DISTIL_CONFIG, overrides, workdir / "checkpoints" / DISTILLED_CKPT.format(seed=seed), "stage1",
                      "run the quickstart again")


def pick_rows(spec: Optional[str], rows: Sequence) -> list:
    """The rows ``--rows a,b`` names (all for None), in their own order; unknown names are an error."""
    from lighthubert_s3prl.superb.options import RunnerError

    chosen = [r for r in rows if spec is None or r.key in spec.split(",")]
    unknown = set((spec or "").split(",")) - {r.key for r in rows} - {""}
    if unknown or not chosen:
        raise RunnerError(f"--rows {spec!r}: choose from {','.join(r.key for r in rows)}")
    return chosen


def parse_steps(spec: Union[None, int, str, Mapping[str, int]], tasks: Sequence[str]) -> Dict[str, Optional[int]]:
    """Training steps per task from ``--steps``: ``N`` for every task, or ``ks=1000,ic=500`` (tasks not named
    keep their scale's steps); None keeps every scale's."""
    from lighthubert_s3prl.superb.options import RunnerError

    if spec is None:
        return {t: None for t in tasks}
    if isinstance(spec, int):
        per_task: Dict[str, int] = {t: spec for t in tasks}
    elif isinstance(spec, Mapping):
        per_task = dict(spec)
    elif "=" not in spec:
        try:
            per_task = {t: int(spec) for t in tasks}
        except ValueError:
            raise RunnerError(f"--steps {spec!r}: give a number, or TASK=N pairs such as ks=1000,ic=500") from None
    else:
        per_task = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            task, _, value = item.partition("=")
            try:
                per_task[task.strip()] = int(value)
            except ValueError:
                raise RunnerError(f"--steps {item!r}: expected TASK=N with N a whole number, e.g. ks=1000") from None
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise RunnerError(f"--steps names {', '.join(unknown)}, which this run does not include "
                          f"(tasks: {', '.join(tasks)}); add them to --tasks or drop them from --steps")
    small = {t: n for t, n in per_task.items() if n < 1}
    if small:
        raise RunnerError(f"--steps must be at least 1, got {small}")
    return {t: per_task.get(t) for t in tasks}


def shortened(tasks: Sequence[str], steps: Union[None, int, str, Mapping[str, int]]) -> Dict[str, Dict[str, object]]:
    """Per-task config overrides for ``--steps``: N updates, one evaluation and one checkpoint at the end (a
    schedule in the scale's config, such as KS's decaying rate, then runs over those N)."""
    per_task = parse_steps(steps, tasks)
    return {t: ({} if n is None else {"runner.total_steps": n, "runner.eval_step": n, "runner.save_step": n,
                                      "runner.log_step": n}) for t, n in per_task.items()}


def run_rows(jobs: Sequence[Tuple[Row, str]], make_runner, workers: int) -> Dict[Tuple[str, str], list]:
    """Run ``(row, task)`` jobs on ``workers`` threads, never two of one row at once (they share a root)."""
    pending = list(jobs)
    busy: set = set()
    outcomes: Dict[Tuple[str, str], list] = {}
    lock = threading.Condition()
    errors: List[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                while pending and all(row.key in busy for row, _ in pending) and not errors:
                    lock.wait()
                if not pending or errors:
                    return
                index = next(i for i, (row, _) in enumerate(pending) if row.key not in busy)
                row, task = pending.pop(index)
                busy.add(row.key)
            try:
                result = make_runner(row, task).run()
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                with lock:
                    errors.append(err)
                    lock.notify_all()
                return
            with lock:
                outcomes[(row.key, task)] = result
                busy.discard(row.key)
                lock.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return outcomes


def ranking_line(table) -> str:
    """One line on what the table shows: the rows by mini-SUPERB score, and where distilled beats random."""
    ours = [(r, score) for r, score in table.row_scores() if r.kind == "ours"]
    scored = [(score, r.name) for r, score in ours if score is not None]
    if not scored:
        return "ranking: no task finished for every row, so there is no score to rank by (see the table)"
    order = " > ".join(f"{name} ({value:.0f})" for value, name in sorted(scored, reverse=True))
    line = f"ranking by mini-SUPERB score over {','.join(t.upper() for t in table.score_tasks)}: {order}"
    named = {r.name: r for r, _ in ours}
    distilled, random = named.get(ROWS[0].name), named.get(ROWS[1].name)
    if distilled is not None and random is not None:
        from lighthubert_s3prl.superb.reference import HIGHER_IS_BETTER

        d, r = distilled.values(), random.values()
        tasks = [t for t in table.score_tasks if t in d and t in r]
        ahead = [t for t in tasks if d[t] != r[t] and (d[t] > r[t]) == HIGHER_IS_BETTER[t]]
        line += f"; distilled beats random on {len(ahead)}/{len(tasks)} tasks"
    return line


def run_quickstart(workdir: Path, tasks: str = DEFAULT_TASKS, preset: str = "mini", seed: int = 0,
                   steps: Union[None, int, str, Mapping[str, int]] = None, threads: Optional[int] = None,
                   er_folds: Optional[str] = "1",
                   corpus: Optional[Path] = None, jobs: int = 2, rows: Optional[str] = None,
                   distil_steps: Optional[int] = None, scale: str = "mini") -> Dict[str, object]:
    """Run every step; returns the paths and outcomes (raises RunnerError/CorpusError on bad input)."""
    from lighthubert_s3prl.superb import collect as collect_mod
    from lighthubert_s3prl.superb.corpus import make_corpus
    from lighthubert_s3prl.superb.options import RunnerError, RunOptions, parse_folds, parse_task_list
    from lighthubert_s3prl.superb.report import format_summary
    from lighthubert_s3prl.superb.runner import SuperbRunner

    started = time.monotonic()
    workdir = workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    task_list = parse_task_list(tasks)
    chosen = pick_rows(rows, ROWS)
    sets = shortened(task_list, steps)  # before any work: a bad --steps fails at once

    corpus_dir = (corpus or workdir / "corpus").expanduser().resolve()
    needs_audio = any(r.key == "distilled" for r in chosen)
    LOG.info("step 1/4: corpus (%s preset, seed %d) in %s", preset, seed, corpus_dir)
    make_corpus(corpus_dir, preset=preset, seed=seed, tasks=task_list + (["asr"] if needs_audio else []))

    LOG.info("step 2/4: checkpoints")
    ckpts: Dict[str, Optional[Path]] = {"fbank": None}
    if any(r.key == "random" for r in chosen):
        ckpts["random"] = ensure_random_checkpoint(workdir, seed)
    if needs_audio:
        ckpts["distilled"] = ensure_distilled_checkpoint(workdir, corpus_dir, seed, distil_steps)

    LOG.info("step 3/4: %s scale of %s for %s, %d at a time", scale, ",".join(task_list),
             ", ".join(r.key for r in chosen), jobs)
    if threads is not None and threads < 1:
        raise RunnerError(f"--threads must be at least 1, got {threads}")
    threads = choose_threads(jobs, threads)
    LOG.info("threads: %s", threads.reason)
    folds = parse_folds(er_folds) if "er" in task_list else []

    def make_runner(row: Row, task: str) -> SuperbRunner:
        ckpt = ckpts[row.key]
        return SuperbRunner(RunOptions(
            upstream=row.upstream, tasks=[task], ckpt=None if ckpt is None else str(ckpt),
            exp_root=workdir / "exp" / row.key, data={task: {"root": str(corpus_dir)}}, scale=scale,
            sets={task: sets[task]}, er_folds=folds, threads=threads.threads, seed=1 + seed))

    outcomes_by_job = run_rows([(r, t) for t in task_list for r in chosen], make_runner, jobs)
    outcomes = [o for r in chosen for t in task_list for o in outcomes_by_job[(r.key, t)]]
    print()
    print(format_summary(outcomes, workdir / "exp"))

    LOG.info("step 4/4: results table")
    table = collect_mod.collect([workdir / "exp" / r.key for r in chosen], names=[r.name for r in chosen],
                                params=[r.params_m for r in chosen])
    paths = collect_mod.write_outputs(table, workdir / "results")
    print()
    print(collect_mod.to_markdown(table))
    print(ranking_line(table))
    failed = [o for o in outcomes if o.status in ("failed", "busy")]
    print(f"quickstart finished in {time.monotonic() - started:.0f} s" +
          (f" with {len(failed)} failed unit(s)" if failed else ""))
    print(f"  corpus      {corpus_dir}")
    for key, ckpt in ckpts.items():
        if ckpt is not None:
            print(f"  checkpoint  {ckpt} ({key})")
    print(f"  runs        {workdir / 'exp'}/<row>  (logs in <row>/logs, summary <row>/summary.txt)")
    for kind, path in paths.items():
        print(f"  {kind:11s} {path}")
    return {"outcomes": outcomes, "paths": paths, "ckpts": ckpts, "corpus": corpus_dir,
            "exp_root": workdir / "exp", "table": table}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl quickstart",
        description="Offline mini-SUPERB that ranks three upstreams: a tiny LightHuBERT at random init, the same "
                    "model distilled from fbank on the corpus audio, and fbank_no_cmvn, each through s3prl's "
                    "recipes at the mini task scale on a generated corpus. Re-running skips finished steps.")
    parser.add_argument("workdir", nargs="?", default="quickstart", help="working folder (default ./quickstart)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"tasks to run (default {DEFAULT_TASKS}; all = asr,asv,ks,ic,er,pr,sid)")
    parser.add_argument("--rows", help="a subset of distilled,random,fbank (default all three)")
    parser.add_argument("--er-folds", default="1",
                        help="ER folds to run (default 1, to keep the run near 5 minutes; 1,2,3,4,5 puts ER into the "
                             "score and takes about twice as long)")
    parser.add_argument("--preset", default="mini", help="corpus size preset (default mini)")
    parser.add_argument("--scale", default="mini", choices=("mini", "ci"),
                        help="task scale (default mini; ci is a smoke test that ranks nothing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the corpus, the checkpoints and (plus one) the downstream runs (default 0)")
    parser.add_argument("--steps", help="training steps: N for every task, or TASK=N pairs such as ks=1000,ic=500 "
                                        "(default: the scale's)")
    parser.add_argument("--distil-steps", type=int, help="distillation steps (default: configs/train/stage1_mini.yaml)")
    parser.add_argument("--jobs", type=int, default=2, help="s3prl processes at a time (default 2)")
    parser.add_argument("--threads", type=int,
                        help="torch threads per s3prl process (default: the CPUs this process may use, from its "
                             "affinity and cgroup quota, divided among the --jobs processes)")
    parser.add_argument("--corpus", type=Path, help="use an existing corpus folder instead of WORKDIR/corpus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    from lighthubert_s3prl.superb.corpus import CorpusError
    from lighthubert_s3prl.superb.options import RunnerError

    try:
        result = run_quickstart(Path(args.workdir), args.tasks, args.preset, args.seed, args.steps,
                                args.threads, args.er_folds, args.corpus, args.jobs, args.rows,
                                args.distil_steps, args.scale)
    except (RunnerError, CorpusError) as err:
        print(f"lighthubert-s3prl quickstart: error: {err}", file=sys.stderr)
        return 2
    return 1 if any(o.status in ("failed", "busy") for o in result["outcomes"]) else 0  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
