"""In-process fixes that let s3prl 0.4.18's SUPERB recipes run on a fresh CPU machine (torch 2.8).

Nothing in site-packages is edited; :func:`apply` swaps a few attributes in this process:

* ``sv_voxceleb1`` (ASV) moves its attention mask with a hard-coded ``.cuda()``: on a model that is not
  on a GPU, ``.cuda()`` is redirected to the features' device for the duration of that forward only.
* ``sv_voxceleb1`` caches trimmed wav lengths in ``<site-packages>/.../.wav_lengths/Voxceleb1_length.pt``
  (read-only on many installs) under one fixed key, so a second data set silently reuses the first
  one's list. The cache moves to our cache dir, keyed by the wav tree's paths, sizes and mtimes, and
  small trees are measured in-process instead of in 12 joblib workers.
* ``voxceleb1`` (SID) caches its path lists in ``<site-packages>/.../.cache/{train,dev,test}.pkl`` under
  no key at all. It moves to our cache dir, keyed by data root and split file.
* ``speech_commands`` (KS), ``sv_voxceleb1`` and ``quesst14_dtw`` (QbE) read audio through ``torchaudio.sox_effects``, which needs
  the system libsox (``apt-get install libsox-dev``). Without it, a soundfile/soxr implementation of
  the effects they use (channels 1, rate, gain, and the ``silence`` trim) stands in; on the corpus and on
  synthetic pauses it gives the same samples as libsox 14.4.2 (the tests compare where libsox exists).
  ``LIGHTHUBERT_S3PRL_SOX=python`` forces it, ``=sox`` insists on libsox.
* ``ctc`` (PR with ``libriphone``, SF with ``snips``) imports ``downstream/ctc/corpus/``, which the PyPI
  package does not ship. Implementations of both data sets are registered under those module names
  (SNIPS: :mod:`.snips_dataset`).
* Recipes with a dev set save ``<dev>-best.ckpt`` only when a score strictly beats the metric's bound
  (accuracy 0, WER 100), so short runs can end without the checkpoint SUPERB tests; the first dev
  evaluation now always counts as the best so far.
* ``run_downstream.main()`` wraps ``builtins.isinstance`` again on every call; it now does so once.

Caches go to ``apply(cache_dir=...)``, else ``$LIGHTHUBERT_S3PRL_CACHE``, else
``~/.cache/lighthubert_s3prl``. Checkpoint loading with torch>=2.6 (``argparse.Namespace`` in ``-e`` checkpoints) is left to the
launcher, which calls ``torch.serialization.add_safe_globals``.
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lighthubert_s3prl.io_utils import cache_root

from .bucketed_dataset import BucketedDataset

LOG = logging.getLogger(__name__)

_STATE: Dict[str, object] = {"applied": False, "cache_dir": None, "sox": None, "patched": set()}
_MARK = "_lighthubert_s3prl_patch"  # set on every function we install, so nothing is wrapped twice


def default_cache_dir() -> Path:
    """``$LIGHTHUBERT_S3PRL_CACHE``, else ``$XDG_CACHE_HOME/lighthubert_s3prl``, else ~/.cache/..."""
    return cache_root()


def _marked(fn: Callable) -> Callable:
    setattr(fn, _MARK, True)
    return fn


def _is_marked(fn: object) -> bool:
    return bool(getattr(fn, _MARK, False))


# ----------------------------------------------------------------------------------------------------
# SoX effects without libsox


def sox_available() -> bool:
    """Whether torchaudio's SoX effects work here (needs the system libsox)."""
    try:
        from torchaudio.sox_effects import apply_effects_tensor

        apply_effects_tensor(torch.zeros(1, 160), 16000, [["gain", "0"]])
        return True
    except Exception:  # OSError (no libsox.so), RuntimeError, ImportError on torchaudio>=2.9
        return False


def _use_sox() -> bool:
    """Decided once per process; ``LIGHTHUBERT_S3PRL_SOX=python`` forces the fallback, ``=sox`` libsox."""
    if _STATE["sox"] is None:
        choice = os.environ.get("LIGHTHUBERT_S3PRL_SOX", "auto").lower()
        if choice not in ("auto", "sox", "python"):
            raise ValueError(f"LIGHTHUBERT_S3PRL_SOX must be auto, sox or python; got {choice!r}")
        _STATE["sox"] = choice == "sox" or (choice == "auto" and sox_available())
        if not _STATE["sox"]:
            LOG.warning("libsox not available: KS/ASV audio effects use the soundfile/soxr fallback "
                        "(install libsox-dev for SoX's own silence trimming)")
    return bool(_STATE["sox"])


