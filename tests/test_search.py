"""Subnet search: the exact budget search (``largest_subnet_under_budget``, ``subnet --budget``,
``budget:SPACE:N``) and the evolutionary search of ``training/search.py``.

Expected subnets are written out literally, tie-breaks included, so two runs and two versions agree. Each is
also checked against answers computed here without the library: an independent parameter count from the
released tensor shapes, the set of every parameter total a space can reach, and a brute force over every
per-layer sequence of a reduced space.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import re
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import pytest

from lighthubert_s3prl.commands import subnet as subnet_cli
from lighthubert_s3prl.model.config import (
    SEARCH_SPACES,
    ConfigError,
    ModelConfig,
    SearchSpace,
    SubnetConfig,
    count_parameters,
    largest_subnet_under_budget,
    resolve_subnet,
)
from lighthubert_s3prl.model.checkpoint import tiny_model_config
from lighthubert_s3prl.training import search as search_module
from lighthubert_s3prl.training.search import (
    Budget,
    _crossover,
    _mutate,
    _to_genome,
    _to_subnet,
    search,
    subnet_macs,
)

# The standard supernet's CNN: seven bias-free convs, 512 channels (kernel 10, then 3 x4, then 2 x2), and a
# GroupNorm (weight and bias) after the first one.
CNN_PARAMETERS = 512 * 1 * 10 + 4 * (512 * 512 * 3) + 2 * (512 * 512 * 2) + 2 * 512


def independent_layer_parameters(E: int, heads: int, ffn: int) -> int:
    """One transformer layer at width ``E``: q/k/v (E -> 64*heads, with bias), out (64*heads -> E, with bias),
    fc1 (E -> ffn), fc2 (ffn -> E) and two LayerNorms."""
    A = 64 * heads
    return 3 * (E * A + A) + (A * E + E) + (E * ffn + ffn) + (ffn * E + E) + 2 * (2 * E)


def independent_shared_parameters(E: int) -> int:
    """Everything outside the layers, as the authors' calc_sampled_param_num counts it: the CNN, its output
    LayerNorm (512), mask_emb (kept at the full 768), post_extract_proj (512 -> E), the grouped positional conv
    sliced to E channels (16 groups, kernel 128, plus bias) and the encoder LayerNorm."""
    return CNN_PARAMETERS + 2 * 512 + 768 + (512 * E + E) + (E * (E // 16) * 128 + E) + 2 * E


def independent_parameters(subnet: SubnetConfig) -> int:
    E = subnet.embed_dim
    return independent_shared_parameters(E) + sum(
        independent_layer_parameters(E, h, f) for h, f in zip(subnet.heads_num, subnet.ffn_embed))


def test_independent_count_reproduces_the_published_sizes():
    """The count used below as ground truth gives the released models' published sizes."""
    assert independent_parameters(SubnetConfig.uniform(384, 6, 1536, 12)) == 26_873_600  # lighthubert_small
    assert independent_parameters(SubnetConfig.uniform(640, 10, 2560, 12)) == 66_891_520  # lighthubert_base
    assert independent_parameters(SubnetConfig.uniform(768, 12, 3072, 12)) == 94_371_584  # lighthubert_stage1


def reachable_totals(space: SearchSpace, E: int, layers: int) -> Set[int]:
    """Every parameter total a subnet of ``space`` with width ``E`` and depth ``layers`` can have."""
    per_layer = {independent_layer_parameters(E, h, int(r * E)) for h in space.heads_num for r in space.ffn_ratio}
    totals = {independent_shared_parameters(E)}
    for _ in range(layers):
        totals = {t + p for t in totals for p in per_layer}
    return totals


# (space, budget, the expected subnet, its parameter count). Ties between subnets of equal size go to the
# narrower, then the shallower one, with bigger layers first (by parameters, then heads, then FFN width).
DOCUMENTED_BUDGETS = [
    # README: `lighthubert-s3prl subnet --space small --budget 30e6` and `subnet: budget:small:30e6`
    ("small", 30_000_000, SubnetConfig(512, 11, (6,) + (4,) * 10, (1536,) * 11), 29_953_920),
    # exactly the released small's size: the tie-break picks 8+4 heads over its uniform 6 (same total)
    ("small", 26_873_600, SubnetConfig(384, 12, (8,) * 6 + (4,) * 6, (1536,) * 12), 26_873_600),
    ("small", 20_000_000, SubnetConfig(384, 11, (4,) * 11, (1536,) + (1152,) * 10), 19_979_264),
    ("base", 70_000_000, SubnetConfig(640, 12, (12,) * 10 + (10, 8), (2560,) * 12), 69_844_096),
    ("base", 41_243_392, SubnetConfig.uniform(512, 8, 1792, 12), 41_243_392),  # exactly base-min
]


