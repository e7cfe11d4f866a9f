"""The ten public SUPERB tasks, and ready-to-run s3prl configs for them.

``TASKS[name]`` (``asr asv ks ic er pr sid sd qbe sf``) tells the batch scripts everything task-specific: the s3prl
``-d`` name, our shipped config (``downstream_configs/<task>/config.yaml`` plus ``ci.yaml`` for the
CI-scale override), the evaluation split(s), the line s3prl prints with the score, the best
checkpoint's name, the prediction file and where it goes in a leaderboard ``predict.zip``.

``build_config(task, data_root, out_path, scale)`` writes a config.yaml whose every path is absolute:
the dataset roots (from a corpus made by :func:`lighthubert_s3prl.superb.corpus.make_corpus`, or the
real data sets in their usual layouts) and our dict/vocab/lexicon/metadata files. Metadata that the
s3prl PyPI package lacks and the real corpora do not ship is generated next to the config: IEMOCAP fold
lists, LibriSpeech length tables for bucketing, the ASV speaker list. PR on real LibriSpeech uses
SUPERB's two g2p lexicons (:mod:`lighthubert_s3prl.superb.lexicon` fetches them once into the cache, or
``lexicon=[...]`` names local copies); a CMUdict lexicon serves the synthetic corpus only. ASV scores
the original VoxCeleb1-O trial list (37,720 trials), as SUPERB does; the cleaned list is refused unless
``allow_cleaned_trials=True`` says it is meant. SF takes the data set's own ``slots.txt``; SD's test data dir
holds the reference ``rttm`` its DER is scored against; QbE trains nothing (see :attr:`TaskSpec.trains`).
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .metadata import TaskConfigError, write_iemocap_meta_data, write_len_for_bucket

if TYPE_CHECKING:
    from lighthubert_s3prl.model.config import SubnetConfig

LOG = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "downstream_configs"
#: the task scales: ``full`` runs config.yaml, the others merge ``<scale>.yaml`` over it (mini: sized on the
#: ``mini`` corpus so that fbank, a distilled and a random model come out apart)
SCALE_HELP = {"full": "the SUPERB protocol", "mini": "a few minutes per task on a CPU, on a `make-corpus --preset mini` "
              "corpus; ranks models", "ci": "a few steps per task; shows the pipeline runs, ranks nothing"}
SCALES = tuple(SCALE_HELP)
ER_FOLDS = tuple(f"fold{i}" for i in range(1, 6))
# VoxCeleb1-O: the original list (s3prl's voxceleb1_test_v2.txt, the VoxCeleb site's veri_test.txt) and
# the cleaned one (veri_test2.txt), told apart by their trial counts
ORIGINAL_TRIALS = 37720
CLEANED_TRIALS = 37611
_DATARC = "downstream_expert.datarc"


def _config_root() -> Path:
    """Our configs: the repo's ``downstream_configs`` or, when installed, the packaged copy."""
    if (CONFIG_ROOT / "ks" / "config.yaml").is_file():
        return CONFIG_ROOT
    try:
        from lighthubert_s3prl import downstream_configs  # installed as package data by setup.py
    except ImportError as exc:  # pragma: no cover - broken installation
        raise TaskConfigError("cannot find downstream_configs/; reinstall lighthubert-s3prl") from exc
    return Path(downstream_configs.__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    downstream: str  # s3prl -d
    data_section: str  # dotted config path holding the data keys
    data_keys: Tuple[str, ...]  # keys under data_section that point at data (set by build_config)
    assets: Mapping[str, str]  # dotted config key -> our file in the task's config folder
    metric: str  # as printed by the recipe
    higher_is_better: bool
    result_template: str  # the printed score line, {split} is filled in
    evaluate_splits: Tuple[str, ...] = ("test",)
    dev_split: Optional[str] = "dev"
    best_ckpt: Optional[str] = "dev-best.ckpt"  # None: pick among states-*.ckpt by test score (ASV)
    prediction_file: str = "test_predict.txt"  # in the expdir; {fold} filled in for ER
    submission_file: str = ""  # path inside predict/ of a leaderboard predict.zip
    folds: Tuple[str, ...] = ()
    lr: float = 1e-4  # LightHuBERT authors' learning rate (SUPERB tunes only this)
    effective_batch: int = 32  # utterances per optimiser step on one process, as s3prl really batches them
    batch_key: str = f"{_DATARC}.train_batch_size"  # dotted config key of the training batch size
    bucket_halves: bool = False  # s3prl splits every training bucket of this task in two
    notes: str = ""
    # further printed scores kept with the result, (name, printed line with {split}): SF's slot-value CER
    extra_results: Tuple[Tuple[str, str], ...] = ()
    # who turns the test run into the number: "recipe" (the printed line), "diarization" (RTTM + DER over
    # SUPERB's threshold/median grid, :mod:`.diarization`), "qbe" (MTWV of the layer best on dev, :mod:`.qbe`)
    scored_by: str = "recipe"

    @property
    def trains(self) -> bool:
        """QbE has no downstream to train: DTW on one layer's features."""
        return self.scored_by != "qbe"

    @property
    def config_dir(self) -> Path:
        return _config_root() / self.name

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.yaml"

    def override_path(self, scale: str) -> Optional[Path]:
        """The file whose keys replace the full config's at ``scale`` (None for ``full``)."""
        return None if scale == "full" else self.config_dir / f"{scale}.yaml"

    def result_regex(self, split: Optional[str] = None, template: Optional[str] = None) -> "re.Pattern[str]":
        """The printed line ``template`` (default: the score's) for ``split``, its number captured."""
        line = re.escape((template or self.result_template).format(split=split or self.evaluate_splits[0]))
        return re.compile(rf"^{line}\s*([-+0-9.eE]+|nan|inf)\s*$", re.MULTILINE)

    def parse_result(self, text: str, split: Optional[str] = None, template: Optional[str] = None) -> Optional[float]:
        """The last score the recipe printed for ``split`` in ``text`` (a log or captured stdout)."""
        found = self.result_regex(split, template).findall(text)
        return float(found[-1]) if found else None

    def parse_extra_results(self, text: str, split: Optional[str] = None) -> Dict[str, Optional[float]]:
        """The further scores of :attr:`extra_results` printed for ``split`` (None where absent)."""
        return {name: self.parse_result(text, split, template) for name, template in self.extra_results}

    def prediction_path(self, expdir: Union[str, Path], fold: Optional[str] = None) -> Path:
        if "{fold}" in self.prediction_file and fold is None:
            raise TaskConfigError(f"{self.name}: prediction file depends on the fold; pass one of {self.folds}")
        return Path(expdir) / self.prediction_file.format(fold=fold)


TASKS: Dict[str, TaskSpec] = {
    "asr": TaskSpec(
        name="asr", title="ASR (LibriSpeech 100h, char CTC, WER %)", downstream="asr", data_section=_DATARC,
        data_keys=("libri_root", "bucket_file"), assets={f"{_DATARC}.dict_path": "char.dict"},
        metric="wer", higher_is_better=False, result_template="{split} wer:",
        evaluate_splits=("test-clean",), dev_split="dev-clean", best_ckpt="dev-clean-best.ckpt",
        prediction_file="test-clean-noLM-hyp.ark", submission_file="asr_public/predict.ark",
        # the recipe buckets by datarc.batch_size and halves every bucket whose longest utterance has more
        # than 2000 samples (its HALF_BATCHSIZE_TIME is compared with sample counts): all of LibriSpeech
        effective_batch=16, batch_key=f"{_DATARC}.batch_size", bucket_halves=True),
    "asv": TaskSpec(
        name="asv", title="ASV (VoxCeleb1-O original trials, EER fraction)", downstream="sv_voxceleb1",
        data_section=_DATARC,
        data_keys=("file_path", "train_meta_data", "dev_meta_data", "test_meta_data"), assets={},
        metric="EER", higher_is_better=False, result_template="sv-voxceleb1/{split}-EER:", dev_split=None,
        best_ckpt=None, submission_file="sv_public/predict.txt", lr=5e-5, effective_batch=50,
        notes="no dev set: evaluate every saved states-*.ckpt on test and report the best EER"),
    "ks": TaskSpec(
        name="ks", title="KS (Speech Commands v0.01, 12 classes, accuracy)", downstream="speech_commands",
        data_section=_DATARC, data_keys=("speech_commands_root", "speech_commands_test_root"), assets={},
        metric="acc", higher_is_better=True, result_template="{split} acc:",
        submission_file="ks_public/predict.txt", batch_key=f"{_DATARC}.batch_size"),
    "ic": TaskSpec(
        name="ic", title="IC (Fluent Speech Commands, accuracy)", downstream="fluent_commands",
        data_section=_DATARC, data_keys=("file_path",), assets={}, metric="acc", higher_is_better=True,
        result_template="{split} acc:", prediction_file="test_predict.csv", submission_file="ic_public/predict.csv"),
    "er": TaskSpec(
        name="er", title="ER (IEMOCAP 4 classes, 5-fold, accuracy)", downstream="emotion", data_section=_DATARC,
        data_keys=("root", "meta_data"), assets={}, metric="acc", higher_is_better=True,
        result_template="{split} acc:", prediction_file="test_{fold}_predict.txt",
        submission_file="er_{fold}_public/predict.txt", folds=ER_FOLDS,
        notes="report the mean test accuracy of the 5 folds (set test_fold=foldN per run)"),
    "pr": TaskSpec(
        name="pr", title="PR (LibriSpeech 100h, phoneme CTC, PER fraction)", downstream="ctc",
        data_section="downstream_expert.corpus", data_keys=("path", "lexicon"),
        assets={"downstream_expert.text.vocab_file": "phoneme.txt"}, metric="per", higher_is_better=False,
        result_template="{split} per:", prediction_file="test-hyp.ark", submission_file="pr_public/predict.ark",
        lr=5e-4, batch_key="downstream_expert.corpus.batch_size"),
    "sid": TaskSpec(
        name="sid", title="SID (VoxCeleb1 1,251 speakers, accuracy)", downstream="voxceleb1",
        data_section=_DATARC, data_keys=("file_path", "meta_data"), assets={}, metric="acc",
        higher_is_better=True, result_template="{split} acc:", submission_file="sid_public/predict.txt", lr=5e-3,
        notes="LightHuBERT authors: lr 5e-3 (small), 5e-2 (base), 1e-2 (stage1)"),
    "sd": TaskSpec(
        name="sd", title="SD (Libri2Mix, 2 speakers, DER %)", downstream="diarization",
        data_section="downstream_expert.loaderrc", data_keys=("train_dir", "dev_dir", "test_dir"), assets={},
        metric="der", higher_is_better=False, result_template="mode {split} acc", best_ckpt="best-states-dev.ckpt",
        prediction_file="scoring/predictions", submission_file="sd_public/scoring/predictions", lr=5e-4,
        batch_key="downstream_expert.loaderrc.train_batchsize", scored_by="diarization",
        notes="test predictions to RTTM at median {1, 11} x threshold {0.3..0.7}; the lowest DER is reported"),
    "qbe": TaskSpec(
        name="qbe", title="QbE (QUESST 2014 English, MTWV)", downstream="quesst14_dtw",
        data_section="downstream_expert.datarc", data_keys=("dataset_root",), assets={}, metric="mtwv",
        higher_is_better=True, result_template="{split} mtwv:", best_ckpt=None,
        prediction_file="benchmark.stdlist.xml", submission_file="qbe_public/benchmark.stdlist.xml",
        batch_key="downstream_expert.datarc.batch_size", scored_by="qbe",
        notes="no training: DTW on every layer on dev, the best dev layer scored on test"),
    "sf": TaskSpec(
        name="sf", title="SF (Audio SNIPS, slot-type F1 % / slot-value CER %)", downstream="ctc",
        data_section="downstream_expert.corpus", data_keys=("path",),
        assets={"downstream_expert.text.vocab_file": "character.txt"}, metric="slot_type_f1",
        higher_is_better=True, result_template="{split} slot_type_f1:", prediction_file="test-hyp.ark",
        submission_file="sf_public/predict.ark", batch_key="downstream_expert.corpus.batch_size",
        extra_results=(("slot_value_cer", "{split} slot_value_cer:"),),
        notes="SUPERB scores the mean of F1's and CER's normalised terms"),
}

# the learning rates the LightHuBERT authors used for SID, per released model (preset name)
SID_LR_BY_MODEL = {"small": 5e-3, "base": 5e-2, "stage1": 1e-2}


def get_task(task: str) -> TaskSpec:
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise TaskConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None


def sid_learning_rate(subnet: "SubnetConfig") -> Tuple[Optional[float], str]:
    """The LightHuBERT authors' SID learning rate for the model ``subnet`` is, and why.

    A released subnet gets its own rate; another subnet gets the rate of the released model of the same
    width (embed_dim), the authors' rates differing between widths. ``(None, reason)`` when no released
    model has that width.
    """
    from lighthubert_s3prl.model.config import get_preset

    presets = {name: get_preset(name) for name in SID_LR_BY_MODEL}
    for name, preset in presets.items():
        if subnet == preset:
            return SID_LR_BY_MODEL[name], f"the LightHuBERT authors' SID rate for the released {name} subnet"
    for name, preset in presets.items():
        if subnet.embed_dim == preset.embed_dim:
            return SID_LR_BY_MODEL[name], (f"the LightHuBERT authors' SID rate for {name}: the subnet run has "
                                           f"{name}'s width, embed_dim {subnet.embed_dim}")
    widths = ", ".join(f"{n} {p.embed_dim}" for n, p in presets.items())
    return None, f"no released LightHuBERT model has embed_dim {subnet.embed_dim} (released widths: {widths})"


@dataclass(frozen=True)
class BatchPlan:
    """Utterances per optimiser step: per-step batch x gradient accumulation x processes."""

    per_step: int
    accumulate: int  # gradient_accumulate_steps of the one-process protocol
    processes: int = 1

    @property
    def effective(self) -> int:
        return self.per_step * self.accumulate

    @property
    def divides(self) -> bool:
        return self.accumulate % self.processes == 0

    @property
    def accumulate_per_process(self) -> int:
        """s3prl accumulates in every DDP process: each one takes its share of the steps."""
        return self.accumulate // self.processes

    def describe(self) -> str:
        n = self.processes
        if n <= 1:
            return f"{self.per_step} per step x {self.accumulate} accumulation = {self.effective}"
        return (f"{self.per_step} per step x {self.accumulate_per_process} accumulation x {n} processes = "
                f"{self.per_step * self.accumulate_per_process * n}")


def batch_plan(task: str, scale: str = "full", overrides: Optional[Mapping[str, Any]] = None,
               processes: int = 1) -> BatchPlan:
    """The training batch of ``task``'s config (after dotted ``overrides``), run on ``processes`` GPUs."""
    spec = get_task(task)
    config = load_task_config(task, scale)
    for key, value in (overrides or {}).items():
        if "." in key:
            _set_dotted(config, key, value)
    per_step = int(_get_dotted(config, spec.batch_key))
    if spec.bucket_halves and per_step >= 2:
        per_step //= 2
    return BatchPlan(per_step, int(config["runner"]["gradient_accumulate_steps"]), max(1, processes))


# ----------------------------------------------------------------------------------------------------
# locating data


def _first_dir(candidates: Sequence[Path], test: Callable[[Path], bool]) -> Optional[Path]:
    return next((c.resolve() for c in candidates if c.is_dir() and test(c)), None)


def _corpus_lexicon(libri: Path) -> Optional[List[str]]:
    """The synthetic corpus's lexicon when ``libri`` is its LibriSpeech folder (its manifest is one up)."""
    from .corpus import load_manifest

    manifest = load_manifest(libri.parent)
    entry = (manifest or {}).get("tasks", {}).get("pr")
    if entry and Path(entry["paths"]["path"]).resolve() == libri.resolve():
        return [entry["paths"]["lexicon"]]
    return None


def _superb_lexicons() -> List[str]:
    from .lexicon import superb_lexicons

    return superb_lexicons()


def count_trials(path: Union[str, Path]) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.strip())


