"""Distillation losses and the SUPERB score against hand-computed answers.

Every expected value here is computed independently of the function under test: the loss and
normalisation formulas with a few lines of plain torch, the SUPERB score with the leaderboard
formula written out over the published numbers.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple, Union

import pytest
import torch

from lighthubert_s3prl.model.config import ConfigError
from lighthubert_s3prl.superb import reference
from lighthubert_s3prl.superb.reference import ScoreError
from lighthubert_s3prl.training.losses import (
    aggregate,
    distill_loss,
    frame_selection,
    masked_instance_norm,
    resolve_layers,
)

# ---------------------------------------------------------------------------------------------------
# SUPERB score, by hand

# the leaderboard's normalisation anchors, typed in from superb_and_peers.md (SOTA row of the STaR table,
# SID 90.30 from the leaderboard data; FBANK row from DPHuBERT's table)
_SOTA: Dict[str, Union[float, Tuple[float, float]]] = {
    "pr": 3.53, "ks": 96.66, "ic": 98.76, "sid": 90.30, "er": 67.62, "asr": 3.62, "asv": 5.11, "sd": 5.62,
    "qbe": 0.0736, "sf": (89.81, 21.76)}
_FBANK: Dict[str, Union[float, Tuple[float, float]]] = {
    "pr": 82.01, "ks": 41.38, "ic": 9.65, "sid": 20.06, "er": 48.24, "asr": 23.18, "asv": 9.56, "sd": 10.05,
    "qbe": 0.0058, "sf": (69.64, 52.94)}
# HuBERT Base's published row (DPHuBERT table 1 / leaderboard); its leaderboard score is 941
_HUBERT_BASE: Dict[str, Union[float, Tuple[float, float]]] = {
    "pr": 5.41, "ks": 96.30, "ic": 98.34, "sid": 81.42, "er": 64.92, "asr": 6.42, "asv": 5.11, "sd": 5.88,
    "qbe": 0.0736, "sf": (88.53, 25.20)}
_ORDER = ("pr", "ks", "ic", "sid", "er", "asr", "asv", "sd", "qbe", "sf")
_KNOWN = "pr, ks, ic, sid, er, asr, asv, sd, qbe, sf"


def _hand_term(task: str, value: Union[float, Tuple[float, float]]) -> float:
    """(x - FBANK) / (SOTA - FBANK), averaged over SF's two metrics."""
    if task == "sf":
        parts = [(v - f) / (s - f) for v, s, f in zip(value, _SOTA["sf"], _FBANK["sf"])]  # type: ignore[arg-type]
        return sum(parts) / 2
    return (value - _FBANK[task]) / (_SOTA[task] - _FBANK[task])  # type: ignore[operator]


def _hand_score(values: Dict[str, Union[float, Tuple[float, float]]], tasks: Tuple[str, ...]) -> float:
    return 1000.0 / len(tasks) * sum(_hand_term(t, values[t]) for t in tasks)


def test_task_term_matches_the_formula_and_its_errors():
    for task in _ORDER:
        assert reference.task_term(task, _HUBERT_BASE[task]) == pytest.approx(_hand_term(task, _HUBERT_BASE[task]))
    # SF: F1 at FBANK (term 0) and CER at SOTA (term 1) average to 0.5, so the CER part keeps its sign
    assert reference.task_term("sf", (69.64, 21.76)) == pytest.approx(0.5)
    # the message lists the known tasks so a typo can be fixed from the error alone
    with pytest.raises(ScoreError, match=re.escape(f"unknown SUPERB task 'kws'; known: {_KNOWN}")):
        reference.task_term("kws", 90.0)
    with pytest.raises(ScoreError, match=re.escape("pr takes one value, got (5.0, 6.0)")):
        reference.task_term("pr", (5.0, 6.0))


def test_full_and_partial_superb_score_by_hand():
    full = reference.superb_score(_HUBERT_BASE)
    assert full is not None and not full.partial and full.tasks == _ORDER
    assert full.value == pytest.approx(_hand_score(_HUBERT_BASE, _ORDER))
    assert abs(full.value - 941) < 2.0  # the published leaderboard score
    assert full.describe() == f"{full.value:.1f} (all 10 tasks)"
    # tasks named without a value are dropped; the result lists them in leaderboard order
    partial = reference.superb_score({"asr": 6.42, "pr": 5.41, "ks": None}, ["asr", "ks", "pr"])
    assert partial is not None and partial.partial and partial.tasks == ("pr", "asr")
    assert partial.value == pytest.approx(_hand_score(_HUBERT_BASE, ("pr", "asr")))
    # an unknown task name is an error, not silently skipped
    with pytest.raises(ScoreError, match=re.escape(f"unknown SUPERB task(s) ['kws']; known: {_KNOWN}")):
        reference.superb_score(_HUBERT_BASE, ["pr", "kws"])