@pytest.mark.parametrize("space_name,budget,expected,params", DOCUMENTED_BUDGETS)
def test_budget_search_returns_the_pinned_largest_subnet(space_name: str, budget: int, expected: SubnetConfig,
                                                        params: int):
    space = SEARCH_SPACES[space_name]
    assert largest_subnet_under_budget(space, budget) == expected
    assert independent_parameters(expected) == params <= budget
    assert count_parameters(expected) == params
    assert space.contains(expected)
    # no subnet of the space with more parameters fits, and no narrower or shallower one reaches this size
    best_below: Dict[Tuple[int, int], int] = {}
    for E in space.embed_dim:
        for depth in space.layer_num:
            fitting = [t for t in reachable_totals(space, E, depth) if t <= budget]
            if fitting:
                best_below[(E, depth)] = max(fitting)
    assert max(best_below.values()) == params
    assert min(key for key, total in best_below.items() if total == params) == (expected.embed_dim, expected.layer_num)


def test_subnet_cli_budget_prints_the_pinned_subnet(capsys):
    """The README's command, and the `budget:` spec of subnet configs, give the pinned subnet."""
    assert subnet_cli.main(["--space", "small", "--budget", "30e6", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"atten_dim": [384] + [256] * 10, "embed_dim": 512, "ffn_embed": [1536] * 11,
                       "heads_num": [6] + [4] * 10, "layer_num": 11, "slide_wsz": ["global"] * 11}
    assert resolve_subnet("budget:small:30e6") == DOCUMENTED_BUDGETS[0][2]


# A space small enough to list every per-layer sequence: 2 widths x (4^6 + 4^7) sequences.
REDUCED = SearchSpace("reduced", (256, 384), (4, 8), (3.0, 4.0), (6, 7), SubnetConfig.uniform(384, 8, 1536, 7))


def _brute_force_winners(space: SearchSpace) -> Tuple[List[int], Dict[int, SubnetConfig]]:
    """Every reachable total, and per total the subnet the documented tie-break picks among all sequences
    that reach it: narrowest, then shallowest, then the lexicographically biggest layers (by parameters,
    heads, FFN width)."""
    winners: Dict[int, Tuple[tuple, SubnetConfig]] = {}
    for E in space.embed_dim:
        options = [(independent_layer_parameters(E, h, int(r * E)), h, int(r * E))
                   for h in space.heads_num for r in space.ffn_ratio]
        for depth in space.layer_num:
            for layers in itertools.product(options, repeat=depth):
                total = independent_shared_parameters(E) + sum(p for p, _, _ in layers)
                key = (E, depth, tuple((-p, -h, -f) for p, h, f in layers))
                if total not in winners or key < winners[total][0]:
                    winners[total] = (key, SubnetConfig(E, depth, tuple(h for _, h, _ in layers),
                                                        tuple(f for _, _, f in layers)))
    return sorted(winners), {t: w for t, (_, w) in winners.items()}


def test_budget_search_matches_brute_force_on_a_reduced_space():
    """At every reachable total (where an off-by-one in the comparison shows) and one below it (where a
    wrong tie or a too-big answer shows), the search returns exactly the brute-force winner."""
    totals, winners = _brute_force_winners(REDUCED)
    assert len(totals) > 100  # many ties: sequences of equal total are common
    for total in totals:
        for budget in (total, total - 1):
            i = bisect.bisect_right(totals, budget) - 1
            if i < 0:
                with pytest.raises(ConfigError, match="no subnet of the 'reduced' space fits"):
                    largest_subnet_under_budget(REDUCED, budget)
                continue
            assert largest_subnet_under_budget(REDUCED, budget) == winners[totals[i]], budget


def test_budget_below_the_smallest_subnet_is_explained():
    with pytest.raises(ConfigError, match="no subnet of the 'small' space fits in 1,000 parameters; "
                                          "the smallest has 11,442,944"):
        largest_subnet_under_budget(SEARCH_SPACES["small"], 1000)
    assert independent_parameters(SEARCH_SPACES["small"].min_subnet()) == 11_442_944


# --------------------------------------------------------------------------------------------------- evolutionary
# A synthetic objective with a known optimum: the number of genes (width, depth, per-layer heads and FFN ratio)
# that differ from TARGET, a subnet inside the budget that is not the budget's largest one. Score 0 is reached by
# TARGET alone.
EVO_SPACE = SearchSpace("evo", (256, 384), (4, 8), (3.0, 4.0), (10, 12), SubnetConfig.uniform(384, 8, 1536, 12))
TARGET = SubnetConfig(384, 12, (8, 4) * 6, (1152, 1536, 1536) * 4)
EVO_BUDGET = 28_000_000


def distance_to_target(s: SubnetConfig) -> float:
    missing_layers = TARGET.layer_num - s.layer_num
    score = (s.embed_dim != TARGET.embed_dim) + 2 * missing_layers
    for i in range(s.layer_num):
        score += (s.heads_num[i] != TARGET.heads_num[i])
        score += (s.ffn_embed[i] / s.embed_dim != TARGET.ffn_embed[i] / TARGET.embed_dim)
    return float(score)


def _evolve(generations: int, algorithm: str = "evolutionary", scored: Optional[List[SubnetConfig]] = None):
    """Seed-0 search on the synthetic objective; ``scored`` collects every subnet the search asks about."""
    def score(s: SubnetConfig) -> float:
        if scored is not None:
            scored.append(s)
        return distance_to_target(s)

    budget = Budget("params", EVO_BUDGET, ModelConfig())
    return search(EVO_SPACE, budget, score, algorithm, population=16, generations=generations, mutation_prob=0.1,
                  seed=0)


def test_evolutionary_search_reaches_the_known_optimum():
    assert independent_parameters(TARGET) == 25_692_416 <= EVO_BUDGET and EVO_SPACE.contains(TARGET)
    start = _evolve(generations=0)  # the seeded first population: the budget's largest plus random members
    scored: List[SubnetConfig] = []
    result = _evolve(generations=40, scored=scored)
    # the budget's largest subnet is the exact one, scored first
    assert result.baseline == SubnetConfig(384, 12, (8,) * 11 + (4,), (1536,) * 9 + (1152,) * 3)
    assert result.baseline_score == start.baseline_score == 10.0
    assert start.best_score == 9.0  # pinned: the best of the seeded random start
    assert result.best == TARGET and result.best_score == 0.0  # the optimum, pinned for this seed
    # every candidate it scored was a member of the space inside the budget, by the independent count
    assert scored[0] == result.baseline and len(scored) == len(set(scored)) == len(result.history)
    assert all(EVO_SPACE.contains(s) and independent_parameters(s) <= EVO_BUDGET for s in scored)
    # a random search over as many samples as the evolution drew does not get there
    assert _evolve(generations=40, algorithm="random").best_score > 0.0


# --------------------------------------------------------------------------------------------------- search loop
LOOSE = 10 ** 9  # a parameter budget every subnet of EVO_SPACE fits


def hashed_score(s: SubnetConfig) -> float:
    """A fixed pseudo-random score per subnet: distinct subnets get distinct scores, unrelated to their size."""
    return int(hashlib.sha256(s.describe().encode()).hexdigest()[:12], 16) / 16 ** 12


def genome_of(s: SubnetConfig) -> tuple:
    """(width, depth, heads per layer, FFN ratio per layer): how the search encodes a subnet."""
    return (s.embed_dim, s.layer_num, tuple(s.heads_num), tuple(f / s.embed_dim for f in s.ffn_embed))


def subnet_of(g: tuple) -> SubnetConfig:
    E, L, heads, ratios = g
    return SubnetConfig(E, L, tuple(heads), tuple(int(r * E) for r in ratios))


class Trace:
    """In order: every random() draw of the search's generator, every _crossover and _mutate call (arguments
    and result) and every scored subnet."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Any]] = []

    def score(self, s: SubnetConfig) -> float:
        self.events.append(("score", s))
        return hashed_score(s)

    def scored(self) -> List[SubnetConfig]:
        return [x for kind, x in self.events if kind == "score"]

    def calls(self, kind: str) -> List[Dict[str, Any]]:
        return [x for k, x in self.events if k == kind]

    def segments(self) -> List[Tuple[List[Tuple[str, Any]], List[SubnetConfig]]]:
        """(events, then the subnets scored right after them): the first population, then one per generation."""
        out: List[Tuple[List[Tuple[str, Any]], List[SubnetConfig]]] = [([], [])]
        for kind, x in self.events:
            if kind == "score":
                out[-1][1].append(x)
            else:
                if out[-1][1]:
                    out.append(([], []))
                out[-1][0].append((kind, x))
        return out

    @staticmethod
    def attempts(events: Sequence[Tuple[str, Any]]) -> List[Dict[str, Any]]:
        """Breeding attempts of one generation: the draw that chose crossover or not (the last random() before
        the attempt's first call), the crossover call if any, and the _mutate call that made the child."""
        out: List[Dict[str, Any]] = []
        last_u, pending = None, None
        for kind, x in events:
            if kind == "u":
                last_u = x
            elif kind == "crossover":
                pending = (last_u, x)
            elif kind == "mutate":
                if pending is not None:
                    out.append({"u": pending[0], "crossover": pending[1], "mutate": x})
                    pending = None
                else:
                    out.append({"u": last_u, "crossover": None, "mutate": x})
        return out


@pytest.fixture
def trace(monkeypatch) -> Trace:
    t = Trace()

    class LoggedRandom(random.Random):
        def random(self) -> float:
            u = super().random()
            t.events.append(("u", u))
            return u

        def getrandbits(self, k: int) -> int:  # defined so choice() and sample() draw exactly as random.Random's
            return super().getrandbits(k)

    crossover, mutate = search_module._crossover, search_module._mutate

    def logged_crossover(a, b, rng):
        call: Dict[str, Any] = {"a": a, "b": b}
        t.events.append(("crossover", call))
        call["child"] = crossover(a, b, rng)
        return call["child"]

    def logged_mutate(g, space, rng, p):
        call: Dict[str, Any] = {"g": g, "p": p}
        t.events.append(("mutate", call))
        call["child"] = mutate(g, space, rng, p)
        return call["child"]

    monkeypatch.setattr(search_module, "random", types.SimpleNamespace(Random=LoggedRandom))
    monkeypatch.setattr(search_module, "_crossover", logged_crossover)
    monkeypatch.setattr(search_module, "_mutate", logged_mutate)
    return t


def _history(scored: Sequence[SubnetConfig]) -> List[Dict[str, Any]]:
    return [{"subnet": s.describe(), "cost": independent_parameters(s), "score": hashed_score(s)} for s in scored]


@pytest.mark.parametrize("algorithm,population,generations,expected", [
    ("random", 3, 2, 9),  # population x (generations + 1) samples, the baseline among them
    ("random", 4, 0, 4),
    ("evolutionary", 5, 0, 5),  # the first population only
])
def test_first_population_size_and_history(trace, algorithm, population, generations, expected):
    """The baseline (here the space's largest subnet: everything fits) is scored first, then distinct random
    members until the asked-for count; the history lists each with its cost and score."""
    result = search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), trace.score, algorithm,
                    population=population, generations=generations, seed=1)
    scored = trace.scored()
    assert len(scored) == len(set(scored)) == expected
    assert scored[0] == result.baseline == SubnetConfig.uniform(384, 8, 1536, 12)
    assert all(EVO_SPACE.contains(s) for s in scored)
    assert not trace.calls("crossover") and not trace.calls("mutate")  # no breeding, no walk from the baseline
    assert result.history == _history(scored)
    assert result.best == min(scored, key=hashed_score) and result.best_score == hashed_score(result.best)
    assert result.baseline_score == hashed_score(result.baseline)