def _seconds_or_samples(text: str, rate: int) -> int:
    if text.endswith("s"):
        return int(float(text[:-1]))
    if ":" in text:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
        return int(round(seconds * rate))
    return int(round(float(text) * rate))


def _threshold(text: str) -> float:
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    if text.endswith("d"):
        return 10 ** (float(text[:-1]) / 20)
    return float(text)


def _first_run(mask: np.ndarray, length: int) -> Optional[int]:
    """Index where ``mask`` first stays True for ``length`` samples in a row, or None."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    hits = np.flatnonzero(ends - starts >= max(1, length))
    return int(starts[hits[0]]) if hits.size else None


def _silence(x: np.ndarray, rate: int, args: Sequence[str]) -> np.ndarray:
    """SoX ``silence 1 DUR THR [-N DUR THR]`` (what the ASV recipe uses), as SoX's state machine does it.

    SoX judges loudness by the RMS of the last 20 ms (a window that starts, and restarts, full of
    zeros). Output begins once DUR samples in a row are loud; in the copy phase a quiet stretch of DUR
    samples is dropped and, with a negative period count, the search for sound starts over with a
    cleared window; shorter pauses are kept. Evaluated run by run rather than sample by sample.
    """
    if len(args) not in (3, 6) or args[0] != "1" or (len(args) == 6 and not args[3].startswith("-")):
        raise NotImplementedError(f"silence {' '.join(args)}: only 'silence 1 DUR THR [-N DUR THR]' has a "
                                  "fallback; install libsox (apt-get install libsox-dev)")
    n = x.shape[1]
    window = max(1, rate // 50)
    csum = np.concatenate(([0.0], np.cumsum((x.astype(np.float64) ** 2).sum(axis=0))))
    start_need, start_thr = _seconds_or_samples(args[1], rate), _threshold(args[2])
    stop_need, stop_thr = ((_seconds_or_samples(args[4], rate), _threshold(args[5])) if len(args) == 6
                           else (0, 0.0))
    keep = np.zeros(n, dtype=bool)
    cleared = 0  # where the RMS window was last emptied
    while cleared < n:
        idx = np.arange(cleared, n)
        rms = np.sqrt((csum[idx + 1] - csum[np.maximum(cleared, idx + 1 - window)]) / window)
        # SoX keeps the RMS as a 32-bit integer sample and compares it, as a fraction of full scale, with ">"
        level = np.floor(rms * 2.0 ** 31) / (2.0 ** 31 - 1)
        loud = _first_run(level > start_thr, start_need)
        if loud is None:
            break  # the rest is silence
        if not stop_need:
            keep[cleared + loud:] = True
            break
        quiet = _first_run(level[loud:] <= stop_thr, stop_need)
        if quiet is None:
            keep[cleared + loud:] = True  # short trailing pauses are flushed at the end
            break
        keep[cleared + loud: cleared + loud + quiet] = True
        cleared += loud + quiet + stop_need
    return x[:, keep]


def apply_effects_file_fallback(path: Union[str, Path], effects: Sequence[Sequence[str]], normalize: bool = True,
                                channels_first: bool = True, format: Optional[str] = None) -> Tuple[torch.Tensor, int]:
    """Stand-in for ``torchaudio.sox_effects.apply_effects_file`` covering the effects the recipes use."""
    import soundfile

    if not normalize:
        raise NotImplementedError("normalize=False needs libsox (apt-get install libsox-dev)")
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True, format=format)
    x = data.T  # (channels, frames), like torchaudio
    for effect in effects:
        name, *args = [str(a) for a in effect]
        if name == "channels":
            if int(args[0]) != 1:
                raise NotImplementedError("only 'channels 1' has a fallback; install libsox-dev")
            x = x.mean(axis=0, keepdims=True)
        elif name == "rate":
            target = int(float(args[-1].rstrip("k")) * (1000 if args[-1].endswith("k") else 1))
            if target != rate:
                import soxr

                x = soxr.resample(x.T, rate, target, quality="VHQ").T
                rate = target
        elif name == "gain" and len(args) == 1:
            x = x * np.float32(10 ** (float(args[0]) / 20))
        elif name == "silence":
            x = _silence(x, rate, args)
        else:
            raise NotImplementedError(f"SoX effect {effect!r} has no fallback; install libsox (apt-get install "
                                      "libsox-dev)")
    out = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (out if channels_first else out.t().contiguous()), rate


def _patch_sox(module: types.ModuleType) -> None:
    if not _use_sox() and not _is_marked(getattr(module, "apply_effects_file", None)):
        module.apply_effects_file = _marked(apply_effects_file_fallback)


# ----------------------------------------------------------------------------------------------------
# ASV: .cuda() and the trimmed-length cache


@contextlib.contextmanager
def _cuda_calls_go_to(device: torch.device) -> Iterator[None]:
    """Make ``tensor.cuda()`` mean ``tensor.to(device)`` inside the block (restored afterwards)."""
    own = "cuda" in torch.Tensor.__dict__
    saved = torch.Tensor.__dict__.get("cuda")
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor.to(device)
    try:
        yield
    finally:
        if own:
            torch.Tensor.cuda = saved
        else:
            del torch.Tensor.cuda


def _patch_sv_device(expert_module: types.ModuleType) -> None:
    cls = expert_module.DownstreamExpert
    if _is_marked(cls.forward):
        return
    original = cls.forward

    @functools.wraps(original)
    def forward(self, mode, features, *args, **kwargs):
        device = features[0].device if len(features) else torch.device("cpu")
        if device.type == "cuda":
            return original(self, mode, features, *args, **kwargs)
        with _cuda_calls_go_to(device):
            return original(self, mode, features, *args, **kwargs)

    cls.forward = _marked(forward)


_AUDIO_SUFFIXES = (".aac", ".au", ".flac", ".m4a", ".mp3", ".ogg", ".wav")  # what librosa's find_files lists


def _tree_fingerprint(root: Path) -> Tuple[str, int]:
    """Hash of every audio file's relative path, size and mtime under ``root``, and the file count."""
    digest, count = hashlib.sha1(str(root.resolve()).encode()), 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(_AUDIO_SUFFIXES):
                st = os.stat(os.path.join(dirpath, name))
                digest.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}|{st.st_size}|{st.st_mtime_ns}\n"
                              .encode())
                count += 1
    return digest.hexdigest()[:16], count


