"""A 2-process CPU DDP run (torchrun, gloo) trains a few steps and writes one model and one resume state."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from .test_training_fixtures import teacher_ckpt, tiny_config  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_trains(tmp_path, teacher_ckpt):
    cfg = tiny_config("stage1", tmp_path / "out", teacher_ckpt, data={"batch_size": 2}, train={"steps": 3, "accumulate": 2})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lighthubert_s3prl.cli", "train", "stage1", str(path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "stage1 finished at step 3" in proc.stdout
    log = [json.loads(line) for line in (tmp_path / "out/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] > 0 for r in log)  # rank 0 logs alone
    state = torch.load(tmp_path / "out/state/last.pt", weights_only=True)
    # both processes' RNG states are kept, so a DDP run resumes exactly too. Each process read
    # accumulate 2 x 3 steps = 6 batches; an epoch of 16 utterances is 4 batches of 2 per process
    assert state["world"] == 2 and len(state["rng"]) == 2
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
