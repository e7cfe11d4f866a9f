"""``lighthubert-s3prl reproduce-mini OUT``: LightHuBERT's pipeline in miniature, offline, on 2 CPU cores.

corpus (``--preset mini``) -> stage 1 (the tiny supernet distilled from s3prl's weight-free ``fbank``) ->
stage 2 (once-for-all over a tiny space, from the stage-1 model) -> subnet search at two parameter budgets ->
the mini-SUPERB scale for every row below, with one or more downstream seeds -> a table, a figure (each
task's metric against parameters) and the paper's claims checked against seed noise.

=================  =========================================================================
row                what runs
=================  =========================================================================
``random``         the tiny supernet at random init, largest subnet
``stage1``         the stage-1 student, largest subnet
``stage1_cut``     the stage-1 student cut to the space's default subnet, without stage 2
``stage2_max``     the stage-2 supernet at its largest, default and smallest subnets
``stage2_default``
``stage2_min``
``search_same``    the subnet searched under the default subnet's parameter count
``search_small``   the subnet searched under a budget halfway between the smallest and default
``teacher``        the teacher itself (s3prl's ``fbank``: per-utterance CMVN makes its mean-pooled
                   features zero, so pooled tasks sit at chance)
``fbank_no_cmvn``  the same features without CMVN, the instrument's known-good reference row
=================  =========================================================================

Every step keeps its output (checkpoints, subnets, runner roots ``OUT/exp/<row>/seed<N>``), so running it
again skips what is finished and resumes the rest.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lighthubert_s3prl.cpu_budget import choose_threads

from .quickstart import Row, ensure_random_checkpoint, pick_rows, run_rows, shortened, train_once

LOG = logging.getLogger("lighthubert_s3prl.commands.reproduce_mini")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
STAGE1_CONFIG, STAGE2_CONFIG = CONFIGS / "stage1_mini.yaml", CONFIGS / "stage2_mini.yaml"
DEFAULT_TASKS = "ks,ic,er"


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    checkpoint: Optional[str]  # "random", "stage1", "stage2"; None: an s3prl upstream with no weights of ours
    subnet: Optional[str]  # a file under OUT/subnets, or None for the checkpoint's own
    upstream: str = "lighthubert_local"  # what run_superb runs (s3prl's name for the weight-free rows)


VARIANTS: Tuple[Variant, ...] = (
    Variant("random", "random init (largest)", "random", None),
    Variant("stage1", "stage 1 (largest)", "stage1", None),
    Variant("stage1_cut", "stage 1 cut to the default subnet", "stage1", "default"),
    Variant("stage2_max", "stage 2, largest subnet", "stage2", "max"),
    Variant("stage2_default", "stage 2, default subnet", "stage2", "default"),
    Variant("stage2_min", "stage 2, smallest subnet", "stage2", "min"),
    Variant("search_same", "stage 2, searched at the default's size", "stage2", "search_same"),
    Variant("search_small", "stage 2, searched at a smaller size", "stage2", "search_small"),
    Variant("teacher", "the teacher (fbank)", None, None, "fbank"),
    Variant("fbank_no_cmvn", "fbank without CMVN (reference feature)", None, None, "fbank_no_cmvn"),
)


@dataclass(frozen=True)
class Claim:
    text: str
    pairs: Tuple[Tuple[str, str], ...]  # (better, worse) rows
    strict: bool  # True: better must lead by more than the noise margin; False: must not trail by more


CLAIMS: Tuple[Claim, ...] = (
    Claim("distillation beats random init", (("stage1", "random"),), True),
    Claim("once-for-all training makes a cut subnet much better than cutting the stage-1 model",
          (("stage2_default", "stage1_cut"),), True),
    Claim("bigger subnets score at least as well as smaller ones",
          (("stage2_max", "stage2_default"), ("stage2_default", "stage2_min")), False),
    Claim("the searched subnet is no worse than the default of its budget", (("search_same", "stage2_default"),), False),
)


def _write_subnet(path: Path, subnet, note: str) -> None:
    import yaml

    from lighthubert_s3prl.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump({"subnet": subnet.to_dict(), "note": note}, sort_keys=False))


def prepare_subnets(out: Path, stage2: Path, corpus: Path, seed: int, population: int, generations: int,
                    searches: Sequence[str] = ("search_same", "search_small")) -> Dict[str, Path]:
    """The default / largest / smallest subnets of the stage-2 space and the searched ones the rows use, as -g
    files (a search costs minutes: it runs only when a chosen row needs its subnet)."""
    from lighthubert_s3prl.model.checkpoint import load_checkpoint
    from lighthubert_s3prl.model.config import count_parameters
    from lighthubert_s3prl.training import search

    folder = out / "subnets"
    loaded = load_checkpoint(stage2)
    space = loaded.search_space
    files = {"default": folder / "default.yaml", "max": folder / "max.yaml", "min": folder / "min.yaml"}
    for key, subnet in (("default", space.default), ("max", space.max_subnet()), ("min", space.min_subnet())):
        if not files[key].is_file():
            _write_subnet(files[key], subnet, f"the {key} subnet of space {space.name!r}")
    default_params = count_parameters(space.default, loaded.model_cfg)
    min_params = count_parameters(space.min_subnet(), loaded.model_cfg)
    budgets = {"search_same": default_params, "search_small": (default_params + min_params) // 2}
    for key, budget in budgets.items():
        if key not in searches:
            continue
        files[key] = folder / f"{key}.yaml"
        if files[key].is_file():
            LOG.info("search %s: %s exists, reusing", key, files[key])
            continue
        LOG.info("search %s: at most %s parameters", key, f"{budget:,}")
        search.main(["--ckpt", str(stage2), "--config", str(STAGE2_CONFIG), "--data",
                     str(corpus / "LibriSpeech" / "dev-clean"), "--max-params", str(budget), "--seed", str(seed),
                     "--population", str(population), "--generations", str(generations),
                     "-o", f"data.train={corpus / 'LibriSpeech' / 'train-clean-100'}", "--out", str(files[key])])
    return files


def claim_lines(rows, tasks: Sequence[str], margin: float) -> List[str]:
    """Each claim, task by task: the gap, the noise it is compared with, and whether it held."""
    from lighthubert_s3prl.superb.calibration import gap

    lines = []
    for claim in CLAIMS:
        verdicts, details, one_seed = [], [], False
        for better, worse in claim.pairs:
            for task in tasks:
                g = gap(rows, task, better, worse, margin)
                if g.gap is None:
                    details.append(f"{task.upper()} {better}-{worse}: not measured")
                    continue
                one_seed = one_seed or g.noise is None
                noise = g.noise if g.noise is not None else 0.0
                held = g.gap > margin * noise if claim.strict else g.gap >= -margin * noise
                verdicts.append(held)
                spread = "n/a (one seed)" if g.noise is None else f"{g.noise:.2f}"
                details.append(f"{task.upper()} {better}-{worse} {g.gap:+.2f} (seed spread {spread})")
        status = "not measured" if not verdicts else ("held" if all(verdicts) else "did NOT hold")
        if verdicts and one_seed:  # without a spread a sign is all there is: say so
            status = f"{'ahead' if all(verdicts) else 'behind'} on one seed, not established (run --seeds 1,2,3)"
        lines.append(f"- {claim.text}: **{status}** ({'; '.join(details)})")
    return lines


def draw_figure(rows, params: Dict[str, float], tasks: Sequence[str], path: Path) -> Path:
    """Each task's metric (mean, seed spread as error bar) against parameters, one marker per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lighthubert_s3prl.io_utils import atomic_write

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for key in rows:
            cell = rows[key].get(task)
            if cell is None or cell.mean is None or key not in params:
                continue
            ax.errorbar([params[key]], [cell.mean], yerr=[cell.std or 0.0], fmt="o", capsize=3,
                        color="grey" if key in ("random", "teacher", "fbank_no_cmvn") else None)
            ax.annotate(key, (params[key], cell.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(f"{task.upper()} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("LightHuBERT in miniature (synthetic mini corpus; not comparable to the leaderboard)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def run_reproduce_mini(out: Path, tasks: str = DEFAULT_TASKS, seeds: Sequence[int] = (1,), preset: str = "mini",
                       corpus_seed: int = 0, stage1_steps: Optional[int] = None, stage2_steps: Optional[int] = None,
                       population: int = 8, generations: int = 3, er_folds: str = "1", scale: str = "mini",
                       steps: Optional[int] = None, jobs: int = 2, rows: Optional[str] = None,
                       margin: float = 2.0, corpus: Optional[Path] = None) -> Dict[str, object]:
    """Run every step (each skipped when its output exists); returns the claims, the rows and the paths."""
    from lighthubert_s3prl.io_utils import atomic_write_text
    from lighthubert_s3prl.model.checkpoint import load_checkpoint
    from lighthubert_s3prl.model.config import count_parameters, resolve_subnet
    from lighthubert_s3prl.superb.calibration import read_calibration, to_json, to_markdown
    from lighthubert_s3prl.superb.corpus import make_corpus
    from lighthubert_s3prl.superb.options import RunOptions, parse_folds, parse_task_list
    from lighthubert_s3prl.superb.runner import SuperbRunner

    started = time.monotonic()
    out = out.expanduser().resolve()
    task_list = parse_task_list(tasks)
    chosen = pick_rows(rows, VARIANTS)
    corpus = (corpus or out / "corpus").expanduser().resolve()
    LOG.info("step 1/6: corpus (%s preset, seed %d) in %s", preset, corpus_seed, corpus)
    make_corpus(corpus, preset=preset, seed=corpus_seed, tasks=task_list + ["asr"])
    train_audio = corpus / "LibriSpeech" / "train-clean-100"

    LOG.info("step 2/6: stage 1")
    ckpts: Dict[str, Path] = {"random": ensure_random_checkpoint(out, corpus_seed)}
    common = [f"data.train={train_audio}", f"train.seed={corpus_seed}"]
    again = "run reproduce-mini again"
    ckpts["stage1"] = train_once(STAGE1_CONFIG, common + [f"train.output_dir={out / 'train' / 'stage1'}"] +
                                 ([f"train.steps={stage1_steps}"] if stage1_steps else []),
                                 out / "checkpoints" / "stage1.pt", "stage1", again)
    LOG.info("step 3/6: stage 2 (once-for-all)")
    ckpts["stage2"] = train_once(STAGE2_CONFIG, common + [f"student.init={ckpts['stage1']}",
                                                          f"train.output_dir={out / 'train' / 'stage2'}"] +
                                 ([f"train.steps={stage2_steps}"] if stage2_steps else []),
                                 out / "checkpoints" / "stage2.pt", "stage2", again)
    LOG.info("step 4/6: subnets and search")
    subnets = prepare_subnets(out, ckpts["stage2"], corpus, corpus_seed, population, generations,
                              [v.subnet for v in chosen if v.subnet and v.subnet.startswith("search")])

    LOG.info("step 5/6: %s scale of %s for %d rows x seeds %s, %d at a time", scale, ",".join(task_list),
             len(chosen), ",".join(map(str, seeds)), jobs)
    sets = shortened(task_list, steps)
    folds = parse_folds(er_folds) if "er" in task_list else []
    # one runner root per row and seed; run_rows keeps two jobs of one root apart
    plan = {f"{v.key}/seed{s}": (v, s) for s in seeds for v in chosen}
    threads = choose_threads(jobs)
    LOG.info("threads: %s", threads.reason)

    def make_runner(job: Row, task: str) -> SuperbRunner:
        variant, seed = plan[job.key]
        ckpt = None if variant.checkpoint is None else str(ckpts[variant.checkpoint])
        return SuperbRunner(RunOptions(
            upstream=job.upstream, tasks=[task], ckpt=ckpt,
            subnet=None if variant.subnet is None else str(subnets[variant.subnet]),
            exp_root=out / "exp" / job.key, data={task: {"root": str(corpus)}}, scale=scale, sets={task: sets[task]},
            er_folds=folds, threads=threads.threads, seed=seed))

    jobs_list = [(Row(f"{v.key}/seed{s}", v.name, v.upstream, None), t)
                 for s in seeds for t in task_list for v in chosen]
    outcomes = run_rows(jobs_list, make_runner, jobs)
    failed = [o for result in outcomes.values() for o in result if o.status in ("failed", "busy")]

    LOG.info("step 6/6: table, figure and claims")
    params: Dict[str, float] = {v.key: 0.0 for v in chosen if v.checkpoint is None}
    loaded = {key: load_checkpoint(path) for key, path in ckpts.items()}
    for v in chosen:
        if v.checkpoint is not None:
            ckpt = loaded[v.checkpoint]
            subnet = resolve_subnet(None if v.subnet is None else str(subnets[v.subnet]), ckpt.default_subnet)
            params[v.key] = count_parameters(subnet, ckpt.model_cfg) / 1e6
    found = read_calibration(out / "exp")
    measured = {v.key: found[v.key] for v in VARIANTS if v.key in found}  # the table in pipeline order
    results = out / "results"
    pairs = [(a, b) for c in CLAIMS for a, b in c.pairs]  # the gaps the claims rest on
    table = to_markdown(measured, pairs, margin)
    claims = claim_lines(measured, task_list, margin)
    lines = ["# LightHuBERT in miniature", "", f"rows x seeds {','.join(map(str, seeds))}, {scale} scale, "
             f"corpus {preset} (seed {corpus_seed}); parameters (M): " +
             ", ".join(f"{k} {params[k]:.3f}" for k in params), "", table, "", "## The paper's claims", ""] + claims
    atomic_write_text(results / "reproduce_mini.md", "\n".join(lines) + "\n")
    atomic_write_text(results / "reproduce_mini.json", json.dumps(
        {"params_m": params, "claims": claims, **to_json(measured, pairs, margin)}, indent=2) + "\n")
    figure = draw_figure(measured, params, task_list, results / "reproduce_mini.png")
    print("\n".join(lines))
    print(f"reproduce-mini finished in {time.monotonic() - started:.0f} s" +
          (f" with {len(failed)} failed unit(s)" if failed else ""))
    print(f"  table   {results / 'reproduce_mini.md'}\n  figure  {figure}\n  runs    {out / 'exp'}/<row>/seed<N>")
    return {"claims": claims, "rows": measured, "params": params, "failed": failed, "results": results}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl reproduce-mini",
        description="LightHuBERT's pipeline in miniature (stage 1, once-for-all stage 2, search, mini-SUPERB) on a "
                    "generated corpus with s3prl's weight-free fbank as the teacher; prints the paper's claims "
                    "with their numbers. Re-running skips finished steps.")
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"tasks (default {DEFAULT_TASKS})")
    parser.add_argument("--seeds", default="1", help="downstream seeds, e.g. 1,2,3 (default 1)")
    parser.add_argument("--rows", help=f"a subset of {','.join(v.key for v in VARIANTS)} (default all)")
    parser.add_argument("--er-folds", default="1", help="ER folds (default 1)")
    parser.add_argument("--preset", default="mini", help="corpus preset (default mini)")
    parser.add_argument("--corpus-seed", type=int, default=0, help="corpus and training seed (default 0)")
    parser.add_argument("--stage1-steps", type=int, help="default: configs/train/stage1_mini.yaml's")
    parser.add_argument("--stage2-steps", type=int, help="default: configs/train/stage2_mini.yaml's")
    parser.add_argument("--population", type=int, default=8, help="search population (default 8)")
    parser.add_argument("--generations", type=int, default=3, help="search generations (default 3)")
    parser.add_argument("--scale", default="mini", choices=("mini", "ci"), help="task scale (default mini)")
    parser.add_argument("--steps", type=int, help="downstream steps per task (default: the scale's)")
    parser.add_argument("--jobs", type=int, default=2, help="s3prl processes at a time (default 2)")
    parser.add_argument("--corpus", type=Path, help="use an existing corpus folder instead of OUT/corpus")
    parser.add_argument("--margin", type=float, default=2.0,
                        help="a gap counts when it exceeds this many seed spreads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    from lighthubert_s3prl.model.config import ConfigError
    from lighthubert_s3prl.superb.corpus import CorpusError
    from lighthubert_s3prl.superb.options import RunnerError

    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not seeds or not all(s.isdigit() for s in seeds):
        print(f"lighthubert-s3prl reproduce-mini: error: --seeds {args.seeds!r}: give seeds as numbers, e.g. 1,2,3",
              file=sys.stderr)
        return 2
    try:
        result = run_reproduce_mini(args.out, args.tasks, [int(s) for s in seeds], args.preset, args.corpus_seed,
                                    args.stage1_steps, args.stage2_steps, args.population, args.generations,
                                    args.er_folds, args.scale, args.steps, args.jobs, args.rows, args.margin,
                                    args.corpus)
    except (RunnerError, CorpusError, ConfigError) as err:
        print(f"lighthubert-s3prl reproduce-mini: error: {err}", file=sys.stderr)
        return 2
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