def check_trial_list(path: Union[str, Path], allow_cleaned: bool = False) -> int:
    """Refuse the cleaned VoxCeleb1-O list unless asked for; return the number of trials."""
    trials = count_trials(path)
    if trials == CLEANED_TRIALS and not allow_cleaned:
        raise TaskConfigError(
            f"asv: {path} holds {trials:,} trials, the cleaned VoxCeleb1-O list (veri_test2.txt). SUPERB and s3prl "
            f"score the original list of {ORIGINAL_TRIALS:,} trials (s3prl's voxceleb1_test_v2.txt, the VoxCeleb "
            "site's veri_test.txt) and the leaderboard scores only the pairs in predict.txt, so an EER on the "
            "cleaned list is not comparable. Put veri_test.txt in the VoxCeleb1 folder or pass "
            "test_meta_data=PATH to it; to use the cleaned list on purpose pass allow_cleaned_trials=True "
            "(run_superb.sh --asv-cleaned-trials)")
    return trials


def _missing(task: str, data_root: Path, expected: str) -> TaskConfigError:
    return TaskConfigError(
        f"{task}: {data_root} does not hold {expected}. Point data_root at the real data set, or create a "
        f"synthetic one with `lighthubert-s3prl make-corpus {data_root} --preset ci --tasks {task}`")