def test_score_describe_names_the_tasks_it_covers():
    # the table footnote shows which tasks a partial score covers, upper-case and comma-separated
    assert reference.Score(912.345, ("pr", "ks", "asv")).describe() == "912.3 (partial: 3/10 tasks: PR,KS,ASV)"


def test_reference_model_score_uses_its_own_values_and_tasks():
    hubert = reference.REFERENCES["hubert_base"]
    full = hubert.score()
    assert full is not None and full.tasks == _ORDER
    assert full.value == pytest.approx(_hand_score(_HUBERT_BASE, _ORDER))
    ours = hubert.score(["pr", "ks", "ic", "sid", "er", "asr", "asv"])
    assert ours is not None and ours.tasks == _ORDER[:7]
    assert ours.value == pytest.approx(_hand_score(_HUBERT_BASE, _ORDER[:7]))


_ALL_KEYS = ["lighthubert_small", "hubert_base", "distilhubert", "dphubert", "lighthubert_stage1",
             "wavlm_base_plus", "fbank"]


def test_select_references_specs():
    assert [r.key for r in reference.select_references("all")] == _ALL_KEYS
    assert [r.key for r in reference.select_references("default")] == _ALL_KEYS[:4]
    # a comma-separated string (spaces and empty items tolerated) and a list give the same rows, in the given order
    assert [r.key for r in reference.select_references(" wavlm_base_plus, hubert_base ,")] == [
        "wavlm_base_plus", "hubert_base"]
    assert [r.key for r in reference.select_references([" dphubert", "fbank", " "])] == ["dphubert", "fbank"]
    # keywords are case-sensitive, like the keys
    with pytest.raises(ScoreError):
        reference.select_references("ALL")
    expected = (f"unknown reference model(s) ['hubert_large']; choose from {', '.join(_ALL_KEYS)}, "
                "'default', 'all' or 'none'")
    with pytest.raises(ScoreError, match=f"^{re.escape(expected)}$"):
        reference.select_references("hubert_base,hubert_large")


# ---------------------------------------------------------------------------------------------------
# layer choice


def test_resolve_layers_bounds_and_messages():
    assert resolve_layers([0, 11, -1, -12], 12, "layer_results", "target.layers") == [0, 11, 11, 0]
    # one past the end is out of range, counting from either side
    for bad in (12, -13):
        msg = (f"target.layers=[{bad}] asks for layer_results index {bad}, but the teacher has 12 layer_results "
               "(valid indices 0..11 or -12..-1); choose layers it has")
        with pytest.raises(ConfigError, match=re.escape(msg)):
            resolve_layers([bad], 12, "layer_results", "target.layers")
    # a malformed spec is reported under the caller's config key
    with pytest.raises(ConfigError, match=re.escape("target.layers='eight' is not a layer spec")):
        resolve_layers("eight", 12, "layer_results", "target.layers")


# ---------------------------------------------------------------------------------------------------
# instance norm


def _hand_instance_norm(x: torch.Tensor, valid: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """Per utterance and channel: (x - mean) / sqrt(biased var + eps) over valid frames; padding -> 0."""
    b, t, c = x.shape
    xs = x.double()
    out = torch.zeros(b, t, c, dtype=torch.float64)
    for i in range(b):
        keep = torch.ones(t, dtype=torch.bool) if valid is None else valid[i]
        if not keep.any():
            continue
        for ch in range(c):
            frames = xs[i, keep, ch]
            mean = frames.mean()
            var = ((frames - mean) ** 2).mean()
            out[i, keep, ch] = (frames - mean) / torch.sqrt(var + eps)
    return out


def test_instance_norm_without_padding_matches_hand_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3) * 3 + 1  # T != C so a wrong transpose shows in the shape
    got = masked_instance_norm(x, None)
    assert got.shape == x.shape
    assert torch.allclose(got.double(), _hand_instance_norm(x, None, 1e-5), atol=1e-4)
    # eps is honoured (a large one shrinks the output visibly)
    got_eps = masked_instance_norm(x, None, eps=0.5)
    assert torch.allclose(got_eps.double(), _hand_instance_norm(x, None, 0.5), atol=1e-4)


