"""The three distillation tasks the trainer runs: stage 1, stage 2 (once-for-all) and EKD.

A task owns the frozen teacher(s) and the trainable module. For each batch it runs the teachers,
draws the input mask and (stage 2) the subnets, and returns the keyword arguments of one or more
forward/backward passes of its module; the trainer does the optimisation, DDP and checkpoints.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..model.checkpoint import CheckpointError, build_supernet, load_checkpoint, stock_s3prl_runs_as_trained
from ..model.config import ConfigError, SearchSpace, SubnetConfig
from ..model.modules import conv_output_lengths
from ..model.supernet import LightHuBERTSupernet
from .config import TargetConfig, TrainingConfig, resolve_space
from .data import Batch
from .losses import aggregate, distill_loss, frame_selection, layer_average, normalise, resolve_layers
from .masking import sample_span_mask, step_generator
from .models import ekd_backbone, export_model, stage_student
from .hubert_init import load_s3prl_hubert_file, supernet_from_hubert
from .teachers import LightHuBERTTeacher, Teacher, align_frames, build_teacher

TEACHER_REF = "teacher:"  # student.init=teacher:N starts an EKD student from that teacher's weights

logger = logging.getLogger(__name__)

Plan = Dict[str, Any]  # keyword arguments of one forward of a task's module


def student_frames(model: LightHuBERTSupernet, batch: Batch) -> Tuple[int, torch.Tensor]:
    """Frames the student produces for the padded batch, and (B, T) True on each utterance's valid frames."""
    layers = model.cfg.conv_layers
    total = int(conv_output_lengths(torch.tensor([batch.wav.size(1)]), layers)[0])
    valid_len = conv_output_lengths(batch.lengths, layers)
    valid = torch.arange(total, device=batch.wav.device)[None, :] < valid_len[:, None].to(batch.wav.device)
    return total, valid


class TargetBuilder:
    """Stage-1/2 target: the chosen teacher layers, aligned to the student's frames, normalised, averaged."""

    def __init__(self, teacher: Teacher, cfg: TargetConfig) -> None:
        self.teacher, self.cfg = teacher, cfg
        if cfg.source == "layer_results":
            if teacher.num_layer_results == 0:
                raise ConfigError(
                    f"teacher {teacher.label} exposes no FFN outputs (layer_results): it has no fairseq-style "
                    f"encoder layers. Set target.source=hidden_states"
                )
            available, dims = teacher.num_layer_results, teacher.layer_result_dims
        else:
            available, dims = teacher.num_hidden_states, teacher.hidden_dims
        self.layers = resolve_layers(cfg.layers, available, cfg.source, "target.layers")
        widths = {dims[i] for i in self.layers}
        if len(widths) != 1:
            raise ConfigError(f"target.layers={cfg.layers!r} mixes widths {sorted(widths)}; choose layers of one width")
        self.dim = widths.pop()

    def __call__(self, batch: Batch, frames: int, valid: torch.Tensor, student_rate: int) -> torch.Tensor:
        out = self.teacher(batch)
        source = out.layer_results if self.cfg.source == "layer_results" else out.hidden_states
        picked = [align_frames(source[i], out.downsample_rate, student_rate, frames) for i in self.layers]
        return layer_average(picked, self.cfg, valid)


class SupernetDistiller(nn.Module):
    """Stage 1/2 module: the supernet at a given subnet predicts the target through its last-layer head."""

    def __init__(self, model: LightHuBERTSupernet, loss_type: str, cos_weight: float) -> None:
        super().__init__()
        self.model, self.loss_type, self.cos_weight = model, loss_type, cos_weight

    def forward(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor], target: torch.Tensor,
                frames: torch.Tensor, mask_indices: Optional[torch.Tensor] = None,
                subnet: Optional[SubnetConfig] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        out = self.model(wav, padding_mask, subnet=subnet, mask_indices=mask_indices, predict=True)
        pred = out.predictions[max(out.predictions)]
        return distill_loss(pred, target, frames, self.loss_type, self.cos_weight)