def _locate(out: Dict[str, Any], key: str, task: str, root: Path, candidates: Sequence[Path],
            test: Callable[[Path], bool], expected: str) -> None:
    """Set ``out[key]`` to the first candidate folder passing ``test``, unless the caller gave it."""
    if key in out:
        return
    found = _first_dir(candidates, test)
    if found is None:
        raise _missing(task, root, expected)
    out[key] = str(found)


def _resolve_real(spec: TaskSpec, root: Path, given: Dict[str, Any], assets: Path,
                  config: dict) -> Dict[str, Any]:
    """Data keys for a real data set under ``root`` (values in ``given`` win and are not searched)."""
    name, out = spec.name, dict(given)
    if name == "ks":
        if "speech_commands_root" not in out:
            found = _first_dir([root / "speech_commands_v0.01", root / "train", root],
                               lambda d: (d / "_background_noise_").is_dir())
            if found is None:
                raise _missing(name, root, "a Speech Commands v0.01 train root (word folders + _background_noise_)")
            out["speech_commands_root"] = str(found)
        if "speech_commands_test_root" not in out:
            found = _first_dir([root / "speech_commands_test_set_v0.01", root / "test"],
                               lambda d: (d / "_silence_").is_dir())
            if found is None:
                raise _missing(name, root, "the Speech Commands v0.01 test set (folders incl. _silence_); pass "
                                           "speech_commands_test_root=PATH if it lives elsewhere")
            out["speech_commands_test_root"] = str(found)
    elif name == "ic":
        _locate(out, "file_path", name, root, [root, root / "fluent_speech_commands_dataset"],
                lambda d: (d / "data" / "train_data.csv").is_file(), "Fluent Speech Commands (data/train_data.csv and wavs/)")
    elif name == "er":
        _locate(out, "root", name, root, [root, root / "IEMOCAP_full_release", root / "IEMOCAP"],
                lambda d: (d / "Session1").is_dir(), "IEMOCAP (IEMOCAP_full_release with Session1..5)")
        if "meta_data" not in out:
            shipped = Path(out["root"]) / "meta_data"
            if (shipped / "Session1" / "train_meta_data.json").is_file():
                out["meta_data"] = str(shipped)
            else:
                out["meta_data"] = str(write_iemocap_meta_data(out["root"], assets / "meta_data"))
    elif name in ("sid", "asv"):
        found = _first_dir([root, root / "VoxCeleb1"], lambda d: (d / "dev" / "wav").is_dir() or (d / "test" / "wav").is_dir())
        if "file_path" not in out and found is None:
            raise _missing(name, root, "VoxCeleb1 (dev/wav/idXXXXX/... and test/wav/idXXXXX/...)")
        vox = Path(out.setdefault("file_path", str(found)))

        def list_file(key: str, names: Sequence[str], what: str) -> None:
            if key in out:
                return
            hit = next((d / n for n in names for d in (vox, root) if (d / n).is_file()), None)
            if hit is None:
                raise TaskConfigError(
                    f"{name}: no {what} ({' or '.join(names)}) in {vox}; download it from the VoxCeleb1 site into "
                    f"that folder or pass {key}=PATH")
            out[key] = str(hit.resolve())

        if name == "sid":
            list_file("meta_data", ["iden_split.txt", "veri_test_class.txt"], "identification split list")
        else:
            list_file("test_meta_data", ["voxceleb1_test_v2.txt", "veri_test.txt"],
                      f"original VoxCeleb1-O trial list ({ORIGINAL_TRIALS:,} trials)")
            # parsed at start-up but never scored (SUPERB's ASV has no dev set): any trial list will do
            out.setdefault("dev_meta_data", str(vox / "veri_dev.txt") if (vox / "veri_dev.txt").is_file()
                           else out["test_meta_data"])
            if "train_meta_data" not in out and (vox / "dev_speaker_ids.txt").is_file():
                out["train_meta_data"] = str(vox / "dev_speaker_ids.txt")
            if "train_meta_data" not in out:  # unused by the loader, which trains on all of dev/wav
                ids = sorted(p.name for p in (vox / "dev" / "wav").iterdir() if p.is_dir())
                path = assets / "dev_speaker_ids.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
                out["train_meta_data"] = str(path)
    elif name == "sf":
        _locate(out, "path", name, root, [root, root / "SNIPS"], lambda d: (d / "all.iob.snips.txt").is_file(),
                "SUPERB's Audio SNIPS (all.iob.snips.txt, slots.txt, train/ valid/ test/)")
    elif name == "sd":
        found = _first_dir([root, root / "data", root / "diarization" / "data"],
                           lambda d: all((d / s / "segments").is_file() for s in ("train", "dev", "test")))
        if found is None and not all(k in out for k in spec.data_keys):
            raise _missing(name, root, "Libri2Mix diarization data dirs train/ dev/ test/ (wav.scp, segments, "
                                       "utt2spk, reco2dur, rttm; written by SUPERB's LibriMix prepare_diarization.py)")
        for split in ("train", "dev", "test"):
            out.setdefault(f"{split}_dir", str(found / split) if found else None)
            _check_wav_scp(Path(out[f"{split}_dir"]))
    elif name == "qbe":
        _locate(out, "dataset_root", name, root, [root, root / "quesst14Database"],
                lambda d: (d / "scoring" / "language_key_utterances.lst").is_file(),
                "the QUESST 2014 database (Audio/, dev_queries/, eval_queries/, scoring/)")
    elif name in ("asr", "pr"):
        key = "libri_root" if name == "asr" else "path"
        found = _first_dir([root, root / "LibriSpeech"], lambda d: (d / "train-clean-100").is_dir())
        if key not in out and found is None:
            raise _missing(name, root, "LibriSpeech (train-clean-100, dev-clean, test-clean)")
        libri = Path(out.setdefault(key, str(found)))
        if name == "asr" and "bucket_file" not in out:
            section = config["downstream_expert"]["datarc"]
            # every split the config can train or evaluate on that is present (test-other is optional)
            splits = sorted({s for k in ("train", "dev-clean", "dev-other", "test-clean", "test-other")
                             for s in section.get(k, []) if k in ("train", "dev-clean") or (libri / s).is_dir()})
            have = next((d for d in (libri / "len_for_bucket", root / "len_for_bucket")
                         if all((d / f"{s}.csv").is_file() for s in splits)), None)
            if have is None:
                LOG.info("asr: writing LibriSpeech length tables for %s (one pass over the headers)", splits)
                have = write_len_for_bucket(libri, assets / "len_for_bucket", splits)
            out["bucket_file"] = str(have)
        if name == "pr" and "lexicon" not in out:
            out["lexicon"] = _corpus_lexicon(libri) or _superb_lexicons()
    return out


