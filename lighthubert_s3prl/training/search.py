"""Subnet search over a trained supernet under a parameter or MAC budget.

Candidates are scored by a proxy: the distillation loss of the supernet at that subnet against the
teacher's targets on fixed held-out audio (unmasked input, every frame). Teacher targets are computed
once, so a candidate costs one student forward per held-out batch. The budget's baseline (the largest
subnet that fits) always joins the first population and the best candidate is kept, so the winner is
never worse than that baseline on the proxy. The winner is written as a subnet YAML for ``-g``::

    lighthubert-s3prl search --ckpt runs/stage2/model.pt --config configs/train/stage2_small.yaml \\
        --max-params 30e6 --out subnet.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..io_utils import atomic_write_text
from ..model.checkpoint import build_supernet, load_checkpoint
from ..model.config import (
    ConfigError,
    ModelConfig,
    SearchSpace,
    SubnetConfig,
    count_parameters,
    largest_subnet_under_budget,
    save_subnet_file,
)
from ..model.cost import analytic_macs
from ..model.modules import conv_output_lengths
from ..model.supernet import LightHuBERTSupernet
from .config import TrainingConfig, apply_override, load_config, resolve_space, space_from_dict
from .data import Batch, build_dataset, fixed_batches
from .distill import TargetBuilder, student_frames
from .losses import distill_loss, frame_selection
from .masking import sample_span_mask, step_generator
from .models import SPACE_DEF_KEY
from .teachers import build_teacher

logger = logging.getLogger(__name__)

# held-out utterances the proxy scores by default: enough speakers that one or two cannot decide the ranking
PROXY_UTTERANCES = 256


# ---------------------------------------------------------------------------------------------------
def subnet_macs(subnet: SubnetConfig, model: ModelConfig, seconds: float = 1.0) -> int:
    """The model layer's analytic count (:func:`~lighthubert_s3prl.model.cost.analytic_macs`), which
    ``lighthubert-s3prl profile`` prints too, so a budget means the same number in both places."""
    return int(analytic_macs(subnet, model, seconds))


@dataclass
class Budget:
    kind: str  # "params" or "macs"
    limit: int
    model: ModelConfig
    seconds: float = 1.0

    def cost(self, subnet: SubnetConfig) -> int:
        if self.kind == "params":
            return count_parameters(subnet, self.model)
        return subnet_macs(subnet, self.model, self.seconds)

    def fits(self, subnet: SubnetConfig) -> bool:
        return self.cost(subnet) <= self.limit

    @property
    def flag(self) -> str:
        return "--max-params" if self.kind == "params" else "--max-macs"

    def check(self, space: SearchSpace) -> None:
        smallest = space.min_subnet()
        cost = self.cost(smallest)
        if cost > self.limit:
            unit = "parameters" if self.kind == "params" else f"MACs per {self.seconds:g} s"
            raise ConfigError(
                f"budget too small: the smallest subnet of space {space.name!r} ({smallest.describe()}) has "
                f"{cost:,} {unit}, above {self.flag}={self.limit:,}; raise {self.flag} to at least {cost:,}"
            )

    def baseline(self, space: SearchSpace) -> SubnetConfig:
        """The largest subnet under the budget: exact for parameters, best uniform subnet for MACs."""
        if self.kind == "params":
            return largest_subnet_under_budget(space, self.limit, self.model)
        uniform = [SubnetConfig.uniform(E, h, int(r * E), d) for E in space.embed_dim for h in space.heads_num
                   for r in space.ffn_ratio for d in space.layer_num]
        fitting = [(self.cost(s), s) for s in uniform if self.fits(s)]
        return max(fitting, key=lambda x: x[0])[1] if fitting else space.min_subnet()


# ---------------------------------------------------------------------------------------------------
class ProxyEvaluator:
    """Distillation loss of the supernet at a subnet on fixed held-out batches (teacher targets cached)."""

    def __init__(self, supernet: LightHuBERTSupernet, cfg: TrainingConfig, batches: Sequence[Batch],
                 device: torch.device, masked: bool = False, seed: int = 0) -> None:
        teacher = build_teacher(cfg.teachers[0], device)
        builder = TargetBuilder(teacher, cfg.target)
        if supernet.cfg.teacher_embed_dim != builder.dim:
            raise ConfigError(
                f"the supernet predicts {supernet.cfg.teacher_embed_dim}-wide targets but the teacher's "
                f"{cfg.target.source} are {builder.dim} wide; use the teacher and target the supernet was trained with"
            )
        self.model = supernet.to(device).eval()
        self.loss_type, self.cos_weight = cfg.loss.type, cfg.loss.cos_weight
        self.items: List[Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                batch = batch.to(device)
                frames, valid = student_frames(self.model, batch)
                target = builder(batch, frames, valid, self.model.downsample_rate)
                padding = batch.padding_mask if bool(batch.padding_mask.any()) else None
                mask, selected = None, valid
                if masked:  # the same masks for every subnet scored: fixed by the seed and the batch
                    m = cfg.mask
                    mask = sample_span_mask(conv_output_lengths(batch.lengths, self.model.cfg.conv_layers), frames,
                                            m.prob, m.length, m.min_spans, step_generator(seed, i)).to(device)
                    selected = frame_selection(valid, mask, cfg.loss.frames)
                self.items.append((batch.normalised(), padding, target, selected, mask))
        del teacher  # only the cached targets are needed from here on
        self.calls = 0

    @torch.no_grad()
    def __call__(self, subnet: SubnetConfig) -> float:
        self.calls += 1
        total = 0.0
        for wav, padding, target, selected, mask in self.items:
            out = self.model(wav, padding, subnet=subnet, predict=True, mask_indices=mask)
            loss, _ = distill_loss(out.predictions[max(out.predictions)], target, selected, self.loss_type, self.cos_weight)
            total += float(loss)
        return total / len(self.items)


# ---------------------------------------------------------------------------------------------------
Genome = Tuple[int, int, Tuple[int, ...], Tuple[float, ...]]  # embed_dim, depth, heads, ffn ratios per layer


def _to_subnet(g: Genome) -> SubnetConfig:
    E, L, heads, ratios = g
    return SubnetConfig(E, L, heads, tuple(int(r * E) for r in ratios))


def _to_genome(s: SubnetConfig, space: SearchSpace) -> Genome:
    ratios = []
    for f in s.ffn_embed:
        match = [r for r in space.ffn_ratio if int(r * s.embed_dim) == f]
        ratios.append(match[0] if match else min(space.ffn_ratio, key=lambda r: abs(r * s.embed_dim - f)))
    return (s.embed_dim, s.layer_num, tuple(s.heads_num), tuple(ratios))


def _mutate(g: Genome, space: SearchSpace, rng: random.Random, p: float) -> Genome:
    E, L, heads, ratios = g
    if rng.random() < p:
        E = rng.choice(space.embed_dim)
    if rng.random() < p:
        L = rng.choice(space.layer_num)
    heads = [rng.choice(space.heads_num) if rng.random() < p else h for h in heads[:L]]
    ratios = [rng.choice(space.ffn_ratio) if rng.random() < p else r for r in ratios[:L]]
    while len(heads) < L:  # deeper than the parent: new layers are drawn at random
        heads.append(rng.choice(space.heads_num))
        ratios.append(rng.choice(space.ffn_ratio))
    return (E, L, tuple(heads), tuple(ratios))


def _crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    E = rng.choice((a[0], b[0]))
    L = rng.choice((a[1], b[1]))
    heads, ratios = [], []
    for i in range(L):
        options = [g for g in (a, b) if i < g[1]]
        src = rng.choice(options)
        heads.append(src[2][i])
        ratios.append(src[3][i])
    return (E, L, tuple(heads), tuple(ratios))


@dataclass
class SearchResult:
    best: SubnetConfig
    best_score: float
    baseline: SubnetConfig
    baseline_score: float
    history: List[Dict[str, Any]] = field(default_factory=list)


def search(
    space: SearchSpace,
    budget: Budget,
    score: Callable[[SubnetConfig], float],
    algorithm: str = "evolutionary",
    population: int = 16,
    generations: int = 6,
    mutation_prob: float = 0.3,
    seed: int = 0,
) -> SearchResult:
    """Evolutionary (or random) search for the lowest proxy score among subnets within ``budget``."""
    if algorithm not in ("evolutionary", "random"):
        raise ConfigError(f"--algorithm={algorithm!r}; allowed values: ['evolutionary', 'random']")
    if population < 2 or generations < 0:
        raise ConfigError("--population must be >= 2 and --generations >= 0")
    budget.check(space)
    rng = random.Random(seed)
    baseline = budget.baseline(space)
    scores: Dict[Genome, float] = {}
    history: List[Dict[str, Any]] = []

    def evaluate(g: Genome) -> float:
        if g not in scores:
            s = _to_subnet(g)
            scores[g] = score(s)
            history.append({"subnet": s.describe(), "cost": budget.cost(s), "score": scores[g]})
        return scores[g]

    def fits(g: Genome) -> bool:
        s = _to_subnet(g)
        return space.contains(s) and budget.fits(s)

    def random_member(limit: int) -> Optional[Genome]:
        for _ in range(limit):
            g = _to_genome(space.sample(rng), space)
            if fits(g):
                return g
        # a tight budget rejects most samples: walk from the baseline instead
        for _ in range(limit):
            g = _mutate(_to_genome(baseline, space), space, rng, 0.5)
            if fits(g):
                return g
        return None

    start = _to_genome(baseline, space)
    pop = [start]
    total = population if algorithm == "evolutionary" else population * (generations + 1)
    for _ in range(10 * total):  # a tight budget may admit fewer distinct subnets than asked for
        if len(pop) >= total:
            break
        g = random_member(200)
        if g is None:
            break
        if g not in pop:
            pop.append(g)
    for g in pop:
        evaluate(g)
    if algorithm == "evolutionary":
        for gen in range(generations):
            ranked = sorted(pop, key=lambda g: scores[g])
            parents = ranked[: max(2, population // 2)]
            children: List[Genome] = []
            tries = 0
            while len(children) < population - len(parents) and tries < 50 * population:
                tries += 1
                if len(parents) > 1 and rng.random() < 0.5:
                    a, b = rng.sample(parents, 2)
                    child = _mutate(_crossover(a, b, rng), space, rng, mutation_prob / 2)
                else:
                    child = _mutate(rng.choice(parents), space, rng, mutation_prob)
                if child in scores or child in children or not fits(child):
                    continue
                children.append(child)
            for c in children:
                evaluate(c)
            pop = sorted(parents + children, key=lambda g: scores[g])[:population]
            logger.info("generation %d: best proxy %.5f (%s)", gen + 1, scores[pop[0]], _to_subnet(pop[0]).describe())
    best = min(scores, key=lambda g: (scores[g], budget.cost(_to_subnet(g))))
    return SearchResult(_to_subnet(best), scores[best], baseline, scores[start], history)


# ---------------------------------------------------------------------------------------------------
def space_of_checkpoint(loaded: Any) -> SearchSpace:
    """The space a checkpoint records: our ``search_space_def``, else its released space."""
    model_cfg = loaded.raw_cfg.get("model", {})
    if isinstance(model_cfg.get(SPACE_DEF_KEY), dict):
        return space_from_dict(model_cfg[SPACE_DEF_KEY])
    if loaded.search_space is not None:
        return loaded.search_space
    raise ConfigError(f"{loaded.path} records no search space; pass --space small|base or a config with a space")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lighthubert-s3prl search",
                                description="Search a subnet of a trained supernet under a parameter or MAC budget.")
    p.add_argument("--ckpt", required=True, help="supernet checkpoint (a stage-2 model.pt or an official file)")
    p.add_argument("--config", help="training YAML whose teacher, target, loss and data.valid are used")
    p.add_argument("--teacher", help="teacher: an s3prl upstream name, or a LightHuBERT checkpoint path")
    p.add_argument("--data", help="held-out audio: folder, list file or 'synthetic' (default: data.valid)")
    p.add_argument("--space", help="search space name (default: the checkpoint's or the config's)")
    p.add_argument("--max-params", type=float, help="parameter budget, e.g. 30e6")
    p.add_argument("--max-macs", type=float, help="MAC budget per --seconds of audio, e.g. 2e9")
    p.add_argument("--seconds", type=float, default=1.0, help="audio length the MAC budget refers to")
    p.add_argument("--algorithm", default="evolutionary", choices=["evolutionary", "random"])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--mutation-prob", type=float, default=0.3)
    p.add_argument("--utterances", type=int, default=PROXY_UTTERANCES,
                   help=f"held-out utterances for the proxy, shuffled and spread over the speakers (default {PROXY_UTTERANCES})")
    p.add_argument("--batches", type=int, default=None,
                   help="held-out batches of data.batch_size instead of --utterances")
    p.add_argument("--masked", action="store_true",
                   help="score with masked input and the loss on masked frames, as the authors' validation "
                        "(mask and loss.frames settings of the config; the masks are fixed by --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config setting, e.g. target.layers=last:8")
    p.add_argument("--out", required=True, help="where to write the winning subnet (YAML or JSON)")
    return p


def _search_config(args: argparse.Namespace) -> Tuple[TrainingConfig, bool]:
    """The stage-2 style config the proxy needs, and whether it names a search space itself."""
    import yaml

    raw: Dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {args.config!r} does not exist; pass a training YAML")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {args.config} must hold a mapping of sections")
        if raw.get("stage") == "ekd":
            raise ConfigError("search scores subnets with the stage-1/2 distillation loss; give a stage-1/2 config, "
                              "not an EKD one")
    if args.teacher:
        is_ckpt = args.teacher.endswith(".pt") or Path(args.teacher).is_file()
        raw.pop("teachers", None)
        raw["teacher"] = {"ckpt": args.teacher} if is_ckpt else {"name": args.teacher}
    if not raw.get("teacher") and not raw.get("teachers"):
        raise ConfigError("search needs a teacher: pass --teacher NAME_OR_CKPT or --config with a teacher")
    data = dict(raw.get("data") or {})
    if args.data:
        data["valid"] = args.data
    if not data.get("valid"):
        raise ConfigError("search needs held-out audio: pass --data DIR (or 'synthetic') or set data.valid in the config")
    data.setdefault("train", data["valid"])  # the schema wants training data; the proxy never reads it
    raw["data"] = data
    student = dict(raw.get("student") or {})
    student["init"] = args.ckpt
    raw.update(stage="stage2", student=student)
    for item in args.override:  # applied here so that `-o space=...` counts as naming a space
        apply_override(raw, item)
    explicit_space = raw.get("space") is not None
    return load_config(raw, ["train.eval_every=0"], "stage2"), explicit_space


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if (args.max_params is None) == (args.max_macs is None):
        raise ConfigError("give exactly one budget: --max-params N or --max-macs N")
    if args.batches is not None and args.batches < 1:
        raise ConfigError(f"--batches={args.batches}: the proxy needs at least one held-out batch")
    if args.utterances < 1:
        raise ConfigError(f"--utterances={args.utterances}: the proxy needs at least one held-out utterance")
    cfg, explicit_space = _search_config(args)
    loaded = load_checkpoint(args.ckpt)
    if loaded.kind == "compact":
        raise ConfigError(f"{args.ckpt} is a compact export of one subnet; search needs the supernet checkpoint")
    if not any(k.startswith("layer_pred_heads.") for k in loaded.state_dict):
        # without trained heads every prediction is zero and every subnet scores the same proxy loss
        raise ConfigError(f"{args.ckpt} holds no distillation prediction heads (layer_pred_heads.*), so the proxy "
                          "cannot rank subnets; search the model.pt that 'train stage2' writes")
    space = resolve_space(args.space) if args.space else (
        resolve_space(cfg.space) if explicit_space else space_of_checkpoint(loaded))
    try:
        space.max_subnet().validate_for(loaded.model_cfg)
    except ConfigError as err:
        raise ConfigError(f"space {space.name!r} does not fit {args.ckpt}: {err}; pass the space it was trained with") from None
    budget = Budget("params", int(args.max_params), loaded.model_cfg) if args.max_params is not None else \
        Budget("macs", int(args.max_macs), loaded.model_cfg, args.seconds)
    budget.check(space)  # fail before the teacher is loaded
    device = torch.device(args.device)
    valid = build_dataset(cfg.data.valid, cfg.data, "data.valid", cfg.train.seed, valid=True)
    count = args.batches if args.batches is not None else math.ceil(args.utterances / cfg.data.batch_size)
    batches = fixed_batches(valid, cfg.data.batch_size, count, args.seed)
    proxy = ProxyEvaluator(build_supernet(loaded), cfg, batches, device, masked=args.masked, seed=args.seed)
    result = search(space, budget, proxy, args.algorithm, args.population, args.generations, args.mutation_prob, args.seed)
    write_result(result, budget, space, Path(args.out), args.ckpt)
    print(f"best subnet ({budget.kind} {budget.cost(result.best):,} <= {budget.limit:,}): {result.best.describe()}\n"
          f"proxy loss {result.best_score:.5f} vs {result.baseline_score:.5f} for the budget's largest subnet "
          f"({result.baseline.describe()}); {len(result.history)} candidates scored; written to {args.out}")
    return 0


def write_result(result: SearchResult, budget: Budget, space: SearchSpace, out: Path, ckpt: str) -> None:
    """The subnet file (``-g`` takes it) and a ``.search.json`` report beside it."""
    params = count_parameters(result.best, budget.model)
    note = (f"searched on {ckpt} under {budget.flag}={budget.limit:,}; proxy loss {result.best_score:.5f} "
            f"(budget's largest subnet: {result.baseline_score:.5f})")
    save_subnet_file(result.best, out, params=params, search_space=space.name, note=note)
    report = {
        "checkpoint": str(ckpt), "space": space.to_dict(), "budget": {"kind": budget.kind, "limit": budget.limit,
                                                                      "seconds": budget.seconds},
        "best": {"subnet": result.best.to_dict(), "score": result.best_score, "cost": budget.cost(result.best),
                 "params": params},
        "baseline": {"subnet": result.baseline.to_dict(), "score": result.baseline_score,
                     "cost": budget.cost(result.baseline)},
        "history": result.history,
    }
    atomic_write_text(out.with_suffix(".search.json"), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":  # `lighthubert-s3prl search` is the documented way; this keeps -m working
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