class EKDModule(nn.Module):
    """EKD module: the student backbone plus one linear prediction head per target (DistilHuBERT-style)."""

    def __init__(self, model: LightHuBERTSupernet, subnet: SubnetConfig, head_dims: Sequence[int],
                 loss_type: str, cos_weight: float, seed: int, head_reduction: str = "sum") -> None:
        super().__init__()
        self.model, self.subnet = model, subnet
        self.heads = nn.ModuleList([nn.Linear(subnet.embed_dim, d) for d in head_dims])
        gen = torch.Generator().manual_seed(seed + 17)
        with torch.no_grad():
            for head in self.heads:
                head.weight.normal_(0.0, 0.02, generator=gen)
                head.bias.zero_()
        self.loss_type, self.cos_weight, self.head_reduction = loss_type, cos_weight, head_reduction

    def forward(self, wav: torch.Tensor, padding_mask: Optional[torch.Tensor], targets: List[torch.Tensor],
                frames: torch.Tensor, mask_indices: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        out = self.model(wav, padding_mask, subnet=self.subnet, mask_indices=mask_indices)
        last = out.last_hidden_state
        total, stats = 0.0, {}
        for j, (head, target) in enumerate(zip(self.heads, targets)):
            loss, s = distill_loss(head(last), target, frames, self.loss_type, self.cos_weight)
            total = total + (loss / len(self.heads) if self.head_reduction == "mean" else loss)
            stats.update({f"head{j}_{k}": v for k, v in s.items()})
        return total, stats


# ---------------------------------------------------------------------------------------------------
class DistillTask:
    """Shared plumbing: teachers, masking, frame bookkeeping, held-out evaluation."""

    stage = ""
    export_name = "model.pt"

    def __init__(self, cfg: TrainingConfig, device: torch.device, rank: int = 0) -> None:
        self.cfg, self.device, self.rank = cfg, device, rank
        self.teachers = [build_teacher(t, device) for t in cfg.teachers]
        self.module: nn.Module

    @property
    def student(self) -> LightHuBERTSupernet:
        return self.module.model

    def _common(self, batch: Batch, step: int, micro: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], int, torch.Tensor, Optional[torch.Tensor]]:
        frames, valid = student_frames(self.student, batch)
        mask = None
        if self.cfg.mask.enabled:
            m = self.cfg.mask
            lengths = valid.sum(-1)
            mask = sample_span_mask(lengths, frames, m.prob, m.length, m.min_spans,
                                    step_generator(self.cfg.train.seed, step, micro, self.rank)).to(self.device)
        padding = batch.padding_mask if bool(batch.padding_mask.any()) else None
        return batch.normalised(), padding, frames, valid, mask

    def plan(self, batch: Batch, step: int, micro: int = 0) -> List[Plan]:
        raise NotImplementedError

    def eval_subnets(self) -> Dict[str, Optional[SubnetConfig]]:
        return {"": None}

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Batch], subnet: Optional[SubnetConfig] = None) -> float:
        """Mean loss over fixed held-out batches with fixed masks, in eval mode (no dropout)."""
        was_training = self.module.training
        self.module.eval()
        total = 0.0
        for i, batch in enumerate(batches):
            # negative steps: masks of their own, never those of a training step
            plan = self.plan(batch.to(self.device), step=-1 - i)[0]
            if subnet is not None and "subnet" in plan:
                plan["subnet"] = subnet
            total += float(self.module(**plan)[0])
        self.module.train(was_training)
        return total / max(len(batches), 1)

    def export(self, path: Path, step: int) -> Path:
        raise NotImplementedError

    def training_record(self, step: int) -> Dict[str, Any]:
        return {"stage": self.stage, "step": step, "teachers": [t.label for t in self.teachers]}


class Stage1Task(DistillTask):
    """Full-size student (the supernet at its largest subnet) from one teacher."""

    stage = "stage1"

    def __init__(self, cfg: TrainingConfig, device: torch.device, rank: int = 0) -> None:
        super().__init__(cfg, device, rank)
        self.targets = TargetBuilder(self.teachers[0], cfg.target)  # its width sizes the prediction head
        model = stage_student(cfg.student.init, cfg.student.model, self.targets.dim, cfg.train.seed)
        self.module = SupernetDistiller(model, cfg.loss.type, cfg.loss.cos_weight).to(device)
        self.subnet = model.max_subnet()

    def plan(self, batch: Batch, step: int, micro: int = 0) -> List[Plan]:
        wav, padding, frames, valid, mask = self._common(batch, step, micro)
        target = self.targets(batch, frames, valid, self.student.downsample_rate)
        return [dict(wav=wav, padding_mask=padding, target=target, mask_indices=mask, subnet=self.subnet,
                     frames=frame_selection(valid, mask, self.cfg.loss.frames))]

    def export(self, path: Path, step: int) -> Path:
        return export_model(self.student, path, "student_hubert", self.subnet, None, self.training_record(step))


