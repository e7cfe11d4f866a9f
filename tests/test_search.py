"""Subnet search: the exact budget search (``largest_subnet_under_budget``, ``subnet --budget``,
``budget:SPACE:N``) and the evolutionary search of ``training/search.py``.

Expected subnets are written out literally, tie-breaks included, so two runs and two versions agree. Each is
also checked against answers computed here without the library: an independent parameter count from the
released tensor shapes, the set of every parameter total a space can reach, and a brute force over every
per-layer sequence of a reduced space.
"""
from __future__ import annotations

import bisect
import itertools
import json
from typing import Dict, List, Optional, Set, Tuple

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
from lighthubert_s3prl.training.search import Budget, search

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