def test_search_is_reproducible_from_its_seed():
    runs = [search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), hashed_score, "random", population=3,
                   generations=1, seed=seed).history for seed in (4, 4, 5)]
    assert runs[0] == runs[1] != runs[2]


@pytest.mark.parametrize("mutation_prob", [0.4, 0.0])  # at 0, a mutated parent is that parent: not new
def test_evolution_breeds_from_the_better_half(trace, mutation_prob):
    """Each generation: parents are the best population//2 scored so far; a draw below 0.5 picks crossover of
    two different parents followed by mutation at half the rate, otherwise one parent is mutated at the full
    rate; the first population - parents children not scored before are scored, in the order they were bred."""
    population = 8
    result = search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), trace.score, "evolutionary",
                    population=population, generations=4, mutation_prob=mutation_prob, seed=6)
    segments = trace.segments()
    assert len(segments) == 5
    scored = list(segments[0][1])
    assert len(scored) == population
    crossovers = plain = 0
    draws = [a["u"] for events, _ in segments[1:] for a in trace.attempts(events)]
    assert any(0.45 <= u < 0.5 for u in draws) and any(0.5 <= u < 0.55 for u in draws)  # both sides of 0.5, close
    for events, children in segments[1:]:
        parents = {genome_of(s) for s in sorted(scored, key=hashed_score)[: population // 2]}
        bred: List[SubnetConfig] = []
        for attempt in trace.attempts(events):
            cross, mutation = attempt["crossover"], attempt["mutate"]
            if cross is not None:
                crossovers += 1
                assert attempt["u"] < 0.5
                assert cross["a"] in parents and cross["b"] in parents and cross["a"] != cross["b"]
                assert mutation["g"] == cross["child"] and mutation["p"] == mutation_prob / 2
            else:
                plain += 1
                assert attempt["u"] >= 0.5
                assert mutation["g"] in parents and mutation["p"] == mutation_prob
            child = subnet_of(mutation["child"])
            if child not in scored and child not in bred:
                bred.append(child)
        assert children == bred and len(children) == population - population // 2
        scored += children
    assert crossovers >= 3 and plain >= 3
    assert result.best == min(scored, key=hashed_score)
    assert result.history == _history(scored)


@pytest.mark.parametrize("population,generations,expected", [
    (3, 2, 3 + 1 + 1),  # parents: max(2, 3 // 2) = 2, so one child a generation
    (2, 3, 2),  # two parents fill the population: nothing is bred
    (6, 1, 6 + 3),
])
def test_children_per_generation(trace, population, generations, expected):
    result = search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), trace.score, "evolutionary",
                    population=population, generations=generations, seed=2)
    assert len(trace.scored()) == len(set(trace.scored())) == len(result.history) == expected
    ranked_first = sorted(trace.scored()[:population], key=hashed_score)[: max(2, population // 2)]
    first_parents = {genome_of(s) for s in ranked_first}
    first_gen = trace.attempts(trace.segments()[1][0]) if generations and expected > population else []
    for attempt in first_gen:
        cross = attempt["crossover"]
        used = [cross["a"], cross["b"]] if cross else [attempt["mutate"]["g"]]
        assert set(used) <= first_parents


def test_equal_scores_go_to_the_cheaper_subnet():
    """The winner is the lowest score, then the lowest cost: with every score equal, the cheapest subnet."""
    scored: List[SubnetConfig] = []

    def flat(s: SubnetConfig) -> float:
        scored.append(s)
        return 1.0

    result = search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), flat, "random", population=4,
                    generations=1, seed=0)
    sizes = [independent_parameters(s) for s in scored]
    assert len(scored) == 8 and sizes.count(min(sizes)) == 1
    assert result.best == scored[sizes.index(min(sizes))] != result.baseline
    assert result.best_score == result.baseline_score == 1.0