def _check_wav_scp(data_dir: Path) -> None:
    """SD's loader opens wav.scp paths as written, from the directory s3prl runs in: they must be absolute."""
    scp = data_dir / "wav.scp"
    if not scp.is_file():
        if not (data_dir / "wav").is_dir():
            raise TaskConfigError(f"sd: {data_dir} has neither wav.scp nor a wav/ folder of recordings")
        return
    for n, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split(None, 1)
        if len(parts) == 2 and not parts[1].rstrip().endswith("|") and not Path(parts[1].strip()).is_absolute():
            raise TaskConfigError(f"sd: {scp}:{n} names {parts[1].strip()!r}, a relative path, which s3prl would "
                                  "open from its working directory (the exp root); write absolute paths into wav.scp")


def _resolve_corpus(spec: TaskSpec, manifest: dict, given: Dict[str, Any]) -> Dict[str, Any]:
    entry = manifest["tasks"].get(spec.name)
    if entry is None:
        raise TaskConfigError(
            f"the corpus in {manifest['root']} has no {spec.name} data (it holds {', '.join(manifest['tasks'])}); "
            f"add it with `lighthubert-s3prl make-corpus {manifest['root']} --preset {manifest['preset']} "
            f"--seed {manifest['seed']} --tasks {spec.name}`")
    out = dict(given)
    for key, value in entry["paths"].items():
        out.setdefault(key, [value] if key == "lexicon" else value)
    return out