def test_instance_norm_with_padding_matches_hand_formula():
    torch.manual_seed(1)
    # small values: var ~ 1e-4, so adding or subtracting eps = 1e-5 changes the result by ~5 %
    x = torch.randn(4, 6, 3) * 0.01
    valid = torch.tensor([[1, 1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 0, 0],
                          [1, 0, 0, 0, 0, 0],   # a single valid frame: zero variance, output 0
                          [0, 0, 0, 0, 0, 0]],  # no valid frame: all zero, no NaN
                         dtype=torch.bool)
    got = masked_instance_norm(x, valid)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), _hand_instance_norm(x, valid, 1e-5), atol=1e-4)
    assert torch.equal(got[1, 4:], torch.zeros(2, 3)) and torch.equal(got[2], torch.zeros(6, 3))
    got_eps = masked_instance_norm(x * 100, valid, eps=0.5)
    assert torch.allclose(got_eps.double(), _hand_instance_norm(x * 100, valid, 0.5), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# EKD aggregation


def test_aggregate_average_concat_and_width_error():
    a, b = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert torch.allclose(aggregate([a, b], "average"), (a + b) / 2)
    c = torch.randn(2, 5, 6)
    cat = aggregate([a, c], "concat")
    assert cat.shape == (2, 5, 10) and torch.equal(cat[..., :4], a) and torch.equal(cat[..., 4:], c)
    # equal length in time but different width: the check looks at the feature axis
    msg = ("ekd.aggregation=average needs teachers of equal width, got widths [4, 6]; "
           "use ekd.aggregation=concat or separate")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        aggregate([c, a], "average")


# ---------------------------------------------------------------------------------------------------
# losses


def _hand_losses(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Plain formulas over (N, C) frames."""
    d = pred - target
    ad = d.abs()
    smooth = torch.where(ad < 1.0, 0.5 * d ** 2, ad - 0.5)
    dot = (pred * target).sum(-1)
    cos = dot / (pred.norm(dim=-1) * target.norm(dim=-1))
    return {"l1": ad.mean(), "l2": (d ** 2).mean(), "smooth_l1": smooth.mean(), "cos": cos,
            "logsig": torch.log(1 / (1 + torch.exp(-cos))).mean()}


@pytest.fixture
def pair() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    # scale 2: differences fall on both sides of smooth_l1's |d| = 1 knee
    pred, target = torch.randn(2, 5, 8, generator=g) * 2, torch.randn(2, 5, 8, generator=g) * 2
    frames = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    return pred, target, frames


def test_distill_loss_kinds_match_hand_formulas(pair):
    pred, target, frames = pair
    sel = _hand_losses(pred[frames], target[frames])
    for kind in ("l1", "l2", "smooth_l1"):
        loss, stats = distill_loss(pred, target, frames, kind)
        assert loss.item() == pytest.approx(sel[kind].item(), rel=1e-5), kind
        assert set(stats) == {"l1"} and stats["l1"].item() == pytest.approx(sel["l1"].item(), rel=1e-5)
    every = _hand_losses(pred.reshape(-1, 8), target.reshape(-1, 8))
    loss, stats = distill_loss(pred, target, None, "l1_cos", 0.5)
    assert loss.item() == pytest.approx((every["l1"] - 0.5 * every["logsig"]).item(), rel=1e-5)
    assert stats["cos"].item() == pytest.approx(every["cos"].mean().item(), rel=1e-5)
    assert stats["l1"].item() == pytest.approx(every["l1"].item(), rel=1e-5)


def test_distill_loss_defaults_are_l1_and_unit_cos_weight(pair):
    pred, target, _ = pair
    every = _hand_losses(pred.reshape(-1, 8), target.reshape(-1, 8))
    loss, _ = distill_loss(pred, target, None)
    assert loss.item() == pytest.approx(every["l1"].item(), rel=1e-5)
    loss, _ = distill_loss(pred, target, None, "l1_cos")
    assert loss.item() == pytest.approx((every["l1"] - every["logsig"]).item(), rel=1e-5)


def test_distill_loss_empty_selection_and_unknown_kind(pair):
    pred, target, _ = pair
    pred = pred.clone().requires_grad_(True)
    loss, stats = distill_loss(pred, target, torch.zeros(2, 5, dtype=torch.bool), "l2")
    # nothing selected: zero loss, the same stats key as a normal step, and still part of the graph
    assert loss.item() == 0.0 and loss.requires_grad
    assert list(stats) == ["l1"] and stats["l1"].item() == 0.0
    msg = "loss.type='huber' is not allowed; allowed values: ['l1', 'l2', 'smooth_l1', 'l1_cos']"
    with pytest.raises(ConfigError, match=re.escape(msg)):
        distill_loss(pred, target, None, "huber")


# ---------------------------------------------------------------------------------------------------
# frame selection


def _bools(rows: List[List[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_frame_selection():
    valid = _bools([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    mask = _bools([[1, 0, 1, 0, 1], [0, 1, 1, 0, 0]])
    assert torch.equal(frame_selection(valid, mask, "all"), valid)
    assert torch.equal(frame_selection(valid, mask, "masked"), _bools([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]))
    assert torch.equal(frame_selection(valid, mask, "unmasked"), _bools([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]))
    # no mask (e.g. EKD without masking): every valid frame counts whatever was asked
    for which in ("all", "masked", "unmasked"):
        assert torch.equal(frame_selection(valid, None, which), valid)
