"""``lighthubert-s3prl quickstart``: the whole SUPERB pipeline on a laptop, offline, in minutes.

1. the mini-SUPERB corpus (``make_corpus``, preset ``ci`` by default) in ``WORKDIR/corpus``;
2. a tiny seeded LightHuBERT checkpoint in the official format in ``WORKDIR/checkpoints``;
3. short s3prl runs of a few tasks through the batch runner (``scripts/run_superb.sh``'s logic) in
   ``WORKDIR/exp``, with the ``ci`` task scale;
4. the collected results table (Markdown/CSV/JSON/PNG) in ``WORKDIR/results``, printed at the end.

Every step keeps its output, so running it again skips what is finished and resumes the rest. The
numbers are those of a random tiny model on synthetic speech: the point is the pipeline, not the score.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

LOG = logging.getLogger("lighthubert_s3prl.superb.quickstart")

DEFAULT_TASKS = "ks,ic,er"
CKPT_NAME = "lighthubert_tiny_seed{seed}.pt"


def ensure_checkpoint(workdir: Path, seed: int) -> Path:
    """A tiny random supernet in the released format (kept between runs; written atomically)."""
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    path = workdir / "checkpoints" / CKPT_NAME.format(seed=seed)
    if path.is_file():
        LOG.info("checkpoint: %s exists, reusing", path)
        return path
    LOG.info("checkpoint: writing a tiny seeded LightHuBERT supernet to %s", path)
    return write_random_checkpoint(path, "small", seed=seed, model_cfg=tiny_model_config())


def run_quickstart(workdir: Path, tasks: str = DEFAULT_TASKS, preset: str = "ci", seed: int = 0,
                   steps: Optional[int] = None, threads: Optional[int] = 1, er_folds: Optional[str] = None,
                   corpus: Optional[Path] = None) -> Dict[str, object]:
    """Run every step; returns the paths and outcomes (raises RunnerError/CorpusError on bad input)."""
    from . import collect as collect_mod
    from .corpus import make_corpus
    from .options import RunnerError, RunOptions, parse_folds, parse_task_list
    from .report import format_summary
    from .runner import SuperbRunner

    started = time.monotonic()
    workdir = workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    task_list = parse_task_list(tasks)

    corpus_dir = (corpus or workdir / "corpus").expanduser().resolve()
    LOG.info("step 1/4: corpus (%s preset, seed %d) in %s", preset, seed, corpus_dir)
    make_corpus(corpus_dir, preset=preset, seed=seed, tasks=task_list)

    LOG.info("step 2/4: checkpoint")
    ckpt = ensure_checkpoint(workdir, seed)

    LOG.info("step 3/4: s3prl runs of %s", ",".join(task_list))
    sets: Dict[str, Dict[str, object]] = {t: {} for t in task_list}
    if steps is not None:
        if steps < 1:
            raise RunnerError("--steps must be at least 1")
        for t in task_list:  # one evaluation and one checkpoint at the end of the shortened run
            sets[t].update({"runner.total_steps": steps, "runner.eval_step": steps, "runner.save_step": steps,
                            "runner.log_step": steps})
    exp_root = workdir / "exp"
    opts = RunOptions(upstream="lighthubert_local", tasks=task_list, ckpt=str(ckpt), exp_root=exp_root,
                      data={t: {"root": str(corpus_dir)} for t in task_list}, scale="ci", sets=sets,
                      er_folds=parse_folds(er_folds) if "er" in task_list else [], threads=threads)
    outcomes = SuperbRunner(opts).run()
    print()
    print(format_summary(outcomes, exp_root))

    LOG.info("step 4/4: results table")
    table = collect_mod.collect([exp_root], names=["LightHuBERT tiny (random, quickstart)"])
    paths = collect_mod.write_outputs(table, workdir / "results")
    print()
    print(collect_mod.to_markdown(table))
    failed = [o for o in outcomes if o.status in ("failed", "busy")]
    print(f"quickstart finished in {time.monotonic() - started:.0f} s" +
          (f" with {len(failed)} failed unit(s)" if failed else ""))
    print(f"  corpus      {corpus_dir}")
    print(f"  checkpoint  {ckpt}")
    print(f"  runs        {exp_root}  (logs in {exp_root / 'logs'}, summary {exp_root / 'summary.txt'})")
    for kind, path in paths.items():
        print(f"  {kind:11s} {path}")
    print(f"  submission  lighthubert-s3prl package public --from {exp_root} -o {workdir / 'predict.zip'}")
    return {"outcomes": outcomes, "paths": paths, "ckpt": ckpt, "corpus": corpus_dir, "exp_root": exp_root,
            "table": table}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl quickstart",
        description="Offline end-to-end demo: mini corpus, tiny seeded LightHuBERT checkpoint, short s3prl runs of "
                    "a few SUPERB tasks, collected results table. Re-running skips finished steps.")
    parser.add_argument("workdir", nargs="?", default="quickstart", help="working folder (default ./quickstart)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"tasks to run (default {DEFAULT_TASKS}; all = asr,asv,ks,ic,er,pr,sid)")
    parser.add_argument("--preset", default="ci", help="corpus size preset (default ci)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and the checkpoint (default 0)")
    parser.add_argument("--steps", type=int, help="training steps per task (default: the ci scale of each task)")
    parser.add_argument("--er-folds", help="ER folds to run (default all five)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per s3prl process (default 1: faster than more on a busy 2-core machine)")
    parser.add_argument("--corpus", type=Path, help="use an existing corpus folder instead of WORKDIR/corpus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    from .corpus import CorpusError
    from .options import RunnerError

    try:
        result = run_quickstart(Path(args.workdir), args.tasks, args.preset, args.seed, args.steps,
                                args.threads or None, args.er_folds, args.corpus)
    except (RunnerError, CorpusError) as err:
        print(f"lighthubert-s3prl quickstart: error: {err}", file=sys.stderr)
        return 2
    return 1 if any(o.status in ("failed", "busy") for o in result["outcomes"]) else 0  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