# ----------------------------------------------------------------------------------------------------
# config building


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TaskConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _get_dotted(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def load_task_config(task: str, scale: str = "full") -> dict:
    """Our config for ``task`` as a dict, with the ``scale``'s override applied, paths unset."""
    spec = get_task(task)
    if scale not in SCALES:
        choices = "; ".join(f"{name!r} ({what})" for name, what in SCALE_HELP.items())
        raise TaskConfigError(f"unknown scale {scale!r}; use one of {choices}")
    config = yaml.safe_load(spec.config_path.read_text(encoding="utf-8"))
    override = spec.override_path(scale)
    if override is not None:
        if not override.is_file():
            raise TaskConfigError(f"{task} has no {scale!r} scale: {override} is missing; run {task} at another "
                                  f"scale or write that file (keys that replace {spec.config_path.name}'s)")
        _merge(config, yaml.safe_load(override.read_text(encoding="utf-8")) or {})
    return config


_ALIASES = {"lr": "optimizer.lr", "total_steps": "runner.total_steps"}


def _absolute_data_value(key: str, value: Any) -> Any:
    if key == "lexicon":  # a list of files
        values = [value] if isinstance(value, (str, Path)) else list(value)
        return [str(Path(v).expanduser().resolve()) for v in values]
    return str(Path(value).expanduser().resolve())


def build_config(task: str, data_root: Union[str, Path], out_path: Union[str, Path], scale: str = "full",
                 allow_cleaned_trials: bool = False, **overrides: Any) -> Path:
    """Write a ready-to-run s3prl config.yaml for ``task`` to ``out_path`` and return its path.

    ``data_root`` is a corpus made by ``make_corpus`` or the real data set (or a folder holding it under
    its usual name). ``overrides``: any data key of the task (e.g. ``meta_data=PATH`` for SID's
    iden_split.txt, ``lexicon=[...]`` for PR, ``test_meta_data=PATH`` for ASV), ``lr``, ``total_steps``,
    ``test_fold`` (ER), or a dotted config path passed as ``**{"runner.eval_step": 500}``. Generated
    metadata goes to ``<out_path's folder>/assets/<task>/``. ASV refuses the cleaned VoxCeleb1-O trial
    list unless ``allow_cleaned_trials``.
    """
    spec = get_task(task)
    config = load_task_config(task, scale)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise TaskConfigError(
            f"{task}: data root {root} does not exist; create a mini corpus there with "
            f"`lighthubert-s3prl make-corpus {root} --preset ci`, or pass the folder of the real data set")
    root = root.resolve()
    out_path = Path(out_path).expanduser().resolve()

    given: Dict[str, Any] = {}  # data keys the caller fixed: used as they are, never searched for
    dotted: Dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "slots_file" and task == "sf":
            continue  # placed after the data is located
        if key == "test_fold":
            if value not in spec.folds:
                raise TaskConfigError(f"{task}: test_fold must be one of {', '.join(spec.folds) or '(no folds)'}; "
                                      f"got {value!r}")
            key = f"{_DATARC}.test_fold"
        key = _ALIASES.get(key, key)
        section, _, leaf = key.rpartition(".")
        if key in spec.data_keys or (section == spec.data_section and leaf in spec.data_keys):
            given[leaf or key] = _absolute_data_value(leaf or key, value)
        elif "." in key:
            dotted[key] = value
        else:
            raise TaskConfigError(
                f"{task}: unknown override {key!r}; use one of {', '.join(spec.data_keys)}, lr, total_steps"
                f"{', test_fold' if spec.folds else ''}, or a dotted config path like runner.eval_step")

    for key, value in dotted.items():  # before locating data: they may change which splits are used
        _set_dotted(config, key, value)

    from .corpus import load_manifest

    manifest = load_manifest(root)
    assets = out_path.parent / "assets" / task
    data = (_resolve_corpus(spec, manifest, given) if manifest is not None
            else _resolve_real(spec, root, given, assets, config))
    if task == "asv":
        check_trial_list(data["test_meta_data"], allow_cleaned_trials)
    for key in spec.data_keys:
        _set_dotted(config, f"{spec.data_section}.{key}", data[key])
    for key, filename in spec.assets.items():
        _set_dotted(config, key, str(spec.config_dir / filename))
    if task == "sf":  # the slot list belongs to the data set; the tokenizer reads it from the text section
        slots = Path(overrides.get("slots_file") or Path(data["path"]) / "slots.txt")
        if not slots.is_file():
            raise TaskConfigError(f"sf: {slots} is missing; SUPERB's SNIPS folder holds slots.txt (pass "
                                  "slots_file=PATH if yours lives elsewhere)")
        _set_dotted(config, "downstream_expert.text.slots_file", str(slots.resolve()))

    from lighthubert_s3prl.io_utils import atomic_write_text

    header = (f"# s3prl -d {spec.downstream} config for {spec.title}\n"
              f"# written by lighthubert_s3prl.superb.tasks.build_config(scale={scale!r}) for {root}\n")
    atomic_write_text(out_path, header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
    return out_path
