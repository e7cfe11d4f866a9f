"""Shared fixtures: seeded checkpoints in the official format, generated waveforms, offline mode."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LIGHTHUBERT_S3PRL_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "numerics: float32/bf16 agreement tests; scripts/test.sh repeats them under a forced CPU capability")


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def small_ckpt(ckpt_dir) -> Path:
    """A full-size (768-wide) seeded random supernet in the released lighthubert_small.pt format."""
    return write_random_checkpoint(ckpt_dir / "lighthubert_small.pt", "small", seed=1)


@pytest.fixture(scope="session")
def tiny_ckpt(ckpt_dir) -> Path:
    return write_random_checkpoint(ckpt_dir / "tiny_small.pt", "small", seed=2, model_cfg=tiny_model_config())


@pytest.fixture(scope="session")
def tiny_ln_ckpt(ckpt_dir) -> Path:
    cfg = tiny_model_config(extractor_mode="layer_norm")
    return write_random_checkpoint(ckpt_dir / "tiny_ln.pt", "small", seed=3, model_cfg=cfg)


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for modules of many small calls: a second intra-op thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_wavs(lengths, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    t = [torch.arange(n) / 16000 for n in lengths]
    return [0.3 * torch.sin(2 * torch.pi * (110 + 20 * i) * x) + 0.05 * torch.randn(len(x), generator=gen)
            for i, x in enumerate(t)]


@pytest.fixture
def wavs():
    return make_wavs([16000, 12345, 8000, 5551])
