"""A deterministic, offline mini-SUPERB corpus synthesised with espeak-ng.

``make_corpus(OUT, preset)`` writes one small data set per SUPERB task in the exact on-disk layout that
s3prl 0.4.18's own dataset code reads, so the recipes run on it unchanged:

==========================================  ======================  =======================================
directory under OUT                         tasks                   stands in for
==========================================  ======================  =======================================
``speech_commands/speech_commands_v0.01``   ks (train + dev root)   Speech Commands v0.01 train archive
``speech_commands/..._test_set_v0.01``      ks (test root)          Speech Commands v0.01 test archive
``fluent_speech_commands_dataset``          ic                      Fluent Speech Commands
``IEMOCAP_full_release`` (+ ``meta_data``)  er                      IEMOCAP, 5 sessions
``VoxCeleb1`` (+ split and trial lists)     sid, asv                VoxCeleb1 dev/test wav trees
``LibriSpeech`` (+ bucket CSVs, lexicon)    asr, pr                 train-clean-100 / dev-clean / test-clean
``SNIPS``                                   sf                      SUPERB's Audio SNIPS release
``Libri2Mix/data``                          sd                      SUPERB's Libri2Mix diarization dirs
``quesst14Database``                        qbe                     QUESST 2014 (English part)
==========================================  ======================  =======================================

The last three are built by :mod:`.corpus_snips`, :mod:`.corpus_librimix` and :mod:`.corpus_quesst`.

The data is learnable by design: test speakers never occur in training (except SID, which is closed-set
and holds out recording sessions instead), every class occurs in training, and labels are carried by
what is said (KS, IC, ASR, PR, SF, QbE), how it is said (ER: prosody per emotion) or who says it (SID, ASV,
SD: one espeak voice per speaker, with per-session jitter).

Every file depends only on (preset, seed, its own id): synthesis goes through the fork-per-request
helper in :mod:`._espeak`, and noise and placement come from generators seeded with the file id. A data
set is built in a hidden temporary directory, marked as ours, and renamed into place when complete (so
re-running resumes; folders without the mark are never deleted, not even by ``--force``); the manifest
``corpus_manifest.json`` is written last and marks a finished corpus.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ._espeak import ESPEAKNG_LOADER_VERSION, EspeakSynthesizer, SynthRequest

LOG = logging.getLogger(__name__)

SAMPLE_RATE = 16000
GENERATOR_VERSION = 3  # bump whenever the same preset+seed would produce different files
MANIFEST_NAME = "corpus_manifest.json"
# written into each data set before it is renamed into place: marks it complete and ours (only such
# folders are ever deleted; the recipes' loaders look at sub-folders and splits, never at this file)
DATASET_MARK = ".made_by_lighthubert_s3prl.json"
_TMP_DIR = ".corpus_tmp"
TASK_NAMES = ("asr", "asv", "ks", "ic", "er", "pr", "sid", "sf", "sd", "qbe")


class CorpusError(ValueError):
    """A bad request to the generator; the message names the problem and the fix."""


# ----------------------------------------------------------------------------------------------------
# presets


@dataclass(frozen=True)
class Acoustics:
    """How the talkers sound and how noisy the recordings are: a held-out variant changes these (and the
    seed) so that a scale tuned on one corpus can be checked on speech it was not tuned on."""

    rate: Tuple[int, int] = (150, 191)  # espeak words per minute, drawn per talker (upper bound excluded)
    pitch: Tuple[int, int] = (35, 66)
    pitch_range: Tuple[int, int] = (35, 71)
    snr_shift_db: float = 0.0  # added to every recording's signal-to-noise range
    noise_color: str = "white"  # of the noise added to every recording


@dataclass(frozen=True)
class Preset:
    ks_speakers: Tuple[int, int, int]  # train, dev (picked so s3prl's hash split agrees), test
    ks_unknown_words: int  # filler words that make up the _unknown_ class
    ks_test_silence: int
    ic_speakers: Tuple[int, int, int]  # train, valid, test
    ic_train_phrasings: int  # valid/test speakers use one phrasing per intent
    er_utts_per_emotion: int  # per speaker; 2 speakers per session, 5 sessions
    vox_speakers: Tuple[int, int]  # under dev/wav, under test/wav
    vox_videos: int  # per speaker: SID trains on all but the last two (its dev and test videos)
    vox_utts_per_video: int
    asv_trials: int
    ls_speakers: Tuple[int, int, int]  # train-clean-100, dev-clean, test-clean
    ls_utts_per_speaker: Tuple[int, int, int]
    ls_vocabulary: int  # a small vocabulary lets CER/PER move within a short run
    ks_test_unknown_per_speaker: int = 2  # filler words each KS test speaker says (the _unknown_ class)
    acoustics: Acoustics = Acoustics()
    sf_speakers: Tuple[int, int, int] = (4, 2, 2)  # SF (SNIPS): train, valid, test talkers
    sf_utts_per_speaker: int = 12  # commands with slots, each talker
    sd_recordings: Tuple[int, int, int] = (12, 3, 3)  # SD (Libri2Mix): two-talker mixtures train, dev, test
    qbe_terms: int = 6  # QbE (QUESST14): spoken terms, each with a dev and an eval query
    qbe_documents: int = 24  # utterances searched (each holds zero, one or two terms)


PRESETS: Dict[str, Preset] = {
    # all seven recipes train and test on 2 CPU cores within minutes; ~900 files, ~15 s to generate
    "ci": Preset(ks_speakers=(12, 3, 5), ks_unknown_words=4, ks_test_silence=5,
                 ic_speakers=(4, 1, 2), ic_train_phrasings=2, er_utts_per_emotion=2,
                 vox_speakers=(8, 4), vox_videos=4, vox_utts_per_video=2, asv_trials=60,
                 ls_speakers=(6, 2, 2), ls_utts_per_speaker=(10, 4, 4), ls_vocabulary=30),
    # a few times larger: enough for clearer learning curves, still well under a minute per data set
    "small": Preset(ks_speakers=(40, 8, 12), ks_unknown_words=8, ks_test_silence=24,
                    ic_speakers=(12, 3, 3), ic_train_phrasings=2, er_utts_per_emotion=6,
                    vox_speakers=(24, 8), vox_videos=5, vox_utts_per_video=2, asv_trials=320,
                    ls_speakers=(20, 4, 4), ls_utts_per_speaker=(15, 6, 6), ls_vocabulary=60,
                    sf_speakers=(8, 4, 4), sf_utts_per_speaker=24, sd_recordings=(24, 6, 6), qbe_terms=8,
                    qbe_documents=48),
    # the mini-SUPERB instrument (task scale "mini"): test sets large enough that seed noise stays well below
    # the gaps between upstreams; the KS test set is balanced over its 12 classes, as the real one is
    "mini": Preset(ks_speakers=(60, 10, 30), ks_unknown_words=8, ks_test_silence=30, ks_test_unknown_per_speaker=1,
                   ic_speakers=(16, 4, 8), ic_train_phrasings=2, er_utts_per_emotion=12,
                   vox_speakers=(40, 10), vox_videos=5, vox_utts_per_video=4, asv_trials=1000,
                   ls_speakers=(30, 6, 6), ls_utts_per_speaker=(15, 8, 8), ls_vocabulary=60,
                   sf_speakers=(8, 4, 4), sf_utts_per_speaker=60, sd_recordings=(48, 12, 12), qbe_terms=12,
                   qbe_documents=96),
}
# held out from tuning (use them with a seed of their own, e.g. --seed 1): the mini sizes with other talkers'
# prosody and pink noise at the same signal-to-noise ratios, and the same with the noise 10 dB stronger
HELD_OUT_PROSODY = dict(rate=(130, 211), pitch=(25, 76), pitch_range=(20, 86), noise_color="pink")
PRESETS["mini-heldout"] = replace(PRESETS["mini"], acoustics=Acoustics(**HELD_OUT_PROSODY, snr_shift_db=-10.0))
PRESETS["mini-heldout-voices"] = replace(PRESETS["mini"], acoustics=Acoustics(**HELD_OUT_PROSODY))


# ----------------------------------------------------------------------------------------------------
# voices

# language files of the English voices (the library wants file names, case-sensitive)
ACCENTS = ("en-US", "en", "en-GB-scotland", "en-GB-x-rp", "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029",
           "en-US-nyc")
# variants that sound like one adult talker; whisper, robots and variants that clip at full volume
# (Andrea, Gene, Jacky, antonio, belinda, ed, john, paul, iven, klatt4) are left out
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "Alex", "Denis",
                 "Hugo", "Lee", "Michael", "Mike", "adam", "benjamin", "boris", "david", "edward", "grandpa",
                 "max", "norbert", "quincy", "rob", "robert", "travis", "victor")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Annie", "anika", "aunty", "grandma", "linda",
                   "steph")


@dataclass(frozen=True)
class Voice:
    """A synthetic talker: espeak voice plus base prosody."""

    name: str
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int = 0

    def vary(self, rng: np.random.Generator, pitch: int = 2, rate: float = 0.04) -> "Voice":
        """The same talker on another occasion: small pitch and tempo jitter."""
        return replace(self, pitch=_clip(self.pitch + int(rng.integers(-pitch, pitch + 1)), 0, 99),
                       rate=_clip(round(self.rate * rng.uniform(1 - rate, 1 + rate)), 80, 450))

    def request(self, text: str) -> SynthRequest:
        return SynthRequest(text=text, voice=self.name, rate=self.rate, pitch=self.pitch,
                            pitch_range=self.pitch_range, word_gap=self.word_gap)


def _clip(value: int, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def _draw_voices(rng: np.random.Generator, n: int, genders: Optional[Sequence[str]] = None,
                 acoustics: Acoustics = Acoustics()) -> List[Voice]:
    """``n`` talkers with distinct (accent, variant) pairs while the pool lasts."""
    genders = list(genders) if genders is not None else [("F", "M")[i % 2] for i in range(n)]
    used = set()
    voices = []
    for gender in genders:
        variants = FEMALE_VARIANTS if gender == "F" else MALE_VARIANTS
        for _ in range(50):
            pair = (ACCENTS[rng.integers(len(ACCENTS))], variants[rng.integers(len(variants))])
            if pair not in used:
                break
        used.add(pair)
        voices.append(Voice(name=f"{pair[0]}+{pair[1]}", rate=int(rng.integers(*acoustics.rate)),
                            pitch=int(rng.integers(*acoustics.pitch)),
                            pitch_range=int(rng.integers(*acoustics.pitch_range))))
    return voices


# ----------------------------------------------------------------------------------------------------
# deterministic randomness and audio helpers


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(_stable_int(seed, *parts))


def _token(seed: int, *parts: object, length: int = 11,
           alphabet: str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") -> str:
    """A reproducible random-looking id (VoxCeleb video ids, FSC speaker ids)."""
    digest = hashlib.sha256("\x1f".join(map(str, (seed, "token", *parts))).encode("utf-8")).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _trim(x: np.ndarray, margin: float = 0.03) -> np.ndarray:
    """Drop leading/trailing silence (espeak appends ~0.3 s), keeping ``margin`` seconds of context."""
    active = np.flatnonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-9))
    if active.size == 0:
        return x
    pad = int(margin * SAMPLE_RATE)
    return x[max(0, active[0] - pad): active[-1] + pad + 1]


def _colored_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0
        spectrum /= freqs ** (0.5 if color == "pink" else 1.0)
        noise = np.fft.irfft(spectrum, n)
    noise = noise - noise.mean()
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def _finish(x: np.ndarray, rng: np.random.Generator, peak: Tuple[float, float] = (0.3, 0.9),
            snr_db: Tuple[float, float] = (25.0, 40.0), total: Optional[int] = None,
            acoustics: Acoustics = Acoustics()) -> np.ndarray:
    """Peak-normalise, optionally place at a random offset in ``total`` samples, add noise."""
    x = x * (rng.uniform(*peak) / (np.abs(x).max() + 1e-9))
    speech_rms = float(np.sqrt(np.mean(x ** 2)) + 1e-9)
    if total is not None:
        x = x[:total]
        offset = int(rng.integers(0, total - len(x) + 1))
        x = np.pad(x, (offset, total - len(x) - offset))
    noise_rms = speech_rms / 10 ** ((rng.uniform(*snr_db) + acoustics.snr_shift_db) / 20)
    if acoustics.noise_color == "white":  # drawn as before, so the ci and small corpora keep their bytes
        noise = rng.standard_normal(len(x))
    else:
        noise = _colored_noise(rng, len(x), acoustics.noise_color)
    x = x + noise_rms * noise
    return np.clip(x, -1.0, 32767 / 32768).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# build context


class _Build:
    """Synthesises and writes the files of one data set into a (temporary) directory."""

    def __init__(self, tts: EspeakSynthesizer, seed: int, root: Path, name: str) -> None:
        self.tts, self.seed, self.root, self.name = tts, seed, root, name
        self.files = 0

    def rng(self, *parts: object) -> np.random.Generator:
        return _rng(self.seed, self.name, *parts)

    def speak(self, jobs: Sequence[Tuple[str, SynthRequest]], desc: str) -> Iterator[Tuple[str, np.ndarray]]:
        """(uid, 16 kHz float audio) for each (uid, request), trimmed of espeak's trailing silence."""
        import soxr
        from tqdm import tqdm

        audio = self.tts.map(req for _, req in jobs)
        for (uid, _), raw in tqdm(zip(jobs, audio), total=len(jobs), desc=f"{self.name}: {desc}",
                                  disable=None, leave=False):
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            if x.size == 0:
                raise CorpusError(f"espeak-ng produced no audio for {uid!r}")
            yield uid, _trim(soxr.resample(x, self.tts.sample_rate, SAMPLE_RATE, quality="HQ"))

    def write(self, rel: Union[str, Path], audio: np.ndarray) -> Path:
        import soundfile

        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "FLAC" if path.suffix == ".flac" else "WAV"
        soundfile.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16", format=fmt)
        self.files += 1
        return path

    def write_text(self, rel: Union[str, Path], lines: Iterable[str]) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path


