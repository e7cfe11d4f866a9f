"""The training loop: DDP, mixed precision, gradient accumulation, logging, checkpoints, exact resume.

Resuming restores the module, optimizer, scheduler, grad scaler, step, the python/numpy/torch RNG
states of every process and the position in the data order, so a run stopped at step k and resumed
reaches step N with the same weights and losses as one that never stopped. Masks and stage-2 subnets
are drawn from generators seeded by the step, which needs no saved state at all.

Output folder::

    model.pt          the student in the official checkpoint format (pass it to -k / lighthubert_local)
    state/last.pt     resume state
    config.yaml       the resolved configuration
    log.jsonl         one line per update: step, loss, lr, grad norm, per-head stats, validation
    tb/               tensorboard events
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..model.checkpoint import save_checkpoint
from ..model.config import ConfigError
from .config import TrainingConfig
from .data import Batch, ResumableBatchSampler, build_dataset, collate, fixed_batches
from .distill import DistillTask, build_task

logger = logging.getLogger(__name__)

STATE_FORMAT = "lighthubert_s3prl.train_state"
STATE_VERSION = 1


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    output_dir: Path
    model_path: Optional[Path]
    losses: List[float] = field(default_factory=list)  # per update in this run (mean over processes)


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistEnv":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to the peak, then linear / cosine decay to ``min_ratio`` of it, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def _rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package; tensorboardX comes with s3prl
        from tensorboardX import SummaryWriter
    return SummaryWriter(str(path))


class Trainer:
    def __init__(self, cfg: TrainingConfig) -> None:
        self.cfg = cfg
        self.env = DistEnv.from_env()
        self.device = self._device()
        if self.env.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        loop = cfg.train
        seed = loop.seed + self.env.rank  # per-process dropout streams
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if loop.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none on CPU")
        self.out = Path(loop.output_dir)
        self.task: DistillTask = build_task(cfg, self.device, self.env.rank)
        params = [p for p in self.task.module.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, loop.steps, o.warmup_steps, o.schedule, o.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=loop.amp == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(loop.amp)
        self.module: torch.nn.Module = self.task.module
        if self.env.world > 1:
            # subnets skip layers and EKD heads may go unused: unused parameters must be allowed
            self.module = DistributedDataParallel(
                self.task.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.dataset = build_dataset(cfg.data.train, cfg.data, "data.train", loop.seed)
        self.sampler = ResumableBatchSampler(len(self.dataset), cfg.data.batch_size, loop.seed,
                                             self.env.rank, self.env.world)
        self.valid: List[Batch] = []
        if cfg.data.valid:
            valid_set = build_dataset(cfg.data.valid, cfg.data, "data.valid", loop.seed, valid=True)
            self.valid = fixed_batches(valid_set, cfg.data.batch_size, cfg.data.valid_batches, loop.seed)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._stop = False
        self._maybe_resume()

    # ---------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        want = self.cfg.train.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
            torch.cuda.set_device(self.env.local_rank)
            return torch.device("cuda", self.env.local_rank)
        return torch.device("cpu")

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.cfg.train.seed)  # keeps DataLoader off the global RNG
        while True:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                num_workers=self.cfg.data.num_workers, generator=gen)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # ---------------------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / "state" / "last.pt"

    def _maybe_resume(self) -> None:
        choice = self.cfg.train.resume
        if choice == "never":
            return
        path = self.state_path() if choice == "auto" else Path(choice)
        if not path.is_file():
            if choice != "auto":
                raise ConfigError(f"train.resume={choice!r} does not exist; give a state file (OUTPUT/state/last.pt), "
                                  f"'auto' or 'never'")
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path} is not a training state written by this trainer")
        if state["stage"] != self.cfg.stage:
            raise ConfigError(f"{path} is a {state['stage']} state but this run is {self.cfg.stage}; "
                              f"use another train.output_dir or train.resume=never")
        if state["world"] != self.env.world or state["batch_size"] != self.cfg.data.batch_size:
            logger.warning("resuming with %d process(es) x batch %d (saved: %d x %d): the data order will differ "
                           "from an uninterrupted run", self.env.world, self.cfg.data.batch_size, state["world"],
                           state["batch_size"])
        now = self.cfg.to_dict()
        changed = sorted(k for k in now if k != "train" and state["config"].get(k) != now[k])
        if changed and self.env.main:
            logger.warning("resuming %s with changed config section(s) %s; the run will not match an "
                           "uninterrupted one", path, changed)
        self.task.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        rngs = state["rng"]
        _set_rng_state(rngs[self.env.rank] if self.env.rank < len(rngs) else rngs[0])
        if self.env.main:
            logger.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Optional[Path]:
        """Export the model and (optionally) the resume state; every process must call this."""
        rngs = [_rng_state()]
        if self.env.world > 1:
            rngs = [None] * self.env.world
            dist.all_gather_object(rngs, _rng_state())
        model_path = None
        if self.env.main:
            model_path = self.task.export(self.out / self.task.export_name, self.step)
            if self.cfg.train.save_state:
                save_checkpoint(self.state_path(), {
                    "format": STATE_FORMAT, "version": STATE_VERSION, "stage": self.cfg.stage,
                    "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                    "world": self.env.world, "batch_size": self.cfg.data.batch_size,
                    "model": self.task.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "rng": rngs, "config": self.cfg.to_dict(),
                })
        if self.env.world > 1:
            dist.barrier()
        return model_path if model_path is not None else self.out / self.task.export_name

    # ---------------------------------------------------------------------------------------------
    def _train_step(self, batches: Iterator[Batch]) -> Dict[str, float]:
        accum = self.cfg.train.accumulate
        total, count, stats_sum = 0.0, 0, {}
        for a in range(accum):
            batch = next(batches).to(self.device)
            plans = self.task.plan(batch, self.step, a)  # teachers and masks: outside the student's autocast
            for j, plan in enumerate(plans):
                last = a == accum - 1 and j == len(plans) - 1
                sync = self.module.no_sync() if self.env.world > 1 and not last else contextlib.nullcontext()
                with sync:
                    with self._autocast():
                        loss, stats = self.module(**plan)
                    self.scaler.scale(loss / (accum * len(plans))).backward()
                total += float(loss.detach())
                count += 1
                for k, v in stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = {"loss": total / count, "grad_norm": float(norm), **{k: v / count for k, v in stats_sum.items()}}
        if self.env.world > 1:  # log the mean over processes
            keys = sorted(record)
            t = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            record = {k: float(v) / self.env.world for k, v in zip(keys, t.tolist())}
        return record

    def _stop_requested(self) -> bool:
        flag = self._stop
        if self.env.world > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag

    def _validate(self) -> Dict[str, float]:
        if not self.valid or not self.env.main:
            return {}
        return {f"valid_loss{'_' + name if name else ''}": self.task.evaluate(self.valid, subnet)
                for name, subnet in self.task.eval_subnets().items()}

    def fit(self) -> TrainResult:
        loop = self.cfg.train
        main = self.env.main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        writer = _summary_writer(self.out / "tb") if main and loop.tensorboard else None
        log = open(self.out / "log.jsonl", "a") if main else None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, _frame):  # finish the current update, save, exit
            logger.warning("signal %d: stopping after this update and saving a resumable state", signum)
            self._stop = True

        in_main_thread = hasattr(signal, "SIGTERM") and _is_main_thread()
        if in_main_thread:
            for s in previous:
                signal.signal(s, request_stop)
        from tqdm import tqdm

        bar = tqdm(total=loop.steps, initial=self.step, disable=not (main and loop.progress), dynamic_ncols=True,
                   desc=self.cfg.stage)
        losses: List[float] = []
        started = self.step
        interrupted = False
        model_path: Optional[Path] = None
        self.task.module.train()
        batches = self._batches()
        try:
            while self.step < loop.steps:
                t0 = time.time()
                record = self._train_step(batches)
                self.step += 1
                losses.append(record["loss"])
                record.update(step=self.step, lr=self.scheduler.get_last_lr()[0], seconds=time.time() - t0)
                if loop.eval_every and self.step % loop.eval_every == 0:
                    record.update(self._validate())
                if main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    validated = any(k.startswith("valid") for k in record)
                    if writer is not None and (self.step % loop.log_every == 0 or validated):
                        for k, v in record.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}" if not k.startswith("valid") else f"valid/{k}", v, self.step)
                done = self.step >= loop.steps
                stop = self._stop_requested() or (loop.stop_after is not None and self.step - started >= loop.stop_after)
                if done or stop or self.step % loop.save_every == 0:
                    model_path = self.save()
                if stop and not done:
                    interrupted = True
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if log is not None:
                log.close()
            if in_main_thread:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        if model_path is None:  # nothing to do: the state was already at the last step
            model_path = self.out / self.task.export_name
        return TrainResult(self.step, interrupted, self.out, model_path, losses)

    def close(self) -> None:
        if self.env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainingConfig) -> TrainResult:
    """Build a trainer for ``cfg``, run it to ``train.steps`` (or a stop), and clean up."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
