"""Audio for distillation: files from a folder or list (or generated audio), random crops, padded batches.

Every random choice (crop offsets, epoch order) is a pure function of ``(seed, epoch, index)`` rather than
of a global generator, so a resumed run sees exactly the batches an uninterrupted one would, whatever the
number of DataLoader workers.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..model.config import ConfigError

SYNTHETIC = "synthetic"


@dataclass
class Batch:
    wav: torch.Tensor  # (B, L) raw waveforms, zero-padded at the end
    padding_mask: torch.Tensor  # (B, L) True on padding
    lengths: torch.Tensor  # (B,) valid samples

    def to(self, device: Union[str, torch.device]) -> "Batch":
        return Batch(self.wav.to(device), self.padding_mask.to(device), self.lengths.to(device))

    def waveforms(self) -> List[torch.Tensor]:
        """Unpadded waveforms, what s3prl upstreams take."""
        return [w[:n] for w, n in zip(self.wav, self.lengths.tolist())]

    def normalised(self) -> torch.Tensor:
        """Per-utterance layer norm over the valid samples (LightHuBERT's input convention), zero padding kept."""
        wav = torch.zeros_like(self.wav)
        for i, n in enumerate(self.lengths.tolist()):
            wav[i, :n] = F.layer_norm(self.wav[i, :n], (n,))
        return wav


def collate(wavs: Sequence[torch.Tensor]) -> Batch:
    lengths = torch.tensor([len(w) for w in wavs])
    padded = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        padded[i, : len(w)] = w
    mask = torch.arange(padded.size(1))[None, :] >= lengths[:, None]
    return Batch(padded, mask, lengths)


# ---------------------------------------------------------------------------------------------------
def synthetic_utterance(index: int, seconds: float, seed: int = 0, sample_rate: int = 16000) -> torch.Tensor:
    """A deterministic speech-like signal: gliding harmonics with formant-like weights, syllable envelope, noise."""
    rng = np.random.default_rng([seed, index])
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(90, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
    wav = np.zeros(n)
    for k in range(1, 16):
        weight = sum(np.exp(-((k * f0 - f) / 200.0) ** 2) for f in formants) + 0.05
        wav += weight / k * np.sin(k * phase)
    syllable = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6.3)))
    wav = wav * syllable + 0.05 * rng.standard_normal(n)
    return torch.from_numpy((0.3 * wav / (np.abs(wav).max() + 1e-8)).astype(np.float32))