def _patch_sv_length_cache(dataset_module: types.ModuleType) -> None:
    cls = dataset_module.SpeakerVerifi_train
    if _is_marked(cls.__init__):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, vad_config, key_list, file_path, meta_data, max_timestep=None, n_jobs=12):
        keys, total = [], 0
        effects = "sox" if _use_sox() else "fallback"
        for key, root in zip(key_list, file_path):
            fingerprint, count = _tree_fingerprint(Path(root))
            folder = _cache_dir() / "sv_voxceleb1" / f"{fingerprint}-{effects}"
            folder.mkdir(parents=True, exist_ok=True)
            # the recipe builds Path(<its dir>) / ".wav_lengths" / f"{key}_length.pt"; an absolute key wins
            keys.append(str(folder / key))
            total += count
        if total < 2000:  # spawning 12 workers costs more than measuring a small tree here
            n_jobs = 1
        else:
            n_jobs = max(1, min(n_jobs, os.cpu_count() or 1))
        original(self, vad_config, keys, file_path, meta_data, max_timestep, n_jobs)

    cls.__init__ = _marked(__init__)


# ----------------------------------------------------------------------------------------------------
# every recipe with a dev set: the first evaluation is the best so far


def _patch_first_dev_is_best(expert_module: types.ModuleType, higher_is_better: Optional[bool]) -> None:
    """Start ``best_score`` at the worst value, so the first dev evaluation always writes <dev>-best.ckpt.

    s3prl starts it at the metric's bound (accuracy 0, WER 100, ...) and saves only on a strict
    improvement, so a short run that stays at the bound (IC at 0 %, CTC emitting only blanks) ends
    without the checkpoint that SUPERB evaluates. ``higher_is_better=None``: the expert says
    (``metric_higher_better``, the ctc recipe).
    """
    cls = expert_module.DownstreamExpert
    if _is_marked(cls.__init__):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        higher = self.metric_higher_better if higher_is_better is None else higher_is_better
        self.best_score.fill_(-float("inf") if higher else float("inf"))

    cls.__init__ = _marked(__init__)


