"""Distillation targets, frame selection and head mapping, checked against a hand-built teacher.

``PatternTeacher`` gives every layer a known formula, so each expected target is computed here from
that formula with our own normalisation code, never by the library: which layers are taken, from
which source, how they are normalised and combined, which student head learns which target, and
which frames count in the loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

from lighthubert_s3prl.training.config import load_config
from lighthubert_s3prl.training.data import Batch, collate, synthetic_utterance
from lighthubert_s3prl.training.distill import DistillTask, build_task

from .test_training_fixtures import (  # noqa: F401 (fixtures)
    PATTERN_TEACHERS,
    TINY_SPACE,
    pattern,
    pattern_teachers,
    teacher_ckpt,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_thread", "pattern_teachers")

SAMPLES = (16000, 11200)  # two utterances: the second is padded, so padded frames exist
TINY_CNN = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2  # (kernel, stride) of tiny_model_config's CNN
EPS = 1e-5  # the normalisations' epsilon (data2vec's)


def _batch() -> Batch:
    return collate([synthetic_utterance(i, n / 16000) for i, n in enumerate(SAMPLES)])


def _valid_frames() -> torch.Tensor:
    """(B, T) True on the frames each utterance fills, by the CNN formula floor((L - k) / s) + 1."""
    counts = []
    for n in SAMPLES:
        for kernel, stride in TINY_CNN:
            n = (n - kernel) // stride + 1
        counts.append(n)
    return torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]


def _norm(x: torch.Tensor, kind: str, valid: torch.Tensor) -> torch.Tensor:
    """Our own reading of the options: instance = per channel over an utterance's valid frames, layer = per frame."""
    if kind == "none":
        return x.clone()
    if kind == "layer":
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + EPS)
    out = torch.zeros_like(x)
    for b in range(x.size(0)):
        n = int(valid[b].sum())
        part = x[b, :n]
        mean = part.mean(0)
        out[b, :n] = (part - mean) / torch.sqrt(((part - mean) ** 2).mean(0) + EPS)
    return out


def _teacher_layer(name: str, source: str, layer: int, frames: int) -> torch.Tensor:
    """The teacher's layer on the student's 20 ms frames: a 10 ms teacher's frames are averaged in pairs."""
    teacher_id, dim, rate = PATTERN_TEACHERS[name]
    per_frame = 320 // rate
    raw = pattern(teacher_id, source, layer, len(SAMPLES), frames * per_frame, dim)
    return raw.view(len(SAMPLES), frames, per_frame, dim).mean(2)


def _task(stage: str, tmp_path: Path, teacher_ckpt: Path, **sections: Any) -> DistillTask:
    """A task on the tiny student whose teachers are PatternTeachers (stage 2 starts from the tiny checkpoint)."""
    if stage == "stage2":
        sections = {"student": {"init": str(teacher_ckpt)}, "space": TINY_SPACE,
                    "sampling": {"strategy": "sandwich", "random_subnets": 1}, **sections}
    if stage == "ekd":
        sections = {"teacher": None, "student": {"type": "distiller", "model": "tiny", "layers": 2}, **sections}
    cfg = load_config(tiny_config(stage, tmp_path, teacher_ckpt, **sections))
    task = build_task(cfg, torch.device("cpu"))
    task.module.eval()  # no dropout: the same plan gives the same loss, and the hand computation matches it
    assert not task.student.cfg.layer_norm_first  # so the last hidden state is what the heads read
    return task


def _plans(task: DistillTask) -> List[Dict[str, Any]]:
    return task.plan(_batch(), step=0)