@pytest.mark.parametrize("kwargs,message", [
    ({"algorithm": "genetic"}, "--algorithm='genetic'; allowed values: ['evolutionary', 'random']"),
    ({"population": 1}, "--population must be >= 2 and --generations >= 0"),
    ({"generations": -1}, "--population must be >= 2 and --generations >= 0"),
])
def test_search_rejects_bad_settings(kwargs, message):
    options = {"algorithm": "evolutionary", "population": 2, "generations": 0, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)):
        search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), hashed_score, **options)


def test_smallest_allowed_settings_run():
    result = search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), hashed_score, "evolutionary",
                    population=2, generations=0)
    assert len(result.history) == 2


def test_search_checks_the_budget_first():
    small = SEARCH_SPACES["small"]
    n = independent_parameters(small.min_subnet())  # 11,442,944
    with pytest.raises(ConfigError, match=re.escape(
            "budget too small: the smallest subnet of space 'small' (embed_dim=256 layers=10 heads=4 ffn=768) has "
            "11,442,944 parameters, above --max-params=11,442,943; raise --max-params to at least 11,442,944")):
        search(small, Budget("params", n - 1, ModelConfig()), hashed_score, population=2, generations=0)
    result = search(small, Budget("params", n, ModelConfig()), hashed_score, population=2, generations=1)
    assert result.best == result.baseline == small.min_subnet()  # the only subnet that fits