# ----------------------------------------------------------------------------------------------------
# KS: Speech Commands v0.01

KS_TARGETS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS_FILLERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "bed", "bird",
              "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
_KS_HASH_RANGE = 2 ** 27 - 1


def ks_split_of(speaker_id: str) -> str:
    """The split s3prl (following TensorFlow's rule) derives from a speaker id: train, dev or dropped."""
    value = int(hashlib.sha1(speaker_id.encode("utf-8")).hexdigest(), 16)
    percent = (value % (_KS_HASH_RANGE + 1)) * (100.0 / _KS_HASH_RANGE)
    return "dev" if percent < 10 else ("dropped" if percent < 20 else "train")


def _ks_speaker_ids(seed: int, n_train: int, n_dev: int, n_test: int) -> Tuple[List[str], List[str], List[str]]:
    """8-hex-digit ids, searched so that s3prl's hash split puts exactly the intended ones in dev."""
    want = {"train": n_train, "dev": n_dev}
    found: Dict[str, List[str]] = {"train": [], "dev": []}
    i = 0
    while any(len(found[k]) < want[k] for k in want):
        cand = hashlib.sha1(f"ks-speaker:{seed}:{i}".encode()).hexdigest()[:8]
        split = ks_split_of(cand)
        if split in found and len(found[split]) < want[split]:
            found[split].append(cand)
        i += 1
    test = [hashlib.sha1(f"ks-test-speaker:{seed}:{j}".encode()).hexdigest()[:8] for j in range(n_test)]
    return found["train"], found["dev"], test