def _assert_close_on(valid: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> None:
    """Targets are compared on valid frames: padded frames never count
    (test_loss_counts_exactly_the_selected_frames checks that)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4), (got[valid] - want[valid]).abs().max()


# ---------------------------------------------------------------------------------------------------
# stages 1 and 2: one target, the mean of the chosen layers of one source
STAGE_TARGETS = [
    # teacher, source, target.layers, per_layer_norm, final_norm, the layers meant (PATTERN_LAYERS = 4)
    ("pattern_a", "layer_results", "last:2", "none", "none", [2, 3]),
    ("pattern_a", "layer_results", [0, 2], "instance", "none", [0, 2]),
    ("pattern_a", "hidden_states", -1, "none", "instance", [4]),
    ("pattern_a", "hidden_states", [1, -2], "layer", "layer", [1, 3]),
    ("pattern_a", "layer_results", "last:4", "instance", "layer", [0, 1, 2, 3]),
    ("pattern_fast", "hidden_states", [0, 3], "none", "none", [0, 3]),
]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.parametrize("teacher,source,layers,per_layer,final,meant", STAGE_TARGETS)
def test_stage_target_is_the_mean_of_the_chosen_layers(tmp_path, teacher_ckpt, stage, teacher, source, layers,
                                                      per_layer, final, meant):
    task = _task(stage, tmp_path, teacher_ckpt, teacher={"name": teacher, "ckpt": None},
                 target={"source": source, "layers": layers, "per_layer_norm": per_layer, "final_norm": final})
    valid = _valid_frames()
    T = valid.size(1)
    parts = [_norm(_teacher_layer(teacher, source, k, T), per_layer, valid) for k in meant]
    want = _norm(sum(parts) / len(parts), final, valid)
    plans = _plans(task)
    assert len(plans) == (3 if stage == "stage2" else 1)  # stage 2 sandwich: largest, smallest, one random
    student = task.student
    # the student has one prediction head, on its last layer (11 of 12), sized to the target
    assert list(student.layer_pred_heads) == ["11"] and student.layer_pred_heads["11"].out_features == 16
    weight = student.layer_pred_heads["11"].weight
    for plan in plans:
        _assert_close_on(valid, plan["target"], want)
        # the loss is the L1 of that head, read from the subnet's last layer, against the target, on the
        # masked valid frames (loss.frames=masked, the default)
        with torch.no_grad():
            out = student(plan["wav"], plan["padding_mask"], subnet=plan["subnet"], mask_indices=plan["mask_indices"])
            E = plan["subnet"].embed_dim
            pred = out.hidden_states[-1] @ weight[:, :E].T
            assert len(out.hidden_states) == plan["subnet"].layer_num + 1
            chosen = valid & plan["mask_indices"]
            expected = (pred - want)[chosen].abs().mean()
            loss, stats = task.module(**plan)
        assert torch.allclose(loss, expected, rtol=1e-4), (float(loss), float(expected))


@pytest.mark.parametrize("source,per_layer", [("layer_results", "instance"), ("hidden_states", "none")])
def test_the_default_target_follows_data2vec_for_ffn_outputs(tmp_path, teacher_ckpt, source, per_layer):
    """Unset, per_layer_norm is data2vec's instance norm for FFN outputs (the target LightHuBERT's authors
    follow), and nothing for hidden states; the config written with a run says which was used."""
    task = _task("stage1", tmp_path, teacher_ckpt, teacher={"name": "pattern_a", "ckpt": None},
                 target={"source": source, "layers": "last:3", "per_layer_norm": None})  # null: as if absent
    assert task.cfg.target.per_layer_norm == per_layer
    valid = _valid_frames()
    last3 = range(1, 4) if source == "layer_results" else range(2, 5)
    parts = [_norm(_teacher_layer("pattern_a", source, k, valid.size(1)), per_layer, valid) for k in last3]
    _assert_close_on(valid, _plans(task)[0]["target"], sum(parts) / 3)


# ---------------------------------------------------------------------------------------------------
# EKD: one target per head, from pairs (teacher, layer)
EKD_CASES = [
    # aggregation, source, teachers' layers, per_layer_norm, final_norm, each head's (teacher, layer) pairs
    ("average", "hidden_states", {"pattern_a": [4, 1, 2], "pattern_b": [2, 4, 0]}, "instance", "none",
     [[("pattern_a", 4), ("pattern_b", 2)], [("pattern_a", 1), ("pattern_b", 4)], [("pattern_a", 2), ("pattern_b", 0)]]),
    ("average", "layer_results", {"pattern_a": [3, 0], "pattern_b": [1, 3]}, "none", "layer",
     [[("pattern_a", 3), ("pattern_b", 1)], [("pattern_a", 0), ("pattern_b", 3)]]),
    ("concat", "hidden_states", {"pattern_a": [4, 1], "pattern_c": [2, 3]}, "layer", "none",
     [[("pattern_a", 4), ("pattern_c", 2)], [("pattern_a", 1), ("pattern_c", 3)]]),
    ("concat", "layer_results", {"pattern_c": [0, 3], "pattern_a": [2, 1]}, "none", "instance",
     [[("pattern_c", 0), ("pattern_a", 2)], [("pattern_c", 3), ("pattern_a", 1)]]),
    ("separate", "hidden_states", {"pattern_a": [1, 3], "pattern_c": [4], "pattern_fast": [2]}, "instance", "none",
     [[("pattern_a", 1)], [("pattern_a", 3)], [("pattern_c", 4)], [("pattern_fast", 2)]]),
]


def _ekd_head_target(pairs: Sequence[Tuple[str, int]], aggregation: str, source: str, per_layer: str, final: str,
                     valid: torch.Tensor) -> torch.Tensor:
    parts = [_norm(_teacher_layer(name, source, layer, valid.size(1)), per_layer, valid) for name, layer in pairs]
    combined = torch.cat(parts, dim=-1) if aggregation == "concat" else sum(parts) / len(parts)
    return _norm(combined, final, valid)


@pytest.mark.parametrize("aggregation,source,teachers,per_layer,final,heads", EKD_CASES)
def test_ekd_head_targets_pair_the_teachers_layers(tmp_path, teacher_ckpt, aggregation, source, teachers,
                                                   per_layer, final, heads):
    task = _task("ekd", tmp_path, teacher_ckpt, teachers=[{"name": n, "layers": l} for n, l in teachers.items()],
                 ekd={"aggregation": aggregation},
                 target={"source": source, "per_layer_norm": per_layer, "final_norm": final})
    valid = _valid_frames()
    wants = [_ekd_head_target(pairs, aggregation, source, per_layer, final, valid) for pairs in heads]
    (plan,) = _plans(task)
    assert len(plan["targets"]) == len(task.module.heads) == len(heads)
    for j, (got, want) in enumerate(zip(plan["targets"], wants)):
        _assert_close_on(valid, got, want)
        assert task.module.heads[j].out_features == want.size(-1)
    # the exported record names the same pairs, head by head
    record = task.head_record()["heads"]
    assert [list(zip(h["teachers"], h["layers"])) for h in record] == heads
    # each head, on the student's last layer, is scored against its own target (DistilHuBERT's L1 - log sigmoid(cos),
    # all valid frames), and the total is their sum (DistilHuBERT's Eq. 1; loss.heads=mean averages them)
    with torch.no_grad():
        last = task.student(plan["wav"], plan["padding_mask"], subnet=task.subnet).hidden_states[-1]
        loss, stats = task.module(**plan)
        per_head = []
        for j, want in enumerate(wants):
            head = task.module.heads[j]
            pred = (last @ head.weight.T + head.bias)[valid]
            l1 = (pred - want[valid]).abs().mean()
            per_head.append(l1 - F.logsigmoid(F.cosine_similarity(pred, want[valid], dim=-1)).mean())
            assert torch.allclose(stats[f"head{j}_l1"], l1, rtol=1e-4), (j, float(stats[f"head{j}_l1"]), float(l1))
        assert torch.allclose(loss, sum(per_head), rtol=1e-4)
    mean = _task("ekd", tmp_path, teacher_ckpt, teachers=[{"name": n, "layers": l} for n, l in teachers.items()],
                 ekd={"aggregation": aggregation}, loss={"heads": "mean"},
                 target={"source": source, "per_layer_norm": per_layer, "final_norm": final})
    mean.module.load_state_dict(task.module.state_dict())
    with torch.no_grad():
        assert torch.allclose(mean.module(**plan)[0], sum(per_head) / len(per_head), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# which frames count
def _with_targets(plan: Dict[str, Any], change: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, Any]:
    if "targets" in plan:
        return {**plan, "targets": [change(t) for t in plan["targets"]]}
    return {**plan, "target": change(plan["target"])}


STAGE_SECTIONS: Dict[str, Dict[str, Any]] = {
    "stage1": {"teacher": {"name": "pattern_a", "ckpt": None}, "target": {"layers": "last:2"}},
    "stage2": {"teacher": {"name": "pattern_a", "ckpt": None}, "target": {"layers": "last:2"}},
    "ekd": {"teachers": [{"name": "pattern_a", "layers": [1, 2]}, {"name": "pattern_c", "layers": [3]}],
            "ekd": {"aggregation": "separate"}, "mask": {"enabled": True}},
}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "ekd"])
@pytest.mark.parametrize("frames", ["masked", "unmasked", "all"])
def test_loss_counts_exactly_the_selected_frames(tmp_path, teacher_ckpt, stage, frames):
    """Changing the target on unselected frames (padding included) leaves the loss bit-identical; changing it on
    any one selected frame changes it."""
    task = _task(stage, tmp_path, teacher_ckpt, **STAGE_SECTIONS[stage], loss={"frames": frames})
    valid = _valid_frames()
    for plan in _plans(task):
        masked = plan["mask_indices"]  # the frames the student saw replaced by the mask embedding
        assert masked is not None and not (masked & ~valid).any()
        assert all(0 < int(m.sum()) < int(v.sum()) for m, v in zip(masked, valid))  # both kinds in each utterance
        chosen = {"masked": valid & masked, "unmasked": valid & ~masked, "all": valid}[frames]
        assert (~chosen).any()  # there is something to leave out: padding at least
        with torch.no_grad():
            base = float(task.module(**plan)[0])
            off = float(task.module(**_with_targets(plan, lambda t: t + 100.0 * (~chosen)[..., None]))[0])
            assert off == base, f"the loss moved from {base} to {off} when only unselected frames changed"
            for b in range(chosen.size(0)):
                for f in (int(chosen[b].nonzero()[0]), int(chosen[b].nonzero()[-1])):  # an utterance's first and last
                    one = torch.zeros_like(chosen)
                    one[b, f] = True
                    on = float(task.module(**_with_targets(plan, lambda t: t + 100.0 * one[..., None]))[0])
                    assert on != base, f"changing selected frame {f} of utterance {b} left the loss at {base}"