class AdmitBudget:
    """A budget that admits the subnets ``admits`` accepts, with a given baseline; cost is parameters."""

    kind = "params"

    def __init__(self, admits: Callable[[SubnetConfig], bool], baseline: SubnetConfig) -> None:
        self.admits, self._baseline = admits, baseline

    def check(self, space: SearchSpace) -> None:
        pass

    def baseline(self, space: SearchSpace) -> SubnetConfig:
        return self._baseline

    def cost(self, s: SubnetConfig) -> int:
        return independent_parameters(s)

    def fits(self, s: SubnetConfig) -> bool:
        return self.admits(s)


@pytest.fixture
def samples(monkeypatch) -> List[SubnetConfig]:
    """Make SearchSpace.sample always give the space's largest subnet (which these budgets reject); list the calls."""
    drawn: List[SubnetConfig] = []

    def largest(space: SearchSpace, rng=None) -> SubnetConfig:
        drawn.append(space.max_subnet())
        return drawn[-1]

    monkeypatch.setattr(SearchSpace, "sample", largest)
    return drawn


def test_tight_budget_walks_from_the_baseline(trace, samples):
    """When 200 samples in a row miss the budget, a member is drawn by mutating the baseline at p=0.5."""
    baseline = EVO_SPACE.min_subnet()
    budget = AdmitBudget(lambda s: s.embed_dim == 256 and s.layer_num == 10, baseline)
    result = search(EVO_SPACE, budget, trace.score, "evolutionary", population=4, generations=0, seed=0)
    scored = trace.scored()
    assert scored[0] == baseline and len(scored) == len(set(scored)) == 4
    assert all(s.embed_dim == 256 and s.layer_num == 10 for s in scored)
    walks = trace.calls("mutate")
    assert walks and all(w["g"] == genome_of(baseline) and w["p"] == 0.5 for w in walks)
    assert len(samples) == 200 * 3  # three members, each found after 200 rejected samples
    assert result.baseline == baseline