def _build_speech_commands(b: _Build, p: Preset) -> Dict[str, dict]:
    n_train, n_dev, n_test = p.ks_speakers
    train_ids, dev_ids, test_ids = _ks_speaker_ids(b.seed, n_train, n_dev, n_test)
    fillers = [KS_FILLERS[i] for i in sorted(b.rng("fillers").choice(len(KS_FILLERS), p.ks_unknown_words,
                                                                       replace=False))]
    voices = _draw_voices(b.rng("voices"), n_train + n_dev + n_test, acoustics=p.acoustics)
    train_root, test_root = Path("speech_commands_v0.01"), Path("speech_commands_test_set_v0.01")

    jobs: List[Tuple[str, SynthRequest]] = []
    for spk, voice in zip(train_ids + dev_ids, voices):
        for word in KS_TARGETS + tuple(fillers):
            jobs.append((str(train_root / word / f"{spk}_nohash_0.wav"), voice.vary(b.rng(spk, word)).request(word)))
    for k, (spk, voice) in enumerate(zip(test_ids, voices[n_train + n_dev:])):
        for word in KS_TARGETS:
            jobs.append((str(test_root / word / f"{spk}_nohash_0.wav"), voice.vary(b.rng(spk, word)).request(word)))
        per = p.ks_test_unknown_per_speaker
        for j in range(per):  # rotating so that each filler is tested
            word = fillers[(per * k + j) % len(fillers)]
            jobs.append((str(test_root / "_unknown_" / f"{spk}_nohash_{j}.wav"),
                         voice.vary(b.rng(spk, word)).request(word)))
    for rel, audio in b.speak(jobs, "words"):
        # 1 s clips like the real set
        b.write(rel, _finish(audio, b.rng("clip", rel), total=SAMPLE_RATE, acoustics=p.acoustics))

    # _silence_ is learned only from these long recordings (s3prl crops a random second of each)
    for color in ("white", "pink", "brown"):
        noise = 0.1 * _colored_noise(b.rng("background", color), 5 * SAMPLE_RATE, color)
        b.write(train_root / "_background_noise_" / f"{color}_noise.wav", np.clip(noise, -1, 0.99))
    for k in range(p.ks_test_silence):
        rng = b.rng("test-silence", k)
        color = ("white", "pink", "brown")[k % 3]
        noise = rng.uniform(0.02, 0.2) * _colored_noise(rng, SAMPLE_RATE, color)
        b.write(test_root / "_silence_" / f"silence{k:04d}_nohash_0.wav", np.clip(noise, -1, 0.99))

    per_speaker = len(KS_TARGETS) + len(fillers)
    return {"ks": {"paths": {"speech_commands_root": str(train_root), "speech_commands_test_root": str(test_root)},
                   "files": {"train": n_train * per_speaker, "dev": n_dev * per_speaker,
                             "test": n_test * (len(KS_TARGETS) + p.ks_test_unknown_per_speaker) + p.ks_test_silence, "background_noise": 3},
                   "classes": list(KS_TARGETS) + ["_unknown_", "_silence_"], "unknown_words": fillers}}


