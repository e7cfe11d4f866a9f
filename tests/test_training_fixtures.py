"""Shared helpers for the training tests (no tests here): tiny teachers, configs, wav folders."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch

from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint
from lighthubert_s3prl.training.config import TeacherConfig
from lighthubert_s3prl.training.data import Batch
from lighthubert_s3prl.training.teachers import Teacher, TeacherOutput

TINY_SPACE = {
    "name": "tiny",
    "embed_dim": [64, 96, 128],
    "heads_num": [1, 2],
    "ffn_ratio": [2.0, 3.0, 4.0],
    "layer_num": [10, 11, 12],
    "default": {"embed_dim": 96, "heads_num": 2, "ffn_ratio": 3.0, "layer_num": 12},
}


def tiny_config(stage: str, out: Path, teacher_path: Path, **sections: Any) -> Dict[str, Any]:
    """A CI-sized config: generated audio, a tiny LightHuBERT teacher (FFN targets), the tiny student."""
    cfg: Dict[str, Any] = {
        "stage": stage,
        "data": {"train": "synthetic", "crop_seconds": 1.0, "batch_size": 4,
                 "synthetic": {"utterances": 16, "valid_utterances": 4, "seconds": 1.2}},
        "teacher": {"ckpt": str(teacher_path)},
        # raw FFN outputs: a random teacher's per-channel offsets give a loss that falls fast, which is what the
        # mechanics tests look for (the default, data2vec's instance norm, is pinned in test_training_targets)
        "target": {"source": "layer_results", "layers": "last:8", "per_layer_norm": "none"},
        "student": {"model": "tiny"},
        "optim": {"lr": 2.0e-3, "warmup_steps": 2},
        "train": {"steps": 30, "device": "cpu", "output_dir": str(out), "progress": False,
                  "tensorboard": False, "save_every": 1000},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def drop_ratio(losses, n: int = 5) -> float:
    """Mean of the last n losses over the mean of the first n."""
    return (sum(losses[-n:]) / n) / (sum(losses[:n]) / n)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A tiny seeded 'stage-1' LightHuBERT used as the teacher: 13 hidden states and 12 FFN outputs, 128 wide."""
    return write_random_checkpoint(tmp_path_factory.mktemp("teachers") / "teacher_a.pt", "stage1", seed=11,
                                   model_cfg=tiny_model_config())


@pytest.fixture(scope="session")
def teacher_b_ckpt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("teachers") / "teacher_b.pt", "stage1", seed=12,
                                   model_cfg=tiny_model_config())


# ---------------------------------------------------------------------------------------------------
# A hand-built teacher whose every layer output is a known formula, so a test can compute the exact
# distillation target itself instead of asking the library.
PATTERN_LAYERS = 4  # transformer layers: 5 hidden states (input first) and 4 FFN outputs, as HuBERT's layout
PATTERN_TEACHERS: Dict[str, Tuple[int, int, int]] = {  # name -> (teacher id, width, samples per frame)
    "pattern_a": (0, 16, 320),
    "pattern_b": (1, 16, 320),  # same width as pattern_a: EKD can average them
    "pattern_c": (2, 8, 320),  # narrower: EKD concatenates it or gives it its own head
    "pattern_fast": (3, 16, 160),  # 10 ms frames, twice the student's rate
}
SOURCES = ("hidden_states", "layer_results")


def pattern(teacher: int, source: str, layer: int, batch: int, frames: int, dim: int) -> torch.Tensor:
    """(batch, frames, dim) output of ``layer`` of ``source``: its own offset, scale and frequency.

    The offset, scale and channel tilt differ by layer, source and teacher, and so does the time
    frequency; hence no two layers agree even after per-channel (instance) or per-frame (layer)
    normalisation, and a wrong layer index, source or teacher changes the target.
    """
    kind = SOURCES.index(source)
    b = torch.arange(batch, dtype=torch.float64)[:, None, None]
    t = torch.arange(frames, dtype=torch.float64)[None, :, None]
    d = torch.arange(dim, dtype=torch.float64)[None, None, :]
    offset = layer + 3.0 * kind + 7.0 * teacher
    scale = 1.0 + layer + 0.5 * kind + 2.0 * teacher
    freq = 0.11 * (1 + layer) + 0.05 * kind + 0.03 * teacher
    x = offset + scale * torch.sin(freq * t + 0.9 * d + 1.7 * b) + 0.1 * (layer + 1) * d
    return x.float()


class PatternTeacher(Teacher):
    """A frozen teacher with no weights whose layers give ``pattern`` at ``downsample_rate`` samples per frame."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.label = name
        self.teacher_id, self.dim, self.downsample_rate = PATTERN_TEACHERS[name]
        self._freeze()

    def run(self, batch: Batch) -> TeacherOutput:
        B, frames = batch.wav.size(0), batch.wav.size(1) // self.downsample_rate

        def layers(source: str, count: int) -> List[torch.Tensor]:
            return [pattern(self.teacher_id, source, k, B, frames, self.dim) for k in range(count)]

        return TeacherOutput(layers("hidden_states", PATTERN_LAYERS + 1), layers("layer_results", PATTERN_LAYERS),
                             self.downsample_rate)


@pytest.fixture
def pattern_teachers(monkeypatch) -> Callable[[TeacherConfig, torch.device], Teacher]:
    """Make every task build ``PatternTeacher(name)`` for a teacher config that names one of PATTERN_TEACHERS."""
    from lighthubert_s3prl.training import distill

    def build(cfg: TeacherConfig, device: torch.device) -> Teacher:
        teacher = PatternTeacher(str(cfg.name)).to(device)
        teacher.probe(device)
        return teacher

    monkeypatch.setattr(distill, "build_teacher", build)
    return build


def write_tiny_hubert(path: Path, layers: int = 3, seed: int = 0) -> Path:
    """A tiny HuBERT in s3prl's converted layout (what hubert_local reads), built by s3prl's own model code."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
    from s3prl.upstream.utils import merge_with_parent

    task = {"label_rate": 50.0, "sample_rate": 16000, "normalize": False}
    model = {"label_rate": 50.0, "encoder_layers": layers, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128,
             "encoder_attention_heads": 1, "final_dim": 32, "conv_pos": 16, "conv_pos_groups": 4,
             "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"}
    torch.manual_seed(seed)
    hubert = HubertModel(merge_with_parent(HubertConfig, model), merge_with_parent(HubertPretrainingConfig, task),
                         [list(range(5))])
    with torch.no_grad():  # fairseq leaves biases and norms at 0 / 1: make every copied tensor tell
        for p in hubert.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"task_cfg": task, "model_cfg": model, "model_weight": hubert.state_dict(),
                "dictionaries_symbols": [list(range(5))]}, path)
    return path
