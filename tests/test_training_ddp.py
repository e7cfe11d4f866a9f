"""2-process CPU DDP (gloo): a torchrun run writes one model and one resume state, and an update on two
processes with different data equals one single-process update on their union (in stage 2 with
``sampling.per_rank``, on the union of what each process trained: its batches, each with its own subnet)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import torch
import torch.multiprocessing as mp
import yaml

from lighthubert_s3prl.training.config import load_config
from lighthubert_s3prl.training.data import Batch, collate
from lighthubert_s3prl.training.trainer import Trainer

from .test_training_fixtures import TINY_SPACE, teacher_ckpt, tiny_config  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_trains(tmp_path, teacher_ckpt):
    cfg = tiny_config("stage1", tmp_path / "out", teacher_ckpt, data={"batch_size": 2}, train={"steps": 3, "accumulate": 2})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lighthubert_s3prl", "train", "stage1", str(path)]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sync_config(out: Path, teacher: Path, batch_size: int, accumulate: int, stage: str = "stage1") -> Dict[str, Any]:
    """One update whose gradient is a plain mean over utterances, so ranks' means average to the union's.

    Equal-length utterances (1.2 s cropped to 1.0 s), every frame counted and no input mask (masks depend on
    the rank), no dropout (its streams depend on the rank)."""
    student: Dict[str, Any] = {"model": {"preset": "tiny", "dropout": 0.0, "attention_dropout": 0.0}}
    extra: Dict[str, Any] = {}
    if stage == "stage2":  # the supernet from a dropout-free tiny checkpoint; each process and micro-batch its own subnet
        from dataclasses import replace

        from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

        init = out.parent / "stage1_no_dropout.pt"
        if not init.is_file():
            write_random_checkpoint(init, "stage1", seed=3, model_cfg=replace(tiny_model_config(), dropout=0.0,
                                                                              attention_dropout=0.0))
        student = {"init": str(init)}
        extra = {"space": TINY_SPACE, "sampling": {"per_rank": True}}
    return tiny_config(stage, out, teacher, data={"batch_size": batch_size, "synthetic": {"utterances": 8}},
                       mask={"enabled": False}, loss={"frames": "all"}, student=student,
                       train={"steps": 1, "accumulate": accumulate}, **extra)


def _rank_update(rank: int, world: int, port: int, cfg: Dict[str, Any], out: str) -> None:
    """One process of the DDP run: one update, then its parameters and the waveforms it read go to ``out``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(load_config(cfg))
    read, subnets = [], []
    batches = trainer._batches

    def recorded() -> Iterator[Batch]:
        for batch in batches():
            read.append(batch.wav.clone())
            yield batch

    trainer._batches = recorded
    if hasattr(trainer.task, "subnets_for_step"):
        draw = trainer.task.subnets_for_step
        trainer.task.subnets_for_step = lambda step, micro=0: subnets.extend(draw(step, micro)) or subnets[-1:]
    try:
        trainer.fit()
        params = {k: v.detach().clone() for k, v in trainer.task.module.state_dict().items()}
        torch.save({"params": params, "wavs": read, "subnets": [s.to_dict() for s in subnets]},
                   Path(out) / f"rank{rank}.pt")
    finally:
        trainer.close()


def test_ddp_update_equals_one_process_on_the_union_batch(tmp_path, teacher_ckpt, one_thread):
    """Each of 2 processes reads 2 micro-batches of 2 different utterances; after the update both hold the
    same parameters, those of one process updating once on all 8 utterances."""
    # the single-process reference is built first: its lazy imports (the optimizer's, the teachers') are then
    # already done in the processes forked below
    single = Trainer(load_config(_sync_config(tmp_path / "single", teacher_ckpt, batch_size=8, accumulate=1)))
    start = {k: v.detach().clone() for k, v in single.task.module.state_dict().items()}
    cfg = _sync_config(tmp_path / "ddp", teacher_ckpt, batch_size=2, accumulate=2)
    # fork, not spawn: the children inherit the imported modules instead of importing torch again (seconds each);
    # each child runs single-threaded, as DataLoader workers do after a fork
    mp.start_processes(_rank_update, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    union = torch.cat([w for rank in ranks for w in rank["wavs"]])
    assert union.shape == (8, 16000) and len({tuple(w[:50].tolist()) for w in union}) == 8  # 8 distinct utterances
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys() == start.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the processes' parameters differ: gradients were not synchronised"

    single._train_step(iter([collate(list(union))]))
    want = single.task.module.state_dict()
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    assert moved > 1e-4  # the update did something (AdamW's first step moves each weight by about lr)
    worst = max(float((want[k] - a[k]).abs().max()) for k in want)
    assert worst < 1e-2 * moved, f"DDP update differs from the union update by {worst} (an update moves {moved})"


def test_per_rank_sampling_averages_each_process_subnet(tmp_path, teacher_ckpt, one_thread):
    """Stage 2, sampling.per_rank: 2 processes x 2 micro-batches draw 4 subnets, not all alike; the update equals
    one process accumulating those 4 micro-batches, each through the subnet its process drew."""
    from lighthubert_s3prl.model.config import SubnetConfig

    single = Trainer(load_config(_sync_config(tmp_path / "single", teacher_ckpt, 2, 4, stage="stage2")))
    start = {k: v.detach().clone() for k, v in single.task.module.state_dict().items()}
    cfg = _sync_config(tmp_path / "ddp", teacher_ckpt, batch_size=2, accumulate=2, stage="stage2")
    mp.start_processes(_rank_update, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    drawn = [SubnetConfig.from_dict(s) for rank in ranks for s in rank["subnets"]]
    assert len(drawn) == 4 and len({str(s.to_dict()) for s in drawn}) == 4, "processes or micro-batches shared a draw"
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the processes' parameters differ: gradients were not synchronised"

    queue = iter(drawn)
    single.task.subnets_for_step = lambda step, micro=0: [next(queue)]
    single._train_step(iter([collate(list(w)) for rank in ranks for w in rank["wavs"]]))
    want = single.task.module.state_dict()
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    worst = max(float((want[k] - a[k]).abs().max()) for k in want)
    assert moved > 1e-4 and worst < 1e-2 * moved, f"per-rank update differs from the union update by {worst} ({moved})"