# ----------------------------------------------------------------------------------------------------
# IC: Fluent Speech Commands

def _intents() -> List[Tuple[Tuple[str, str, str], Tuple[str, ...]]]:
    """The 31 FSC intents (action, object, location) with phrasings of our own."""
    out = [(("change language", "none", "none"), ("change the language", "switch language"))]
    for lang in ("Chinese", "Korean", "English", "German"):
        out.append((("change language", lang, "none"), (f"switch to {lang}", f"set my language to {lang}")))
    for obj, on, off in (("music", ("play the music", "put some music on"), ("stop the music", "pause the music")),
                         ("lamp", ("turn on the lamp", "switch the lamp on"), ("turn off the lamp", "lamp off"))):
        out += [(("activate", obj, "none"), on), (("deactivate", obj, "none"), off)]
    for loc in ("none", "kitchen", "bedroom", "washroom"):
        where = "" if loc == "none" else f" in the {loc}"
        out.append((("activate", "lights", loc), (f"turn on the lights{where}", f"lights on{where}")))
        out.append((("deactivate", "lights", loc), (f"turn off the lights{where}", f"switch the lights off{where}")))
    out.append((("increase", "volume", "none"), ("turn up the volume", "make it louder")))
    out.append((("decrease", "volume", "none"), ("turn the volume down", "make it quieter")))
    for loc in ("none", "kitchen", "bedroom", "washroom"):
        where = "" if loc == "none" else f" in the {loc}"
        out.append((("increase", "heat", loc), (f"increase the heating{where}", f"make it warmer{where}")))
        out.append((("decrease", "heat", loc), (f"decrease the heating{where}", f"make it cooler{where}")))
    for obj in ("newspaper", "juice", "socks", "shoes"):
        out.append((("bring", obj, "none"), (f"bring me the {obj}", f"fetch my {obj}")))
    return out


def _build_fluent(b: _Build, p: Preset) -> Dict[str, dict]:
    intents = _intents()
    n_train, n_valid, n_test = p.ic_speakers
    voices = _draw_voices(b.rng("voices"), n_train + n_valid + n_test, acoustics=p.acoustics)
    speakers = [_token(b.seed, "fsc-speaker", i, length=16) for i in range(len(voices))]
    splits = (["train"] * n_train) + (["valid"] * n_valid) + (["test"] * n_test)
    rows: Dict[str, List[list]] = {"train": [], "valid": [], "test": []}
    jobs = []
    for spk, voice, split in zip(speakers, voices, splits):
        for k, (slots, phrasings) in enumerate(intents):
            chosen = (phrasings[:p.ic_train_phrasings] if split == "train"
                      else [phrasings[int(b.rng(spk, k).integers(len(phrasings)))]])
            for text in chosen:
                digest = hashlib.sha1(f"fsc:{b.seed}:{spk}:{text}".encode()).digest()
                file_id = uuid.UUID(bytes=digest[:16], version=4)
                rel = f"wavs/speakers/{spk}/{file_id}.wav"
                jobs.append((rel, voice.vary(b.rng(spk, text)).request(text)))
                rows[split].append([rel, spk, text[0].upper() + text[1:], *slots])
    for rel, audio in b.speak(jobs, "commands"):
        b.write(rel, _finish(audio, b.rng("finish", rel), acoustics=p.acoustics))
    for split, split_rows in rows.items():
        path = b.root / "data" / f"{split}_data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows([i, *row] for i, row in enumerate(split_rows))
    return {"ic": {"paths": {"file_path": "."}, "files": {k: len(v) for k, v in rows.items()},
                   "intents": len(intents)}}