def write_wav(path: Union[str, Path], wav: torch.Tensor, sample_rate: int = 16000) -> Path:
    """16-bit PCM WAV via soundfile (used to build test folders)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.numpy(), sample_rate, subtype="PCM_16")
    return path


def list_audio_files(spec: Union[str, Path], extensions: Sequence[str], key: str = "data.train") -> List[Path]:
    """Audio files of a folder (recursive) or of a list file (one path per line, relative to the list)."""
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"{key}={str(spec)!r} does not exist; point it at a folder of {'/'.join(extensions)} files, a text "
            f"file listing one audio path per line, or 'synthetic'"
        )
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in exts and p.is_file())
    else:
        files = []
        for line in path.read_text().splitlines():
            line = line.strip().split("\t")[0]
            if line and not line.startswith("#"):
                item = Path(line)
                files.append(item if item.is_absolute() else path.parent / item)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{key}: the list {path} names {len(missing)} missing file(s), e.g. {missing[0]}")
    if not files:
        raise ConfigError(f"{key}={str(spec)!r} holds no audio files with extensions {sorted(exts)}; "
                          f"add files or set data.extensions")
    return files


def speaker_of(path: Path, root: Optional[Path]) -> str:
    """Who speaks in a file, as the common corpus layouts say: the first folder under the data root
    (LibriSpeech ``<speaker>/<chapter>/``, VoxCeleb ``<id>/<video>/``), else a LibriSpeech-style
    ``<speaker>-<chapter>-<utterance>`` file name, else the file itself (no grouping)."""
    if root is not None:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            parts = ()
        if len(parts) >= 2:
            return parts[0]
    if path.stem.count("-") >= 2:
        return path.stem.split("-")[0]
    return str(path)


def balanced_order(speakers: Sequence[str], seed: int) -> List[int]:
    """Every index, shuffled and interleaved speaker by speaker: a prefix of any length holds as many
    speakers as it can, each about equally often (a held-out set that is not one or two talkers)."""
    rng = random.Random(seed)
    groups: Dict[str, List[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(i)
    names = sorted(groups)
    rng.shuffle(names)
    for name in names:
        rng.shuffle(groups[name])
    rounds = max((len(g) for g in groups.values()), default=0)
    return [groups[n][r] for r in range(rounds) for n in names if r < len(groups[n])]


class AudioCropDataset(Dataset):
    """Waveforms from files, each cropped to at most ``crop_seconds`` at an offset fixed by (seed, epoch, index)."""

    def __init__(self, files: Sequence[Path], crop_seconds: float, min_seconds: float = 0.0,
                 sample_rate: int = 16000, seed: int = 0, root: Optional[Path] = None) -> None:
        import soundfile as sf

        self.root = root
        self.sample_rate, self.seed, self.epoch = sample_rate, seed, 0
        self.crop = int(crop_seconds * sample_rate)
        self.items = []
        for f in files:
            try:
                info = sf.info(str(f))
            except RuntimeError as err:
                raise ConfigError(f"cannot read audio file {f}: {err}") from None
            frames = info.frames * sample_rate / info.samplerate
            if frames >= min_seconds * sample_rate:
                self.items.append((Path(f), info.frames, info.samplerate))
        if not self.items:
            raise ConfigError(f"every audio file is shorter than data.min_seconds={min_seconds}; lower it")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def speaker(self, index: int) -> str:
        return speaker_of(self.items[index][0], self.root)

    def __getitem__(self, index: int) -> torch.Tensor:
        import soundfile as sf

        path, frames, rate = self.items[index]
        crop = math.ceil(self.crop * rate / self.sample_rate)
        start = 0
        if frames > crop:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, frames - crop + 1))
        data, _ = sf.read(str(path), start=start, frames=min(crop, frames), dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.mean(axis=1))
        if rate != self.sample_rate:
            import torchaudio.functional as AF

            wav = AF.resample(wav, rate, self.sample_rate)[: self.crop]
        return wav


class SyntheticDataset(Dataset):
    """Generated utterances (see :func:`synthetic_utterance`), cropped like files are."""

    def __init__(self, utterances: int, seconds: float, crop_seconds: float, seed: int = 0,
                 sample_rate: int = 16000) -> None:
        self.utterances, self.seconds, self.seed, self.epoch = utterances, seconds, seed, 0
        self.sample_rate = sample_rate
        self.crop = int(crop_seconds * sample_rate)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.utterances

    def speaker(self, index: int) -> str:
        return str(index)  # generated utterances share no talker

    def __getitem__(self, index: int) -> torch.Tensor:
        wav = synthetic_utterance(index, self.seconds, self.seed, self.sample_rate)
        if len(wav) > self.crop:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, len(wav) - self.crop + 1))
            wav = wav[start: start + self.crop]
        return wav


def build_dataset(spec: str, data_cfg, key: str, seed: int, valid: bool = False) -> Dataset:
    """The dataset a ``data.train``/``data.valid`` value names."""
    if spec == SYNTHETIC:
        syn = data_cfg.synthetic
        count = syn.valid_utterances if valid else syn.utterances
        # held-out audio must differ from training audio: shift the generator seed
        return SyntheticDataset(count, syn.seconds, data_cfg.crop_seconds, syn.seed + (7919 if valid else 0),
                                data_cfg.sample_rate)
    files = list_audio_files(spec, data_cfg.extensions, key)
    root = Path(spec) if Path(spec).is_dir() else None
    return AudioCropDataset(files, data_cfg.crop_seconds, data_cfg.min_seconds, data_cfg.sample_rate, seed, root)


# ---------------------------------------------------------------------------------------------------
class ResumableBatchSampler(Sampler[List[int]]):
    """Seeded per-epoch shuffle, split across ranks, in whole batches, that can start mid-epoch.

    Every rank draws the same permutation (from ``seed`` and the epoch), drops the tail that would
    leave ranks unequal, and takes every ``world``-th batch; ``start_batch`` skips batches already used.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True) -> None:
        if size < batch_size * world:
            raise ConfigError(
                f"the dataset has {size} utterance(s) but one step needs data.batch_size={batch_size} x "
                f"{world} process(es); add audio or lower data.batch_size"
            )
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.shuffle = shuffle
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.size)
        per_step = self.batch_size * self.world
        for b in range(self.start_batch, len(self)):
            chunk = order[b * per_step: (b + 1) * per_step]
            yield chunk[self.rank * self.batch_size: (self.rank + 1) * self.batch_size].tolist()


def fixed_batches(dataset: Dataset, batch_size: int, limit: int, seed: int = 0) -> List[Batch]:
    """A fixed held-out set for validation and search: ``limit`` batches of utterances drawn by
    :func:`balanced_order` (shuffled by ``seed``, spread over the speakers), the same on every call."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    speakers = [dataset.speaker(i) if hasattr(dataset, "speaker") else str(i) for i in range(len(dataset))]
    chosen = balanced_order(speakers, seed)[: batch_size * limit]
    return [collate([dataset[i] for i in chosen[start: start + batch_size]]) for start in range(0, len(chosen), batch_size)]