# one option per gene except the heads: the walk from the baseline reaches the two admitted subnets often
ONE_GENE = SearchSpace("one_gene", (256,), (4, 8), (3.0,), (10,), SubnetConfig.uniform(256, 4, 768, 10))


def test_draw_gives_up_after_ten_rounds_per_member(trace, samples):
    """A budget that admits fewer distinct subnets than asked for: the draw stops after 10 x population rounds."""
    baseline = ONE_GENE.default
    other = SubnetConfig(256, 10, (8,) + (4,) * 9, (768,) * 10)
    result = search(ONE_GENE, AdmitBudget(lambda s: s in (baseline, other), baseline), trace.score,
                    "evolutionary", population=3, generations=0, seed=0)
    assert trace.scored() == [baseline, other]
    assert len(samples) == 200 * 10 * 3
    assert result.best == min((baseline, other), key=hashed_score)


def test_nothing_fits_keeps_the_baseline_alone(trace, samples):
    """No member fits: one draw (200 samples, then 200 walks) ends the first population; with a single parent
    every generation makes 50 x population plain mutations and no crossover."""
    baseline = EVO_SPACE.min_subnet()
    result = search(EVO_SPACE, AdmitBudget(lambda s: False, baseline), trace.score, "evolutionary",
                    population=3, generations=2, mutation_prob=0.3, seed=0)
    assert len(samples) == 200
    mutations = trace.calls("mutate")
    walks = [m for m in mutations if m["p"] == 0.5]
    assert len(walks) == 200 and all(w["g"] == genome_of(baseline) for w in walks)
    bred = [m for m in mutations if m["p"] == 0.3]
    assert len(bred) == len(mutations) - 200 == 2 * 50 * 3
    assert all(m["g"] == genome_of(baseline) for m in bred) and not trace.calls("crossover")
    assert trace.scored() == [baseline]
    assert result.best == result.baseline == baseline and result.history == _history([baseline])


# --------------------------------------------------------------------------------------------------- budgets
STANDARD_CNN = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def conv_frames(samples: int, conv=STANDARD_CNN) -> List[int]:
    """Output length of each conv: floor((L - kernel) / stride) + 1."""
    out = []
    for _, k, s in conv:
        samples = (samples - k) // s + 1
        out.append(samples)
    return out