# ----------------------------------------------------------------------------------------------------
# ER: IEMOCAP

ER_SENTENCES = (
    "the meeting starts at nine tomorrow", "I put the books on the kitchen table",
    "we walked to the station after lunch", "she called her brother in the evening",
    "the train was on time today", "he read the letter twice", "they painted the fence last week",
    "my phone is on the desk", "the shop closes at six", "we need more paper for the printer",
    "the bus stops near the old bridge", "I will water the plants later",
)
# emotion -> (pitch offset, tempo factor, pitch range, extra word gap, peak range); labels live in prosody
ER_PROSODY = {
    "neu": (0, 1.00, 45, 0, (0.4, 0.7)),
    "hap": (18, 1.12, 90, 0, (0.4, 0.7)),
    "ang": (6, 1.30, 75, 0, (0.8, 0.98)),
    "sad": (-15, 0.72, 12, 3, (0.2, 0.35)),
}
_ER_VAD = {"neu": "2.5000, 2.5000, 2.5000", "hap": "4.0000, 3.5000, 3.0000", "exc": "4.0000, 4.0000, 3.5000",
           "ang": "1.5000, 4.0000, 4.0000", "sad": "1.5000, 2.0000, 2.0000", "fru": "2.0000, 3.5000, 3.0000"}


def _build_iemocap(b: _Build, p: Preset) -> Dict[str, dict]:
    from .metadata import write_iemocap_meta_data

    jobs, labels = [], {}  # labels: utt -> (dialog, emotion label as written)
    counters: Dict[Tuple[str, str], int] = {}
    voices = _draw_voices(b.rng("voices"), 10, genders=["F", "M"] * 5, acoustics=p.acoustics)
    for session in range(1, 6):
        for g, gender in enumerate("FM"):
            base = voices[2 * (session - 1) + g]
            plan = [(emo, k) for emo in ER_PROSODY for k in range(p.er_utts_per_emotion)]
            plan.append(("fru", 0))  # a label the recipe filters out, as in the real corpus
            for n, (emo, k) in enumerate(plan):
                dialog = f"Ses0{session}{'FM'[n % 2]}_impro01"
                idx = counters.get((dialog, gender), 0)
                counters[(dialog, gender)] = idx + 1
                utt = f"{dialog}_{gender}{idx:03d}"
                shift, tempo, prange, gap, _ = ER_PROSODY.get(emo, ER_PROSODY["neu"])
                rng = b.rng(utt)
                day = base.vary(rng)
                voice = replace(day, pitch=_clip(day.pitch + shift, 0, 99), rate=_clip(round(day.rate * tempo), 80, 450),
                                pitch_range=prange, word_gap=gap)
                text = ER_SENTENCES[int(rng.integers(len(ER_SENTENCES)))]
                # every other happy utterance is labelled "exc", which the recipe merges into "hap"
                labels[utt] = (dialog, "exc" if emo == "hap" and k % 2 else emo)
                jobs.append((utt, voice.request(text)))
    durations = {}
    for utt, audio in b.speak(jobs, "utterances"):
        dialog, label = labels[utt]
        peak = ER_PROSODY.get(label.replace("exc", "hap"), ER_PROSODY["neu"])[4]
        wav = _finish(audio, b.rng("finish", utt), peak=peak, acoustics=p.acoustics)
        b.write(f"Session{int(utt[3:5])}/sentences/wav/{dialog}/{utt}.wav", wav)
        durations[utt] = len(wav) / SAMPLE_RATE
    for dialog in sorted({d for d, _ in labels.values()}):
        lines, clock = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], 1.0
        for utt in sorted(u for u, (d, _) in labels.items() if d == dialog):
            emo = labels[utt][1]
            lines += [f"[{clock:.4f} - {clock + durations[utt]:.4f}]\t{utt}\t{emo}\t[{_ER_VAD[emo]}]",
                      f"C-E1:\t{emo};\t()", ""]
            clock += durations[utt] + 0.5
        b.write_text(f"Session{int(dialog[3:5])}/dialog/EmoEvaluation/{dialog}.txt", lines)
    write_iemocap_meta_data(b.root, b.root / "meta_data")
    kept = sum(1 for _, emo in labels.values() if emo != "fru")
    return {"er": {"paths": {"root": ".", "meta_data": "meta_data"},
                   "files": {"wav": len(labels), "labelled_4class": kept},
                   "folds": [f"fold{i}" for i in range(1, 6)]}}


# ----------------------------------------------------------------------------------------------------
# SID + ASV: VoxCeleb1

VOX_WORDS = (
    "today", "we", "talked", "about", "the", "new", "film", "and", "my", "favourite", "scene", "was", "when",
    "they", "finally", "found", "old", "house", "near", "river", "it", "really", "made", "me", "think",
    "people", "always", "ask", "how", "started", "music", "career", "years", "ago", "small", "town",
    "friends", "family", "great", "time", "working", "together", "every", "day", "learned", "something",
    "important", "story", "character", "audience", "season", "game", "team", "practice", "morning", "city",
    "journey", "question", "answer", "show",
)