# ----------------------------------------------------------------------------------------------------
# SID: path-list cache


def _patch_sid_cache(dataset_module: types.ModuleType) -> None:
    cls = dataset_module.SpeakerClassifiDataset
    if _is_marked(cls.__init__):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, mode, file_path, meta_data, max_timestep=None):
        meta = Path(meta_data)
        st = meta.stat()
        key = hashlib.sha1(f"{Path(file_path).resolve()}|{meta.resolve()}|{st.st_size}|{st.st_mtime_ns}"
                           .encode()).hexdigest()[:16]
        # the recipe reads the module-level CACHE_PATH when it builds "<CACHE_PATH>/<mode>.pkl"
        dataset_module.CACHE_PATH = str(_cache_dir() / "voxceleb1" / key) + os.sep
        original(self, mode, file_path, meta_data, max_timestep)

    cls.__init__ = _marked(__init__)


# ----------------------------------------------------------------------------------------------------
# PR: the LibriSpeech phoneme dataset missing from the PyPI package


class LibriPhoneDataset(BucketedDataset):
    """LibriSpeech utterances as phoneme-id sequences, for s3prl's ``ctc`` recipe (corpus ``libriphone``).

    Same interface as the recipe expects: ``(split_names, tokenizer, bucket_size, path, lexicon)``;
    items are ``(flac_path, token_ids)``, or lists of ``bucket_size`` such pairs of similar length
    (sorted longest first) when bucketing.
    """

    def __init__(self, split: Sequence[str], tokenizer, bucket_size: int, path: str, lexicon: Sequence[str],
                 ascending: bool = False, **kwargs) -> None:
        pronunciations: Dict[str, List[str]] = {}
        for lexicon_file in lexicon:
            with open(lexicon_file, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    word, *phones = line.split() or [None]
                    if word is None:
                        continue
                    unknown = [p for p in phones if tokenizer.vocab_to_idx(p) == tokenizer.unk_idx]
                    if unknown:
                        raise ValueError(f"{lexicon_file}:{n}: {unknown} are not in the phoneme vocabulary")
                    pronunciations.setdefault(word, phones)  # the first pronunciation wins, deterministically

        files: List[Path] = []
        for name in split:
            found = sorted(Path(path, name).rglob("*.flac"))
            if not found:
                raise FileNotFoundError(f"no .flac files under {Path(path, name)}; check corpus.path")
            files += found
        words_of: Dict[str, List[str]] = {}
        for trans in sorted({f.with_name(f.stem.rsplit("-", 1)[0] + ".trans.txt") for f in files}):
            for line in trans.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    utt, *words = line.split()
                    words_of[utt] = words
        tokens = []
        for f in files:
            if f.stem not in words_of:
                raise KeyError(f"{f.stem} has no transcript line in {f.parent}")
            missing = sorted({w for w in words_of[f.stem] if w not in pronunciations})
            if missing:
                raise KeyError(f"{f.stem}: {missing} are in no lexicon file ({', '.join(map(str, lexicon))})")
            phones = [p for w in words_of[f.stem] for p in pronunciations[w]]
            tokens.append(tokenizer.encode(" ".join(phones)))
        super().__init__(files, tokens, bucket_size, ascending)


def _provide_ctc_corpus() -> None:
    name = "s3prl.downstream.ctc.corpus"
    if f"{name}.libriphone" in sys.modules:
        return
    try:
        if importlib.util.find_spec(f"{name}.libriphone") is not None:
            return  # a git checkout of s3prl has the real one
    except ModuleNotFoundError:
        pass
    from .snips_dataset import SnipsDataset

    package = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, None, is_package=True))
    package.__doc__ = "Stand-in for s3prl's ctc/corpus package, which the PyPI package does not ship"
    sys.modules[name] = package
    for corpus, cls in (("libriphone", LibriPhoneDataset), ("snips", SnipsDataset)):
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"{name}.{corpus}", None))
        setattr(module, cls.__name__, cls)
        setattr(package, corpus, module)
        sys.modules[module.__name__] = module
    importlib.import_module("s3prl.downstream.ctc").corpus = package


