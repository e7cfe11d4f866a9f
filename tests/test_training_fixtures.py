"""Shared helpers for the training tests (no tests here): tiny teachers, configs, wav folders."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from lighthubert_s3prl.checkpoint import tiny_model_config, write_random_checkpoint

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
        "target": {"source": "layer_results", "layers": "last:8"},
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