class Stage2Task(DistillTask):
    """Once-for-all: the supernet from a stage-1 checkpoint, a sampled subnet (or a sandwich) every step."""

    stage = "stage2"

    def __init__(self, cfg: TrainingConfig, device: torch.device, rank: int = 0) -> None:
        super().__init__(cfg, device, rank)
        self.targets = TargetBuilder(self.teachers[0], cfg.target)
        model = stage_student(cfg.student.init, None, self.targets.dim, cfg.train.seed)
        self.space: SearchSpace = resolve_space(cfg.space)
        widest = [SubnetConfig.uniform(E, max(self.space.heads_num), int(max(self.space.ffn_ratio) * E),
                                       max(self.space.layer_num)) for E in self.space.embed_dim]
        for label, subnet in [("default", self.space.default)] + [("largest", s) for s in widest]:
            try:
                subnet.validate_for(model.cfg)
            except ConfigError as err:
                raise ConfigError(
                    f"space {self.space.name!r} does not fit the supernet of student.init "
                    f"({model.cfg.encoder_embed_dim} wide, {model.cfg.encoder_attention_heads} heads, "
                    f"{model.cfg.encoder_layers} layers): its {label} subnet fails: {err}. Define a space "
                    f"within those sizes (space: {{embed_dim: [...], heads_num: [...], ffn_ratio: [...], layer_num: [...]}})"
                ) from None
        self.module = SupernetDistiller(model, cfg.loss.type, cfg.loss.cos_weight).to(device)

    def subnets_for_step(self, step: int, micro: int = 0) -> List[SubnetConfig]:
        """The subnets one micro-batch trains: fixed by the step alone (every process and micro-batch of an
        update the same), or with ``sampling.per_rank`` by the step, micro-batch and process."""
        key = self.cfg.train.seed * 7_368_787 + step
        if self.cfg.sampling.per_rank:
            key = (key * 1_009 + micro) * 10_007 + self.rank
        rng = random.Random(key)
        picked = [self.space.sample(rng) for _ in range(self.cfg.sampling.random_subnets)]
        if self.cfg.sampling.strategy == "sandwich":
            picked = [self.space.max_subnet(), self.space.min_subnet()] + picked
        return picked

    def plan(self, batch: Batch, step: int, micro: int = 0) -> List[Plan]:
        wav, padding, frames, valid, mask = self._common(batch, step, micro)
        target = self.targets(batch, frames, valid, self.student.downsample_rate)
        selected = frame_selection(valid, mask, self.cfg.loss.frames)
        subnets = self.subnets_for_step(step, micro) if step >= 0 else [self.space.default]
        return [dict(wav=wav, padding_mask=padding, target=target, mask_indices=mask, subnet=s, frames=selected)
                for s in subnets]

    def eval_subnets(self) -> Dict[str, Optional[SubnetConfig]]:
        return {"default": self.space.default, "max": self.space.max_subnet(), "min": self.space.min_subnet()}

    def export(self, path: Path, step: int) -> Path:
        return export_model(self.student, path, "hubert_pruner", self.space.default, self.space,
                            self.training_record(step))