# ----------------------------------------------------------------------------------------------------
# process-wide fixes and wiring


def _once(hack: Callable[[], None]) -> Callable[[], None]:
    if _is_marked(hack):
        return hack

    def hack_once() -> None:
        if not _is_marked(builtins.isinstance):
            hack()
            _marked(builtins.isinstance)

    return _marked(hack_once)


def _fix_isinstance_hack() -> None:
    from s3prl.utility import helper

    helper.hack_isinstance = _once(helper.hack_isinstance)
    run_downstream = sys.modules.get("s3prl.run_downstream")
    if run_downstream is not None:  # it bound the name at import
        run_downstream.hack_isinstance = helper.hack_isinstance


def _shim_audio_backend() -> None:
    import torchaudio

    if not hasattr(torchaudio, "set_audio_backend"):  # removed in torchaudio 2.9; s3prl still calls it
        torchaudio.set_audio_backend = lambda backend=None: None


def _cache_dir() -> Path:
    if _STATE["cache_dir"] is None:
        _STATE["cache_dir"] = default_cache_dir()
    return Path(_STATE["cache_dir"])


_first_dev_is_best_acc = functools.partial(_patch_first_dev_is_best, higher_is_better=True)

_DOWNSTREAM_PATCHES: Dict[str, List[Tuple[str, Callable[[types.ModuleType], None]]]] = {
    "sv_voxceleb1": [("expert", _patch_sv_device), ("dataset", _patch_sv_length_cache), ("dataset", _patch_sox)],
    "speech_commands": [("dataset", _patch_sox), ("expert", _first_dev_is_best_acc)],
    "voxceleb1": [("dataset", _patch_sid_cache), ("expert", _first_dev_is_best_acc)],
    "fluent_commands": [("expert", _first_dev_is_best_acc)],
    "emotion": [("expert", _first_dev_is_best_acc)],
    "asr": [("expert", functools.partial(_patch_first_dev_is_best, higher_is_better=False))],  # WER
    "ctc": [("expert", functools.partial(_patch_first_dev_is_best, higher_is_better=None))],
    "diarization": [("expert", _first_dev_is_best_acc)],  # best-states-dev.ckpt, chosen by frame accuracy
    "quesst14_dtw": [("dataset", _patch_sox)],
}


def patch_downstream(name: str) -> None:
    """Apply the fixes for one s3prl downstream (``-d`` name) now; no-op for recipes that need none."""
    if name == "ctc":
        _provide_ctc_corpus()
    for submodule, patch in _DOWNSTREAM_PATCHES.get(name, []):
        patch(importlib.import_module(f"s3prl.downstream.{name}.{submodule}"))
    _STATE["patched"].add(name)


def _hook_runner() -> None:
    """Patch each recipe right before s3prl's Runner imports it, so unused recipes are never imported."""
    from s3prl.downstream import runner

    original = runner.Runner._get_downstream
    if _is_marked(original):
        return

    @functools.wraps(original)
    def _get_downstream(self):
        patch_downstream(self.args.downstream)
        return original(self)

    runner.Runner._get_downstream = _marked(_get_downstream)


def apply(cache_dir: Union[None, str, Path] = None) -> None:
    """Install every fix in this process (idempotent). Call before ``s3prl.run_downstream.main()``.

    ``cache_dir`` receives the recipes' path and length caches (default :func:`default_cache_dir`).
    """
    if cache_dir is not None:
        _STATE["cache_dir"] = Path(cache_dir).expanduser()
    if _STATE["applied"]:
        return
    _shim_audio_backend()
    _fix_isinstance_hack()
    _provide_ctc_corpus()  # cheap, and lets callers import it before any Runner exists
    _hook_runner()
    for name in _DOWNSTREAM_PATCHES:  # recipes imported before apply() are patched now
        if any(m.startswith(f"s3prl.downstream.{name}.") for m in list(sys.modules)):
            patch_downstream(name)
    _STATE["applied"] = True
    LOG.debug("s3prl recipe patches applied (cache dir %s)", _cache_dir())