def make_trials(utterances: Iterable[str], speaker_of: Callable[[str], str], count: int,
                rng: np.random.Generator) -> List[Tuple[int, str, str]]:
    """``count`` verification trials ``(label, enrolment, test)`` shaped like VoxCeleb1-O's list.

    As in the real list, a trial compares two different recordings, no pair of recordings is scored
    twice (in either order: the score is symmetric, a repeat would only weigh that pair double in the
    EER), and target (1) and non-target (0) trials come in equal numbers (alternating; one more target
    for an odd ``count``). Enrolment utterances are taken in turn.
    """
    rels = sorted(set(utterances))
    used: Set[FrozenSet[str]] = set()
    out: List[Tuple[int, str, str]] = []
    for t in range(count):
        enrol = rels[t % len(rels)]
        label = 1 if t % 2 == 0 else 0
        pool = [r for r in rels if r != enrol and (speaker_of(r) == speaker_of(enrol)) == (label == 1)
                and frozenset((enrol, r)) not in used]
        if not pool:
            raise CorpusError(f"cannot draw trial {t + 1} of {count}: {enrol} has no unused "
                              f"{'same' if label else 'other'}-speaker partner among {len(rels)} utterances; "
                              "ask for fewer trials or more utterances per speaker")
        test = pool[int(rng.integers(len(pool)))]
        used.add(frozenset((enrol, test)))
        out.append((label, enrol, test))
    return out