class EKDTask(DistillTask):
    """Ensemble KD: several teachers, their layers averaged / concatenated / kept apart, one head per target."""

    stage = "ekd"

    def __init__(self, cfg: TrainingConfig, device: torch.device, rank: int = 0) -> None:
        super().__init__(cfg, device, rank)
        source = cfg.target.source
        self.layers: List[List[int]] = []
        for i, (t_cfg, teacher) in enumerate(zip(cfg.teachers, self.teachers)):
            available = teacher.num_layer_results if source == "layer_results" else teacher.num_hidden_states
            if available == 0:
                raise ConfigError(f"teacher {teacher.label} exposes no FFN outputs; set target.source=hidden_states")
            self.layers.append(resolve_layers(t_cfg.layers, available, source, f"teachers.{i}.layers"))
        self.aggregation = cfg.ekd.aggregation
        # head j -> [(teacher index, layer index)]
        if self.aggregation == "separate":
            self.head_sources = [[(t, l)] for t, layers in enumerate(self.layers) for l in layers]
        else:
            self.head_sources = [[(t, layers[j]) for t, layers in enumerate(self.layers)]
                                 for j in range(len(self.layers[0]))]
        dims = []
        for sources in self.head_sources:
            widths = [self._dims(t)[l] for t, l in sources]
            if self.aggregation == "average" and len(set(widths)) != 1:
                raise ConfigError(
                    f"ekd.aggregation=average needs equal widths per head, but teachers "
                    f"{[self.teachers[t].label for t, _ in sources]} give {widths}; use concat or separate"
                )
            dims.append(sum(widths) if self.aggregation == "concat" else widths[0])
        s = cfg.student
        source, source_subnet = self._init_source(s.init)
        model, subnet = ekd_backbone(s.type, source, source_subnet, s.model, s.layers, s.subnet, cfg.train.seed)
        self.subnet = subnet
        self.module = EKDModule(model, subnet, dims, cfg.loss.type, cfg.loss.cos_weight, cfg.train.seed,
                                cfg.loss.heads).to(device)

    def _init_source(self, init: Optional[str]) -> Tuple[Optional[LightHuBERTSupernet], Optional[SubnetConfig]]:
        """``student.init`` as a model and the subnet it runs: a LightHuBERT checkpoint, a HuBERT-family teacher
        (``teacher:N`` or ``teacher:LABEL``) or an s3prl HuBERT checkpoint file; (None, None) when unset."""
        if not init:
            return None, None
        if init.startswith(TEACHER_REF):
            teacher = self._teacher_by_ref(init[len(TEACHER_REF):])
            if isinstance(teacher, LightHuBERTTeacher):
                raise ConfigError(f"student.init={init}: teacher {teacher.label} is a LightHuBERT model; give its "
                                  f"checkpoint file as student.init instead")
            model = supernet_from_hubert(getattr(teacher, "upstream", teacher), f"teacher {teacher.label}")
            return model, model.max_subnet()
        try:
            loaded = load_checkpoint(init)
        except CheckpointError:
            if not Path(init).is_file():
                raise  # the loader's message names the missing file
            model = supernet_from_hubert(load_s3prl_hubert_file(init), f"student.init={init}")
            return model, model.max_subnet()
        return build_supernet(loaded), loaded.default_subnet

    def _teacher_by_ref(self, ref: str) -> Teacher:
        if ref.isdigit() and int(ref) < len(self.teachers):
            return self.teachers[int(ref)]
        named = [t for t in self.teachers if t.label == ref]
        if len(named) == 1:
            return named[0]
        raise ConfigError(f"student.init={TEACHER_REF}{ref} names no teacher; use {TEACHER_REF}N (N < "
                          f"{len(self.teachers)}) or {TEACHER_REF}LABEL with one of {[t.label for t in self.teachers]}")

    def _dims(self, t: int) -> List[int]:
        teacher = self.teachers[t]
        return teacher.layer_result_dims if self.cfg.target.source == "layer_results" else teacher.hidden_dims

    def plan(self, batch: Batch, step: int, micro: int = 0) -> List[Plan]:
        wav, padding, frames, valid, mask = self._common(batch, step, micro)
        rate = self.student.downsample_rate
        outputs = []
        for teacher in self.teachers:
            out = teacher(batch)
            outputs.append(out.layer_results if self.cfg.target.source == "layer_results" else out.hidden_states)
        norm = self.cfg.target.per_layer_norm
        targets = []
        for sources in self.head_sources:
            parts = [normalise(align_frames(outputs[t][l], self.teachers[t].downsample_rate, rate, frames), norm, valid)
                     for t, l in sources]
            target = parts[0] if len(parts) == 1 else aggregate(parts, self.aggregation)
            targets.append(normalise(target, self.cfg.target.final_norm, valid))
        return [dict(wav=wav, padding_mask=padding, targets=targets, mask_indices=mask,
                     frames=frame_selection(valid, mask, self.cfg.loss.frames))]

    def head_record(self) -> Dict[str, Any]:
        return {"aggregation": self.aggregation,
                "heads": [{"teachers": [self.teachers[t].label for t, _ in src], "layers": [l for _, l in src],
                           "dim": head.out_features} for src, head in zip(self.head_sources, self.module.heads)]}

    def export(self, path: Path, step: int) -> Path:
        heads = {k: v.detach().cpu().float().contiguous() for k, v in self.module.heads.state_dict().items()}
        record = {**self.training_record(step), "student_type": self.cfg.student.type}
        # s3prl's own LightHuBERT upstream runs a student_hubert file as the standard largest model: any other
        # student gets our own kind, which that upstream refuses instead of running something else
        kind = "student_hubert" if stock_s3prl_runs_as_trained(self.student.cfg, self.subnet) else "ekd_student"
        return export_model(self.student, path, kind, self.subnet, None, record,
                            extra_top={"ekd_heads": heads, "ekd": self.head_record()})


TASKS = {"stage1": Stage1Task, "stage2": Stage2Task, "ekd": EKDTask}


def build_task(cfg: TrainingConfig, device: torch.device, rank: int = 0) -> DistillTask:
    return TASKS[cfg.stage](cfg, device, rank)