def independent_macs(subnet: SubnetConfig, seconds: float = 1.0, conv=STANDARD_CNN, conv_pos: int = 128,
                     groups: int = 16) -> int:
    """As the model runs: the CNN, the projection on T frames, the positional conv (K // 2 padding on both
    sides: T + 1 outputs for an even kernel) and the layers on the sequence padded to an even length S."""
    frames = conv_frames(int(seconds * 16000), conv)
    cnn, in_dim = 0, 1
    for (dim, k, _), n in zip(conv, frames):
        cnn += n * dim * in_dim * k
        in_dim = dim
    T, E, C = frames[-1], subnet.embed_dim, conv[-1][0]
    S = T + T % 2
    total = cnn + T * C * E + (T + 1) * E * (E // groups) * conv_pos
    for h, f in zip(subnet.heads_num, subnet.ffn_embed):
        A = 64 * h
        total += 4 * S * E * A + 2 * S * S * A + 2 * S * E * f
    return total


def test_parameter_budget_cost_fits_and_flag():
    s = SEARCH_SPACES["small"].default
    n = independent_parameters(s)
    budget = Budget("params", n, ModelConfig())
    assert budget.cost(s) == n and budget.fits(s)
    assert not Budget("params", n - 1, ModelConfig()).fits(s)
    assert budget.flag == "--max-params" and Budget("macs", n, ModelConfig()).flag == "--max-macs"
    assert budget.baseline(SEARCH_SPACES["small"]) == DOCUMENTED_BUDGETS[1][2]  # the exact largest subnet


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_mac_budget_costs_the_profiled_count(seconds):
    for s in (SEARCH_SPACES["small"].default, SubnetConfig(256, 10, (4, 8) * 5, (768, 1024) * 5)):
        m = independent_macs(s, seconds)
        budget = Budget("macs", m, ModelConfig(), seconds)
        assert budget.cost(s) == m and budget.fits(s)
        assert not Budget("macs", m - 1, ModelConfig(), seconds).fits(s)


def test_mac_budget_baseline_is_the_best_uniform_subnet():
    space = SEARCH_SPACES["small"]
    uniform = [SubnetConfig.uniform(E, h, int(r * E), d) for E in space.embed_dim for h in space.heads_num
               for r in space.ffn_ratio for d in space.layer_num]
    macs = {s: independent_macs(s) for s in uniform}
    limit = macs[space.default]
    assert list(macs.values()).count(limit) == 1
    assert Budget("macs", limit, ModelConfig()).baseline(space) == space.default  # fits exactly
    below = max((m, s) for s, m in macs.items() if m < limit)[1]
    assert Budget("macs", limit - 1, ModelConfig()).baseline(space) == below != space.default
    assert Budget("macs", 1, ModelConfig()).baseline(space) == space.min_subnet()  # nothing fits


def test_mac_budget_too_small_is_explained():
    space = SEARCH_SPACES["small"]
    n = independent_macs(space.min_subnet(), 2.0)
    with pytest.raises(ConfigError, match=re.escape(
            f"budget too small: the smallest subnet of space 'small' (embed_dim=256 layers=10 heads=4 ffn=768) has "
            f"{n:,} MACs per 2 s, above --max-macs=1,000; raise --max-macs to at least {n:,}")):
        Budget("macs", 1000, ModelConfig(), 2.0).check(space)
    Budget("macs", n, ModelConfig(), 2.0).check(space)  # exactly enough


def test_mac_count_by_hand():
    """Conv output lengths for 1 s of 16 kHz audio (floor((L - k) / s) + 1): 3199, 1599, 799, 399, 199, 99, 49;
    for 0.5 s: 1599, 799, 399, 199, 99, 49, 24. Then post_extract_proj T*512*E, the positional conv on T + 1
    outputs (even kernel, K // 2 padding) T*E*(E/16)*128, and per layer on the sequence padded to an even
    length S: S*4*E*A + 2*S*S*A + 2*S*E*F with A = 64 * heads."""
    def layers(S: int, E: int, heads, ffn) -> int:
        return sum(S * 4 * E * 64 * h + 2 * S * S * 64 * h + 2 * S * E * f for h, f in zip(heads, ffn))

    s = SubnetConfig(256, 6, (4, 8) * 3, (768, 1024) * 3)
    cnn = 3199 * 512 * 10 + (1599 + 799 + 399 + 199) * 512 * 512 * 3 + (99 + 49) * 512 * 512 * 2
    T, S = 49, 50
    expected = cnn + T * 512 * 256 + (T + 1) * 256 * 16 * 128 + layers(S, 256, s.heads_num, s.ffn_embed)
    assert subnet_macs(s, ModelConfig()) == expected
    cnn = 1599 * 512 * 10 + (799 + 399 + 199 + 99) * 512 * 512 * 3 + (49 + 24) * 512 * 512 * 2
    T = S = 24
    expected = cnn + T * 512 * 256 + (T + 1) * 256 * 16 * 128 + layers(S, 256, s.heads_num, s.ffn_embed)
    assert subnet_macs(s, ModelConfig(), 0.5) == expected
    # the tiny model: 64-channel CNN, positional conv of kernel 16 in 4 groups
    s = SubnetConfig(64, 10, (1, 2) * 5, (128, 256) * 5)
    T, S = 49, 50
    cnn = 3199 * 64 * 10 + (1599 + 799 + 399 + 199) * 64 * 64 * 3 + (99 + 49) * 64 * 64 * 2
    expected = cnn + T * 64 * 64 + (T + 1) * 64 * 16 * 16 + layers(S, 64, s.heads_num, s.ffn_embed)
    assert subnet_macs(s, tiny_model_config()) == expected


# --------------------------------------------------------------------------------------------------- genomes
GENOME_SPACE = SearchSpace("genome", (256, 384), (4, 8), (3.0, 3.5, 4.0), (10, 12),
                           SubnetConfig.uniform(384, 8, 1536, 12))


def test_genome_round_trip():
    """FFN widths become ratios: the exact one when a ratio gives the width, else the nearest (first on a tie)."""
    s = SubnetConfig(384, 4, (4, 8, 4, 8), (1344, 1400, 1440, 1500))
    assert _to_genome(s, GENOME_SPACE) == (384, 4, (4, 8, 4, 8), (3.5, 3.5, 3.5, 4.0))
    exact = SubnetConfig(256, 3, (8, 4, 8), (768, 896, 1024))
    assert _to_genome(exact, GENOME_SPACE) == (256, 3, (8, 4, 8), (3.0, 3.5, 4.0))
    assert _to_subnet((384, 2, (4, 8), (3.5, 3.0))) == SubnetConfig(384, 2, (4, 8), (1344, 1152))
    assert _to_subnet((100, 1, (4,), (3.337,))) == SubnetConfig(100, 1, (4,), (333,))  # truncated, as int()
    assert _to_subnet(_to_genome(exact, GENOME_SPACE)) == exact


class ScriptedRng:
    """random() gives the listed draws in turn, then 0.99 (above any rate: keep); choice() gives the first or
    last option."""

    def __init__(self, draws: Sequence[float], pick: str = "last") -> None:
        self.draws, self.pick = list(draws), pick

    def random(self) -> float:
        return self.draws.pop(0) if self.draws else 0.99

    def choice(self, options):
        return options[-1] if self.pick == "last" else options[0]


def test_mutate_redraws_genes_below_the_rate():
    parent = (256, 10, (4,) * 10, (3.0,) * 10)
    assert _mutate(parent, GENOME_SPACE, ScriptedRng([]), 0.3) == parent
    assert _mutate(parent, GENOME_SPACE, ScriptedRng([0.0]), 0.3) == (384, 10, (4,) * 10, (3.0,) * 10)
    # draws: width, depth, then one per layer for the heads, then one per layer for the FFN ratios
    draws = [0.99, 0.99, 0.29] + [0.99] * 9 + [0.99] * 9 + [0.0]
    assert _mutate(parent, GENOME_SPACE, ScriptedRng(draws), 0.3) == (
        256, 10, (8,) + (4,) * 9, (3.0,) * 9 + (4.0,))
    assert _mutate(parent, GENOME_SPACE, ScriptedRng([0.3] * 22), 0.3) == parent  # not below the rate


def test_mutate_deeper_draws_new_layers_and_shallower_truncates():
    parent = (256, 10, (4,) * 10, (3.0,) * 10)
    assert _mutate(parent, GENOME_SPACE, ScriptedRng([0.99, 0.0]), 0.3) == (
        256, 12, (4,) * 10 + (8, 8), (3.0,) * 10 + (4.0, 4.0))
    deep = (384, 12, (4, 8) * 6, (3.0, 3.5, 4.0) * 4)
    assert _mutate(deep, GENOME_SPACE, ScriptedRng([0.99, 0.0], pick="first"), 0.3) == (
        384, 10, (4, 8) * 5, (3.0, 3.5, 4.0) * 3 + (3.0,))


def test_crossover_takes_each_gene_from_a_parent():
    """Width and depth from either parent; layer i from a parent that has it, heads and ratio together;
    layers beyond the shorter parent from the longer one."""
    long_parent = (384, 12, (8,) * 12, (4.0,) * 12)
    short_parent = (256, 10, (4,) * 10, (3.0,) * 10)
    seen_widths, seen_depths, mixed = set(), set(), False
    for seed in range(40):
        E, L, heads, ratios = _crossover(long_parent, short_parent, random.Random(seed))
        seen_widths.add(E)
        seen_depths.add(L)
        assert len(heads) == len(ratios) == L
        layers = list(zip(heads, ratios))
        assert set(layers) <= {(8, 4.0), (4, 3.0)}
        assert layers[10:] == [(8, 4.0)] * (L - 10)
        mixed |= len(set(layers[:10])) == 2
    assert seen_widths == {256, 384} and seen_depths == {10, 12} and mixed


def test_two_parents_are_enough_for_crossover(trace):
    """A population of 3 keeps max(2, 3 // 2) = 2 parents; crossover needs two different parents, and two
    suffice: over ten generations both breeding routes occur, crossover exactly when its draw is below 0.5."""
    search(EVO_SPACE, Budget("params", LOOSE, ModelConfig()), trace.score, "evolutionary",
           population=3, generations=10, seed=3)
    attempts = [a for events, _ in trace.segments()[1:] for a in trace.attempts(events)]
    crossed = [a for a in attempts if a["crossover"] is not None]
    assert crossed and len(crossed) < len(attempts)
    assert all((a["crossover"] is not None) == (a["u"] < 0.5) for a in attempts)
