"""Stage-2 and EKD outputs as s3prl upstreams: s3prl's run_downstream trains its example downstream on them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lighthubert_s3prl.training.config import load_config
from lighthubert_s3prl.training.trainer import train

from .launch_small_example import example_config
from .test_training_fixtures import TINY_SPACE, teacher_ckpt, tiny_config  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = Path(__file__).with_name("launch_small_example.py")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, teacher_ckpt):
    """Two-update stage-1, stage-2 and EKD runs: enough to produce real training outputs."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    short = {"steps": 2}
    s1 = train(load_config(tiny_config("stage1", root / "s1", teacher_ckpt, train=short)))
    s2 = train(load_config(tiny_config("stage2", root / "s2", teacher_ckpt, student={"init": str(s1.model_path)},
                                       space=TINY_SPACE, train=short)))
    ekd = train(load_config(tiny_config(
        "ekd", root / "ekd", teacher_ckpt, teacher=None, teachers=[{"ckpt": str(teacher_ckpt), "layers": [4, 12]}],
        target={"source": "hidden_states"}, student={"type": "distiller", "model": "tiny", "layers": 2}, train=short)))
    return {"stage2": s2.model_path, "ekd": ekd.model_path}


@pytest.mark.parametrize("which,entry,featurizer_weights", [
    ("stage2", "lighthubert_local", 13),  # the tiny space's default subnet: 12 layers + CNN projection
    ("ekd", "distiller_local", 3),  # 2-layer DistilHuBERT-style student
])
def test_run_downstream_trains_on_training_outputs(outputs, tmp_path, which, entry, featurizer_weights):
    config = example_config(tmp_path / "example.yaml", steps=2)
    expdir = tmp_path / "exp"
    cmd = [sys.executable, str(LAUNCHER), "-m", "train", "-u", entry, "-k", str(outputs[which]), "-d", "example",
           "-c", str(config), "-p", str(expdir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = torch.load(expdir / "states-2.ckpt", map_location="cpu", weights_only=False)
    assert state["Step"] == 2 and state["Args"].upstream == entry
    assert state["Featurizer"]["weights"].numel() == featurizer_weights
