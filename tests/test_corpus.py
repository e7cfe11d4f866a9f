"""The synthetic mini-SUPERB corpus: determinism, resumability, errors, and layouts s3prl reads as-is."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from lighthubert_s3prl.superb import corpus
from lighthubert_s3prl.superb._espeak import EspeakSynthesizer, SynthRequest
from lighthubert_s3prl.superb.corpus import CorpusError, make_corpus



@pytest.fixture(scope="session")
def ci_corpus(tmp_path_factory) -> dict:
    """The ci corpus, shared with test_superb_tasks.py through the same directory (generation resumes).
    Generating it takes about 5 s on an idle 2-core machine; no time limit is asserted (a busy machine is
    no bug)."""
    return make_corpus(tmp_path_factory.getbasetemp() / "mini_superb_ci", "ci", seed=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# engine and determinism

# sha256 prefixes of the raw int16 output of espeakng-loader 0.2.4 (libespeak-ng 1.52.0); a different
# wheel gives different (still deterministic) audio, which this catches before any corpus is compared
GOLDEN_SYNTH = [
    (SynthRequest("yes", "en-US"), 30128, "927d70adb3666b6d"),
    (SynthRequest("turn on the lights in the kitchen", "en-GB-x-rp+f3", rate=160, pitch=60, pitch_range=70),
     84586, "864e58b88bdef627"),
    (SynthRequest("the meeting starts at nine tomorrow", "en-029+m3", rate=120, pitch=35, pitch_range=12,
                  word_gap=3), 158502, "4d92f1df5849d7b1"),
]


def test_espeak_output_matches_golden_checksums_in_any_order():
    requests = [r for r, _, _ in GOLDEN_SYNTH]
    for order in (requests, requests[::-1]):
        with EspeakSynthesizer() as tts:
            assert tts.sample_rate == 22050
            out = dict(zip(order, tts.map(order)))
        for req, size, digest in GOLDEN_SYNTH:
            assert (len(out[req]), hashlib.sha256(out[req]).hexdigest()[:16]) == (size, digest)


def test_espeak_unknown_voice_is_a_clear_error():
    with EspeakSynthesizer() as tts:
        with pytest.raises(RuntimeError, match="no voice 'en-gb'.*case-sensitive"):
            tts.synthesize(SynthRequest("yes", "en-gb"))
        assert len(tts.synthesize(SynthRequest("yes", "en-US"))) == 30128  # still usable afterwards


def test_same_preset_and_seed_give_identical_files(ci_corpus, tmp_path):
    # a second corpus with only some tasks, asked in another order: files depend on nothing else
    other = make_corpus(tmp_path / "again", "ci", seed=0, tasks="sid,ks")
    assert sorted(other["tasks"]) == ["asv", "ks", "sid"]
    for name in ("speech_commands", "VoxCeleb1"):
        first = _tree_hashes(Path(ci_corpus["root"]) / name)
        assert first == _tree_hashes(tmp_path / "again" / name)
    # spot checks that the comparison covered real audio
    assert len([k for k in first if k.endswith(".wav")]) == 96


def test_another_seed_gives_other_audio(ci_corpus, tmp_path):
    other = make_corpus(tmp_path / "seed1", "ci", seed=1, tasks="er")
    base = Path(ci_corpus["tasks"]["er"]["paths"]["root"])
    wavs = sorted(p.relative_to(base) for p in base.rglob("*.wav"))
    assert wavs == sorted(p.relative_to(other["tasks"]["er"]["paths"]["root"])
                          for p in Path(other["tasks"]["er"]["paths"]["root"]).rglob("*.wav"))
    changed = sum(_sha(base / w) != _sha(Path(other["tasks"]["er"]["paths"]["root"]) / w) for w in wavs)
    assert changed == len(wavs)


# ----------------------------------------------------------------------------------------------------
# resuming, forcing, bad inputs


def test_manifest_is_written_last_and_reused(ci_corpus):
    root = Path(ci_corpus["root"])
    assert set(ci_corpus["tasks"]) == set(corpus.TASK_NAMES)
    on_disk = json.loads((root / corpus.MANIFEST_NAME).read_text())
    assert on_disk["preset"] == "ci" and on_disk["seed"] == 0 and on_disk["espeakng_loader"] == "0.2.4"
    assert not (root / ".corpus_tmp").exists()
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_corpus(root, "ci", seed=0) == ci_corpus
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == written  # complete: nothing regenerated


def test_interrupted_run_resumes_only_missing_data_sets(tmp_path):
    out = tmp_path / "c"
    make_corpus(out, "ci", tasks="er,ic")
    kept = (out / "fluent_speech_commands_dataset" / "data" / "train_data.csv").stat().st_mtime_ns
    # simulate a crash while IEMOCAP was being written: no manifest yet, a half-built temp dir
    (out / corpus.MANIFEST_NAME).unlink()
    shutil.rmtree(out / "IEMOCAP_full_release")
    (out / ".corpus_tmp" / "IEMOCAP_full_release" / "Session1").mkdir(parents=True)
    manifest = make_corpus(out, "ci", tasks="er,ic")
    assert (out / "fluent_speech_commands_dataset" / "data" / "train_data.csv").stat().st_mtime_ns == kept
    assert manifest["tasks"]["er"]["files"]["wav"] == 90 and not (out / ".corpus_tmp").exists()
    # a later, wider call adds data sets and keeps the earlier tasks in the manifest
    wider = make_corpus(out, "ci", tasks="ks")
    assert sorted(wider["tasks"]) == ["er", "ic", "ks"]


def test_folders_not_made_by_the_generator_are_never_deleted(tmp_path):
    real = tmp_path / "data" / "LibriSpeech" / "train-clean-100"
    real.mkdir(parents=True)
    (real / "keep.flac").write_bytes(b"user data")
    for force in (False, True):
        with pytest.raises(CorpusError, match=r"LibriSpeech exists and was not written by make-corpus"):
            make_corpus(tmp_path / "data", "ci", tasks="asr", force=force)
    assert (real / "keep.flac").read_bytes() == b"user data"


def test_other_seed_in_same_directory_needs_force(tmp_path):
    out = tmp_path / "c"
    make_corpus(out, "ci", tasks="ic")
    with pytest.raises(CorpusError, match=r"seed=0.*--force"):
        make_corpus(out, "ci", seed=3, tasks="ic")
    (out / "unrelated.txt").write_text("user file")
    manifest = make_corpus(out, "ci", seed=3, tasks="ic", force=True)
    assert manifest["seed"] == 3 and (out / "unrelated.txt").exists()  # --force removes only our files


def test_bad_inputs_name_problem_and_fix(tmp_path):
    with pytest.raises(CorpusError, match=r"unknown preset 'huge'; choose one of ci, small, mini, mini-heldout"):
        make_corpus(tmp_path / "x", "huge")
    with pytest.raises(CorpusError, match=r"unknown task\(s\) \[.se.\]; choose from asr, asv, ks, ic, er, pr, sid, sf, sd, "
                                         r"qbe"):
        make_corpus(tmp_path / "x", "ci", tasks="ks,se")
    with pytest.raises(CorpusError, match="non-negative integer"):
        make_corpus(tmp_path / "x", "ci", seed=-1)
    (tmp_path / "file").write_text("")
    with pytest.raises(CorpusError, match="not a directory"):
        make_corpus(tmp_path / "file", "ci")


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["--help"])
    assert exit_info.value.code == 0
    assert "make-corpus" in capsys.readouterr().out
    assert corpus.main([str(tmp_path / "c"), "--tasks", "nope"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects an unknown preset itself, listing the choices
        corpus.main([str(tmp_path / "c"), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert corpus.main([str(tmp_path / "c"), "--tasks", "ic", "--seed", "2", "-q"]) == 0
    assert json.loads((tmp_path / "c" / corpus.MANIFEST_NAME).read_text())["seed"] == 2


# ----------------------------------------------------------------------------------------------------
# layouts, checked with s3prl's own code where it is importable without a model


def test_ks_layout_matches_s3prl_split(ci_corpus):
    from s3prl.downstream.speech_commands.dataset import CLASSES
    from s3prl.downstream.speech_commands.expert import split_dataset

    paths = ci_corpus["tasks"]["ks"]["paths"]
    train, dev = split_dataset(paths["speech_commands_root"])
    files = ci_corpus["tasks"]["ks"]["files"]
    assert (len(train), len(dev)) == (files["train"], files["dev"]) == (168, 42)
    speaker = lambda p: Path(p).name.split("_nohash_")[0]  # noqa: E731
    assert not {speaker(p) for _, p in train} & {speaker(p) for _, p in dev}
    targets = set(CLASSES) - {"_unknown_", "_silence_"}
    assert targets <= {c for c, _ in train} and {c for c, _ in train} - targets  # targets + filler words
    assert len(list(Path(paths["speech_commands_root"], "_background_noise_").glob("*.wav"))) == 3
    test_root = Path(paths["speech_commands_test_root"])
    assert sorted(d.name for d in test_root.iterdir()) == sorted(CLASSES)
    test_speakers = {speaker(p) for p in test_root.rglob("*_nohash_*.wav") if not p.parent.name == "_silence_"}
    assert not test_speakers & {speaker(p) for _, p in train + dev}
    import soundfile

    assert {soundfile.info(str(p)).frames for _, p in train[:20]} == {16000}


def test_ic_layout(ci_corpus):
    import pandas as pd

    base = Path(ci_corpus["tasks"]["ic"]["paths"]["file_path"])
    frames = {s: pd.read_csv(base / "data" / f"{s}_data.csv") for s in ("train", "valid", "test")}
    assert list(frames["train"].columns) == ["Unnamed: 0", "path", "speakerId", "transcription", "action",
                                             "object", "location"]
    intents = lambda df: set(zip(df.action, df.object, df.location))  # noqa: E731
    assert len(intents(frames["train"])) == 31
    for split in ("valid", "test"):
        assert intents(frames[split]) <= intents(frames["train"])  # s3prl maps slots from train only
        assert not set(frames[split].speakerId) & set(frames["train"].speakerId)
    assert all((base / p).is_file() for df in frames.values() for p in df.path)


def test_er_meta_data_equals_s3prl_preprocess(ci_corpus, tmp_path):
    from s3prl.downstream.emotion import IEMOCAP_preprocess

    root = Path(ci_corpus["tasks"]["er"]["paths"]["root"])
    mirror = tmp_path / "IEMOCAP"  # s3prl writes into <root>/meta_data, so give it a linked copy
    mirror.mkdir()
    for session in root.glob("Session*"):
        (mirror / session.name).symlink_to(session, target_is_directory=True)
    IEMOCAP_preprocess.main(str(mirror))
    as_set = lambda path: {tuple(sorted(i.items())) for i in json.loads(path.read_text())["meta_data"]}  # noqa
    for fold in range(1, 6):
        for split in ("train", "test"):
            ours = root / "meta_data" / f"Session{fold}" / f"{split}_meta_data.json"
            theirs = mirror / "meta_data" / f"Session{fold}" / f"{split}_meta_data.json"
            assert as_set(ours) == as_set(theirs)
            assert json.loads(ours.read_text())["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
        train = json.loads((root / "meta_data" / f"Session{fold}" / "train_meta_data.json").read_text())["meta_data"]
        assert Counter(i["label"] for i in train) == {"neu": 16, "hap": 16, "ang": 16, "sad": 16}
        assert not any(i["path"].startswith(f"Session{fold}/") for i in train)


def test_voxceleb_lists(ci_corpus):
    sid, asv = ci_corpus["tasks"]["sid"]["paths"], ci_corpus["tasks"]["asv"]["paths"]
    vox = Path(sid["file_path"])
    lines = [line.split() for line in Path(sid["meta_data"]).read_text().splitlines()]
    assert Counter(split for split, _ in lines) == {"1": 48, "2": 24, "3": 24}
    assert all(len(list(vox.glob(f"*/wav/{rel}"))) == 1 for _, rel in lines)  # how s3prl finds them
    per_speaker = {}
    for split, rel in lines:
        per_speaker.setdefault(rel.split("/")[0], set()).add(split)
    assert all(s == {"1", "2", "3"} for s in per_speaker.values())  # closed set: every speaker everywhere
    trials = [line.split() for line in Path(asv["test_meta_data"]).read_text().splitlines()]
    assert Counter(label for label, _, _ in trials) == {"1": 30, "0": 30}
    assert all((vox / "test" / "wav" / a).is_file() and (vox / "test" / "wav" / b).is_file() for _, a, b in trials)
    for name in ("test_meta_data", "dev_meta_data"):  # the dev list is parsed by the recipe too
        _check_trial_list([tuple(line.split()) for line in Path(asv[name]).read_text().splitlines()])
    dev_speakers = {p.name for p in (vox / "dev" / "wav").iterdir()}
    assert not dev_speakers & {p.name for p in (vox / "test" / "wav").iterdir()}


def _check_trial_list(trials) -> None:
    """What holds for VoxCeleb1-O's own list: two different recordings per trial, no pair scored twice
    (in either order), the label says whether the speakers (the id folder) agree, labels balanced."""
    assert trials
    assert all(a != b for _, a, b in trials), [t for t in trials if t[1] == t[2]]
    pairs = Counter(frozenset((a, b)) for _, a, b in trials)
    assert max(pairs.values()) == 1, [sorted(p) for p, n in pairs.items() if n > 1]
    assert all((a.split("/")[0] == b.split("/")[0]) == (label in (1, "1")) for label, a, b in trials)
    labels = Counter(str(label) for label, _, _ in trials)
    assert (labels["1"], labels["0"]) == ((len(trials) + 1) // 2, len(trials) // 2)


@pytest.mark.parametrize("speakers, per_speaker, count", [(4, 8, 60), (2, 3, 8), (3, 2, 6), (8, 10, 320), (5, 4, 7)])
def test_trial_lists_pair_different_recordings_once(speakers, per_speaker, count):
    import numpy as np

    utts = [f"id{10270 + s}/v{u % 3}/{u:05d}.wav" for s in range(speakers) for u in range(per_speaker)]
    for seed in range(5):
        trials = corpus.make_trials(utts[::-1], lambda rel: rel.split("/")[0], count, np.random.default_rng(seed))
        assert len(trials) == count
        _check_trial_list(trials)
        # every recording is an enrolment in turn, as in the real list: none is left out
        if count >= len(utts):
            assert {a for _, a, _ in trials} == set(utts)


def test_trial_list_that_cannot_be_drawn_is_an_error():
    import numpy as np

    # one recording per speaker: no target trial exists
    with pytest.raises(CorpusError, match=r"trial 1 of 2: id1/a.wav has no unused same-speaker partner"):
        corpus.make_trials(["id1/a.wav", "id2/b.wav"], lambda rel: rel.split("/")[0], 2, np.random.default_rng(0))
    # two speakers with two recordings each: the fifth trial (a's second target one) could only repeat a-b
    with pytest.raises(CorpusError, match=r"trial 5 of 5: id1/a.wav has no unused same-speaker partner"):
        corpus.make_trials(["id1/a.wav", "id1/b.wav", "id2/c.wav", "id2/d.wav"], lambda rel: rel.split("/")[0], 5,
                           np.random.default_rng(0))


def test_librispeech_tables_and_lexicon(ci_corpus):
    import soundfile

    asr, pr = ci_corpus["tasks"]["asr"]["paths"], ci_corpus["tasks"]["pr"]["paths"]
    root = Path(asr["libri_root"])
    speakers = {}
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        rows = list(csv_rows(Path(asr["bucket_file"]) / f"{split}.csv"))
        assert rows[0] == ["", "file_path", "length", "label"]
        lengths = [int(r[2]) for r in rows[1:]]
        assert lengths == sorted(lengths, reverse=True)
        assert all(soundfile.info(str(root / r[1])).frames == int(r[2]) for r in rows[1:])
        speakers[split] = {r[1].split("/")[1] for r in rows[1:]}
    assert not speakers["train-clean-100"] & (speakers["dev-clean"] | speakers["test-clean"])
    lexicon = dict(line.split("\t") for line in Path(pr["lexicon"]).read_text().splitlines())
    words = {w for t in root.rglob("*.trans.txt") for line in t.read_text().splitlines() for w in line.split()[1:]}
    assert words <= set(lexicon)
    vocab = set((Path(__file__).parents[1] / "downstream_configs" / "pr" / "phoneme.txt").read_text().split())
    assert {p for pron in lexicon.values() for p in pron.split()} <= vocab
    assert re.fullmatch(r"\d+-\d+-\d{4}", next(root.rglob("*.flac")).stem)


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.reader(f)


# ----------------------------------------------------------------------------------------------------
# the mini presets: a balanced KS test set, and a held-out variant with other talkers and noise


def test_mini_presets_differ_only_in_acoustics():
    mini, heldout = corpus.PRESETS["mini"], corpus.PRESETS["mini-heldout"]
    assert mini.acoustics == corpus.Acoustics()  # the tuning corpus sounds like ci and small
    assert {k: v for k, v in vars(heldout).items() if k != "acoustics"} == \
        {k: v for k, v in vars(mini).items() if k != "acoustics"}
    held = heldout.acoustics
    assert held.noise_color == "pink" and held.snr_shift_db == -10.0
    voices = corpus.PRESETS["mini-heldout-voices"]  # the same talkers and noise colour, at the tuning SNRs
    assert voices.acoustics == replace(held, snr_shift_db=0.0)
    assert {k: v for k, v in vars(voices).items() if k != "acoustics"} == \
        {k: v for k, v in vars(mini).items() if k != "acoustics"}
    # the held-out talkers' ranges reach beyond the tuning ones on both sides
    for field in ("rate", "pitch", "pitch_range"):
        low, high = getattr(held, field)
        tuned_low, tuned_high = getattr(mini.acoustics, field)
        assert low < tuned_low and high > tuned_high, field


def test_balanced_ks_test_set(monkeypatch, tmp_path):
    """One filler word per test speaker and as many silences as speakers: every one of the 12 classes holds
    n_test clips, as in the real test set (s3prl reads the class from the folder name)."""
    small_mini = corpus.replace(corpus.PRESETS["ci"], ks_speakers=(6, 2, 8), ks_unknown_words=4, ks_test_silence=8,
                                ks_test_unknown_per_speaker=1)
    monkeypatch.setitem(corpus.PRESETS, "balanced", small_mini)
    manifest = make_corpus(tmp_path / "c", "balanced", seed=0, tasks="ks")
    test_root = Path(manifest["tasks"]["ks"]["paths"]["speech_commands_test_root"])
    per_class = Counter(p.parent.name for p in test_root.rglob("*.wav"))
    assert per_class == {c: 8 for c in list(corpus.KS_TARGETS) + ["_unknown_", "_silence_"]}
    assert manifest["tasks"]["ks"]["files"]["test"] == 12 * 8
    # the unknown clips rotate through the fillers: 8 speakers over 4 fillers, each filler twice
    fillers = manifest["tasks"]["ks"]["unknown_words"]
    assert len(fillers) == 4


def test_held_out_voices_draw_from_their_own_ranges():
    import numpy as np

    acoustics = corpus.Acoustics(rate=(100, 102), pitch=(80, 81), pitch_range=(5, 7))
    voices = corpus._draw_voices(np.random.default_rng(0), 12, acoustics=acoustics)
    assert {v.rate for v in voices} <= {100, 101} and {v.pitch for v in voices} == {80}
    assert {v.pitch_range for v in voices} <= {5, 6}


def test_held_out_noise_is_stronger_and_coloured():
    """Same speech, same seed: a -10 dB shift multiplies the added noise's RMS by 10^(10/20) exactly, and pink
    noise puts far more of its power below 500 Hz than white noise does."""
    import numpy as np

    t = np.arange(16000) / 16000
    speech = (0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)  # energy far above 500 Hz

    def added(acoustics: corpus.Acoustics) -> np.ndarray:
        out = corpus._finish(speech, np.random.default_rng(7), peak=(0.5, 0.5), acoustics=acoustics)
        return out.astype(np.float64) - speech  # peak 0.5 leaves the speech itself unscaled

    white, shifted = added(corpus.Acoustics()), added(corpus.Acoustics(snr_shift_db=-10.0))
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    assert rms(shifted) / rms(white) == pytest.approx(10 ** 0.5, rel=1e-3)

    def low_share(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(power[:500].sum() / power.sum())  # bins are 1 Hz wide for one second of audio

    pink = added(corpus.Acoustics(noise_color="pink"))
    assert low_share(white) == pytest.approx(500 / 8001, rel=0.2)
    assert low_share(pink) > 0.5