def _build_voxceleb1(b: _Build, p: Preset) -> Dict[str, dict]:
    n_dev, n_test = p.vox_speakers
    # the real corpus keeps ids id10270..id10309 for its verification test speakers
    speakers = [(f"id{10001 + i}", "dev") for i in range(n_dev)] + [(f"id{10270 + i}", "test") for i in range(n_test)]
    voices = _draw_voices(b.rng("voices"), len(speakers), acoustics=p.acoustics)
    jobs, meta = [], {}  # meta: rel path under <split>/wav -> (split, speaker, video index, channel tilt)
    for (spk, part), voice in zip(speakers, voices):
        for v in range(p.vox_videos):
            video = _token(b.seed, "video", spk, v)
            session_rng = b.rng(spk, video)
            session_voice = voice.vary(session_rng, pitch=3, rate=0.06)  # a different day, a different mood
            tilt = float(session_rng.uniform(-0.5, 0.5))  # a different microphone
            for u in range(p.vox_utts_per_video):
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                rng = b.rng(rel)
                words = [VOX_WORDS[i] for i in rng.integers(len(VOX_WORDS), size=int(rng.integers(12, 17)))]
                jobs.append((rel, session_voice.vary(rng, pitch=1, rate=0.02).request(" ".join(words))))
                meta[rel] = (part, spk, v, tilt)
    for rel, audio in b.speak(jobs, "utterances"):
        part, _, _, tilt = meta[rel]
        audio = np.convolve(audio, [1.0, tilt])[: len(audio)]
        b.write(f"{part}/wav/{rel}",
                _finish(audio, b.rng("finish", rel), snr_db=(20.0, 35.0), acoustics=p.acoustics))

    # SID: closed set over all speakers, split by video like iden_split.txt (1 train, 2 dev, 3 test)
    def sid_split(v: int) -> int:
        return 1 if v < p.vox_videos - 2 else (2 if v == p.vox_videos - 2 else 3)

    iden = [f"{sid_split(v)} {rel}" for rel, (_, _, v, _) in sorted(meta.items())]
    b.write_text("iden_split.txt", iden)

    def trials(part: str, count: int, key: str) -> List[str]:
        rels = [r for r, m in meta.items() if m[0] == part]
        return [f"{label} {enrol} {test}" for label, enrol, test in
                make_trials(rels, lambda rel: meta[rel][1], count, b.rng("trials", key))]

    # named like the original VoxCeleb1-O list (veri_test.txt), the one SUPERB scores
    b.write_text("veri_test.txt", trials("test", p.asv_trials, "test"))
    # the ASV recipe parses a dev trial list at start-up (SUPERB never scores it): give it a real one
    b.write_text("veri_dev.txt", trials("dev", max(10, p.asv_trials // 4), "dev"))
    b.write_text("dev_speaker_ids.txt", [spk for spk, part in speakers if part == "dev"])
    counts = {k: sum(1 for line in iden if line.startswith(f"{i} ")) for i, k in ((1, "train"), (2, "dev"), (3, "test"))}
    return {
        "sid": {"paths": {"file_path": ".", "meta_data": "iden_split.txt"}, "files": counts,
                "speakers": len(speakers)},
        "asv": {"paths": {"file_path": ".", "test_meta_data": "veri_test.txt", "dev_meta_data": "veri_dev.txt",
                          "train_meta_data": "dev_speaker_ids.txt"},
                "files": {"dev_wav": sum(1 for m in meta.values() if m[0] == "dev"),
                          "test_wav": sum(1 for m in meta.values() if m[0] == "test"), "trials": p.asv_trials},
                "speakers": {"dev": n_dev, "test": n_test}},
    }


# ----------------------------------------------------------------------------------------------------
# ASR + PR: LibriSpeech

LS_WORDS = (
    "the", "and", "of", "to", "in", "that", "he", "was", "it", "his", "with", "as", "had", "for", "you", "her",
    "but", "she", "at", "on", "by", "him", "which", "they", "so", "all", "this", "from", "were", "have", "one",
    "said", "no", "when", "would", "there", "what", "my", "out", "up", "them", "if", "we", "man", "time",
    "little", "great", "old", "day", "house", "water", "long", "night", "good", "king", "hand", "came",
    "looked", "sea", "went",
)
LS_SPLITS = ("train-clean-100", "dev-clean", "test-clean")


def _build_librispeech(b: _Build, p: Preset) -> Dict[str, dict]:
    from .metadata import write_len_for_bucket, write_lexicon

    vocab = [w.upper() for w in LS_WORDS[: p.ls_vocabulary]]
    ids_rng = b.rng("speaker-ids")
    n_total = sum(p.ls_speakers)
    speaker_ids = [int(x) for x in ids_rng.choice(np.arange(100, 9000), n_total, replace=False)]
    voices = _draw_voices(b.rng("voices"), n_total, acoustics=p.acoustics)
    jobs, trans, counts = [], {}, {}
    start = 0
    for split, n_spk, n_utt in zip(LS_SPLITS, p.ls_speakers, p.ls_utts_per_speaker):
        counts[split] = n_spk * n_utt
        for spk, voice in zip(speaker_ids[start:start + n_spk], voices[start:start + n_spk]):
            chapter = 1000 + _stable_int(b.seed, "chapter", spk) % 90000
            for u in range(n_utt):
                utt = f"{spk}-{chapter}-{u:04d}"
                rng = b.rng(utt)
                words = [vocab[i] for i in rng.integers(len(vocab), size=int(rng.integers(4, 9)))]
                rel = f"{split}/{spk}/{chapter}/{utt}.flac"
                trans.setdefault(f"{split}/{spk}/{chapter}/{spk}-{chapter}.trans.txt", []).append(
                    f"{utt} {' '.join(words)}")
                jobs.append((rel, voice.vary(rng).request(" ".join(words).lower())))
        start += n_spk
    for rel, audio in b.speak(jobs, "utterances"):
        b.write(rel, _finish(audio, b.rng("finish", rel), acoustics=p.acoustics))
    for rel, lines in trans.items():
        b.write_text(rel, sorted(lines))
    write_len_for_bucket(b.root, b.root / "len_for_bucket", LS_SPLITS)
    write_lexicon(sorted(set(vocab)), b.root / "lexicon.txt")
    paths = {"splits": {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}}
    return {
        "asr": {"paths": {"libri_root": ".", "bucket_file": "len_for_bucket"}, "files": dict(counts), **paths},
        "pr": {"paths": {"path": ".", "lexicon": "lexicon.txt"}, "files": dict(counts), **paths,
               "vocabulary": len(vocab)},
    }


# ----------------------------------------------------------------------------------------------------
# orchestration

# data set directory -> (tasks it serves, builder)
Builder = Callable[[_Build, Preset], Dict[str, dict]]
# data set folder -> (tasks it serves, its builder: a function here, or "module:function" of a builder module
# beside this one, imported when used because those modules import this one's helpers)
_DATASETS: Dict[str, Tuple[Tuple[str, ...], Union[Builder, str]]] = {
    "speech_commands": (("ks",), _build_speech_commands),
    "fluent_speech_commands_dataset": (("ic",), _build_fluent),
    "IEMOCAP_full_release": (("er",), _build_iemocap),
    "VoxCeleb1": (("sid", "asv"), _build_voxceleb1),
    "LibriSpeech": (("asr", "pr"), _build_librispeech),
    "SNIPS": (("sf",), "corpus_snips:build_snips"),
    "Libri2Mix": (("sd",), "corpus_librimix:build_librimix"),
    "quesst14Database": (("qbe",), "corpus_quesst:build_quesst"),
}


def _builder(name: str) -> Builder:
    found = _DATASETS[name][1]
    if isinstance(found, str):
        import importlib

        module, function = found.split(":")
        found = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    return found


def _identity(preset: str, seed: int) -> dict:
    return {"generator": "lighthubert_s3prl.superb.corpus", "generator_version": GENERATOR_VERSION,
            "preset": preset, "seed": seed, "espeakng_loader": ESPEAKNG_LOADER_VERSION}


def parse_tasks(tasks: Union[None, str, Iterable[str]]) -> List[str]:
    """Normalise a task selection (``None`` = all, ``"ks,ic"`` or a list) in the canonical order."""
    if tasks is None:
        return list(TASK_NAMES)
    names = [t.strip().lower() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown or not names:
        raise CorpusError(f"unknown task(s) {unknown or names!r}; choose from {', '.join(TASK_NAMES)} "
                          "(comma-separated, e.g. --tasks ks,ic)")
    return [t for t in TASK_NAMES if t in names]


def _resolve(manifest: dict, out: Path) -> dict:
    """Manifest with the relative paths stored on disk turned into absolute ones."""
    result = json.loads(json.dumps(manifest))
    result["root"] = str(out)
    for entry in result["tasks"].values():
        base = out / entry.pop("dataset_dir")
        entry["dataset_dir"] = str(base)
        for key, rel in entry["paths"].items():
            entry["paths"][key] = str((base / rel).resolve())
    return result


def load_manifest(out_dir: Union[str, Path]) -> Optional[dict]:
    """The manifest of a finished corpus in ``out_dir`` with absolute paths, or None if there is none."""
    out = Path(out_dir).resolve()
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    return _resolve(json.loads(path.read_text(encoding="utf-8")), out)


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def make_corpus(out_dir: Union[str, Path], preset: str = "ci", seed: int = 0,
                tasks: Union[None, str, Iterable[str]] = None, force: bool = False) -> dict:
    """Generate (or resume, or reuse) the mini-SUPERB corpus in ``out_dir``; return its manifest.

    The manifest maps each task to ``paths`` (absolute paths of the roots and metadata files s3prl's
    config keys take), ``files`` (counts per split) and ``dataset_dir``. ``tasks`` limits generation to
    some tasks; ``force`` deletes what this generator wrote before and starts again.
    """
    if preset not in PRESETS:
        raise CorpusError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (e.g. --preset ci)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise CorpusError(f"seed must be a non-negative integer, got {seed!r}")
    wanted = parse_tasks(tasks)
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} exists and is not a directory; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    identity = _identity(preset, seed)
    manifest_path = out / MANIFEST_NAME

    def ours(name: str) -> Optional[dict]:
        """The completion mark of data set ``name`` in OUT; raises if a folder of that name is not ours."""
        folder = out / name
        if not folder.exists():
            return None
        mark = folder / DATASET_MARK
        if not mark.is_file():
            raise CorpusError(f"{folder} exists and was not written by make-corpus, which never deletes it; "
                              "move it away or choose another output directory")
        return json.loads(mark.read_text(encoding="utf-8"))

    tmp_dir = out / _TMP_DIR
    if force:
        for name in _DATASETS:
            if ours(name) is not None:
                shutil.rmtree(out / name)
        for leftover in (tmp_dir, manifest_path):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    elif manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in identity} != identity:
            raise CorpusError(
                f"{out} already holds a corpus made with preset={old.get('preset')!r} seed={old.get('seed')!r} "
                f"(generator v{old.get('generator_version')}); pass --force (force=True) to replace it, "
                "or choose another directory")
        if all(t in old["tasks"] for t in wanted):
            LOG.info("corpus in %s is complete (preset %s, seed %d); nothing to do", out, preset, seed)
            return _resolve(old, out)

    tasks_info: Dict[str, dict] = {}
    started = time.monotonic()
    todo = [name for name, (served, _) in _DATASETS.items() if any(t in wanted for t in served)]
    with EspeakSynthesizer() as tts:
        identity["espeak_ng"] = tts.version
        for name in todo:
            mark = ours(name)
            if mark is not None:
                if mark["identity"] != identity:
                    raise CorpusError(
                        f"{out / name} was made with preset={mark['identity'].get('preset')!r} "
                        f"seed={mark['identity'].get('seed')!r}; pass --force (force=True) to replace it")
                LOG.info("%s: already generated, reusing", name)
                tasks_info.update(mark["tasks"])
                continue
            if (tmp_dir / name).exists():  # half-written by an interrupted run: discarded, never patched up
                shutil.rmtree(tmp_dir / name)
            t0 = time.monotonic()
            build = _Build(tts, seed, tmp_dir / name, name)
            build.root.mkdir(parents=True)
            info = _builder(name)(build, PRESETS[preset])
            for entry in info.values():
                entry["dataset_dir"] = name
            _atomic_json(build.root / DATASET_MARK, {"identity": identity, "tasks": info})
            os.replace(build.root, out / name)
            tasks_info.update(info)
            LOG.info("%s: %d audio files in %.1f s", name, build.files, time.monotonic() - t0)
    if tmp_dir.is_dir():
        shutil.rmtree(tmp_dir)

    if manifest_path.is_file():  # keep tasks generated by an earlier, narrower call
        tasks_info = {**json.loads(manifest_path.read_text(encoding="utf-8"))["tasks"], **tasks_info}
    manifest = {**identity, "sample_rate": SAMPLE_RATE,
                "tasks": {t: tasks_info[t] for t in TASK_NAMES if t in tasks_info}}
    _atomic_json(manifest_path, manifest)
    LOG.info("corpus (%s, seed %d) ready in %s after %.1f s", preset, seed, out, time.monotonic() - started)
    return _resolve(manifest, out)


def main(argv: Optional[List[str]] = None) -> int:
    """``lighthubert-s3prl make-corpus OUT [--preset ci|small] [--seed N] [--tasks ks,ic] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl make-corpus",
        description="Synthesise a deterministic mini-SUPERB corpus (KS, IC, ER, SID, ASV, ASR, PR, SF, SD, QbE) with "
                    "espeak-ng, in the on-disk layouts s3prl's recipes read. Offline; re-running resumes.")
    parser.add_argument("out", metavar="OUT", help="output directory (created if missing)")
    parser.add_argument("--preset", default="ci", choices=sorted(PRESETS),
                        help="size: ci (~900 files, for CI), small (a few times larger), mini (the mini-SUPERB "
                             "instrument), mini-heldout-voices (mini sizes, other talkers and pink noise) or mini-heldout "
                             "(the same, noise 10 dB stronger); default ci")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated subset of {','.join(TASK_NAMES)} (default: all)")
    parser.add_argument("--force", action="store_true", help="delete a previous corpus in OUT and regenerate")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        manifest = make_corpus(args.out, preset=args.preset, seed=args.seed, tasks=args.tasks, force=args.force)
    except CorpusError as exc:
        print(f"make-corpus: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for task, entry in manifest["tasks"].items():
            print(f"{task:4s} {entry['dataset_dir']}  files={json.dumps(entry['files'], sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
