"""Frozen teachers: any s3prl upstream, or a LightHuBERT checkpoint run directly.

A teacher returns its per-layer hidden states and, where the model exposes them, the FFN outputs before
the residual add of every transformer layer (``layer_results``, the data2vec-style target LightHuBERT
uses). For s3prl upstreams those are caught with forward hooks on each encoder layer's ``fc2``, which
fairseq-style HuBERT / wav2vec 2.0 / WavLM layers all have; s3prl runs them time-first.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.checkpoint import CheckpointError, build_supernet, load_checkpoint
from ..model.config import ConfigError, resolve_subnet
from .config import TeacherConfig
from .data import Batch

logger = logging.getLogger(__name__)


@dataclass
class TeacherOutput:
    hidden_states: List[torch.Tensor]  # (B, T, D), input/CNN first
    layer_results: Optional[List[torch.Tensor]]  # (B, T, D) FFN outputs per layer, or None
    downsample_rate: int


class Teacher(nn.Module):
    """Base class: frozen, always in eval mode, runs without gradients."""

    label: str = "teacher"
    downsample_rate: int = 320
    dtype: torch.dtype = torch.float32  # what the teacher computes in (its inputs are cast to it)

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":  # a teacher never trains (no dropout, no layerdrop)
        return super().train(False)

    def run(self, batch: Batch) -> TeacherOutput:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, batch: Batch) -> TeacherOutput:
        # the student's mixed precision must not round the targets: the teacher runs at its own dtype
        with torch.autocast(batch.wav.device.type, enabled=False):
            out = self.run(batch)
        float_list = lambda xs: None if xs is None else [x.float() for x in xs]  # noqa: E731
        return TeacherOutput(float_list(out.hidden_states), float_list(out.layer_results), out.downsample_rate)

    def probe(self, device: torch.device) -> None:
        """Run once on a second of noise to learn the number and width of the outputs."""
        wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
        out = self(Batch(wav.to(device), torch.zeros_like(wav, dtype=torch.bool, device=device),
                         torch.tensor([16000], device=device)))
        self.num_hidden_states = len(out.hidden_states)
        self.hidden_dims = [h.size(-1) for h in out.hidden_states]
        self.num_layer_results = 0 if out.layer_results is None else len(out.layer_results)
        self.layer_result_dims = [] if out.layer_results is None else [h.size(-1) for h in out.layer_results]


class LightHuBERTTeacher(Teacher):
    """One of our models at a chosen subnet; gives hidden states and FFN outputs."""

    def __init__(self, model: nn.Module, label: str) -> None:
        super().__init__()
        self.model, self.label = model, label
        self.downsample_rate = model.downsample_rate
        self._freeze()

    @classmethod
    def from_checkpoint(cls, ckpt: str, subnet: Any = None) -> "LightHuBERTTeacher":
        loaded = load_checkpoint(ckpt)
        if loaded.kind == "compact":
            from ..model.compact import build_compact

            return cls(build_compact(loaded), loaded.path.stem)
        model = build_supernet(loaded)
        model.subnet = resolve_subnet(subnet, loaded.default_subnet)
        return cls(model, loaded.path.stem)

    @classmethod
    def from_entry(cls, name: str, ckpt: Optional[str], model_config: Optional[str], subnet: Any) -> "LightHuBERTTeacher":
        """Through one of our hub entries (lighthubert_small, lighthubert_local...), official-file lookup included."""
        from ..upstream.hubconf import ENTRIES

        kwargs = {"subnet": subnet} if subnet is not None else {}
        try:
            upstream = ENTRIES[name](ckpt=ckpt, model_config=model_config, **kwargs)
        except CheckpointError as err:
            raise ConfigError(f"teacher {name!r}: {err}") from None
        return cls(upstream.model, name)

    def run(self, batch: Batch) -> TeacherOutput:
        mask = batch.padding_mask if bool(batch.padding_mask.any()) else None
        out = self.model(batch.normalised().to(self.dtype), mask, padding_mode="exact")
        return TeacherOutput(out.hidden_states, out.layer_results, self.downsample_rate)


def _s3prl_hub() -> Any:
    from ..upstream import lazy_hub
    from ..upstream.run_downstream import prepare_runtime, register

    lazy_hub.install_unless_disabled()  # the teacher's upstream only, not every one s3prl ships
    import s3prl.hub as hub

    prepare_runtime()
    register(hub)  # our LightHuBERT entries become teachers too
    return hub


class S3prlTeacher(Teacher):
    """An s3prl upstream by hub name (``hubert_base``, ``wavlm_base_plus``, ``fbank``, ``hubert_local`` + ckpt...)."""

    def __init__(self, name: str, ckpt: Optional[str] = None, model_config: Optional[str] = None) -> None:
        super().__init__()
        hub = _s3prl_hub()
        entry = getattr(hub, name, None)
        if entry is None or name.startswith("_") or not callable(entry):
            names = [n for n in dir(hub) if not n.startswith("_") and callable(getattr(hub, n))]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown teacher {name!r}: it is not an s3prl upstream name.{hint} Use an s3prl hub entry "
                f"(e.g. hubert_base, wavlm_base_plus, hubert_base_robust_mgr, fbank), or give a LightHuBERT "
                f"checkpoint as teacher.ckpt without teacher.name"
            )
        try:
            self.upstream = entry(ckpt=ckpt, model_config=model_config, refresh=False)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"teacher {name!r} could not be built: {err}") from None
        self.label = name
        self.downsample_rate = int(self.upstream.get_downsample_rates("hidden_states"))
        self._ffn_outputs: List[torch.Tensor] = []
        self._layers = self._find_encoder_layers()
        for layer in self._layers:
            layer.fc2.register_forward_hook(lambda _m, _i, out: self._ffn_outputs.append(out))
        self._freeze()

    def _find_encoder_layers(self) -> List[nn.Module]:
        best: List[nn.Module] = []
        for _, module in self.upstream.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) > len(best) and all(
                isinstance(getattr(m, "fc2", None), nn.Linear) for m in module
            ):
                best = list(module)
        return best

    def run(self, batch: Batch) -> TeacherOutput:
        self._ffn_outputs = []
        result = self.upstream([w.to(self.dtype) for w in batch.waveforms()])
        hidden = result["hidden_states"] if isinstance(result, dict) else result
        hidden = [h for h in hidden]
        B, T = hidden[-1].shape[:2]
        layer_results = None
        if self._layers and len(self._ffn_outputs) == len(self._layers):
            layer_results = [self._batch_first(x, B, T)[:, :T] for x in self._ffn_outputs]
        self._ffn_outputs = []
        return TeacherOutput(hidden, layer_results, self.downsample_rate)

    @staticmethod
    def _batch_first(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        # fairseq layers run (T, B, C); when T == B the shapes cannot tell, and time-first is their layout
        if x.size(1) == B and (x.size(0) != B or x.size(0) >= T):
            return x.transpose(0, 1)
        return x


def build_teacher(cfg: TeacherConfig, device: torch.device) -> Teacher:
    """The frozen teacher a config names, on ``device``, probed for its output sizes."""
    from ..upstream.hubconf import ENTRIES

    if not cfg.name:
        teacher: Teacher = LightHuBERTTeacher.from_checkpoint(str(cfg.ckpt), cfg.subnet)
    elif cfg.name in ENTRIES:  # our own upstream names: run the model directly to reach its FFN outputs
        teacher = LightHuBERTTeacher.from_entry(str(cfg.name), cfg.ckpt, cfg.model_config, cfg.subnet)
    else:
        if cfg.subnet is not None:
            raise ConfigError(f"teacher {cfg.label}: 'subnet' applies to LightHuBERT teachers only "
                              f"(a checkpoint as teacher.ckpt, or one of our lighthubert_* names)")
        teacher = S3prlTeacher(str(cfg.name), cfg.ckpt, cfg.model_config)
    dtype = getattr(torch, cfg.dtype)
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"teacher {cfg.label}: dtype float16 needs a CUDA device; use float32 or bfloat16 on {device.type}")
    teacher.dtype = dtype
    teacher.to(device=device, dtype=dtype)
    teacher.probe(device)
    logger.info("teacher %s: %d hidden states %s, %d FFN outputs, %d samples/frame, %s", teacher.label,
                teacher.num_hidden_states, sorted(set(teacher.hidden_dims)), teacher.num_layer_results,
                teacher.downsample_rate, cfg.dtype)
    return teacher


def align_frames(x: torch.Tensor, teacher_rate: int, student_rate: int, frames: int) -> torch.Tensor:
    """Bring (B, T, D) teacher features to the student's frame rate and exactly ``frames`` frames.

    An integer rate ratio averages (or repeats) neighbouring frames; otherwise linear interpolation.
    A few frames of difference from edge effects are trimmed, or filled by repeating the last frame.
    """
    if teacher_rate != student_rate:
        if student_rate % teacher_rate == 0:
            k = student_rate // teacher_rate
            x = F.avg_pool1d(x.transpose(1, 2), k, k, ceil_mode=True).transpose(1, 2)
        elif teacher_rate % student_rate == 0:
            x = x.repeat_interleave(teacher_rate // student_rate, dim=1)
        else:
            size = max(1, round(x.size(1) * teacher_rate / student_rate))
            x = F.interpolate(x.transpose(1, 2), size=size, mode="linear", align_corners=False).transpose(1, 2)
    if x.size(1) >= frames:
        return x[:, :frames]
    return torch.cat([x, x[:, -1:].expand(-1, frames - x.size(1), -1)], dim=1)
