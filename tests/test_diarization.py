"""SD (speaker diarization): dscore's DER through pyannote, SUPERB's prediction-to-RTTM conversion and
best-of-grid scoring, and the synthetic two-talker corpus read by s3prl's own diarization dataset."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import h5py
import numpy as np
import pytest

from lighthubert_s3prl.superb.diarization import (DiarizationError, der_breakdown, diarization_error_rate,
                                                  median_filter_tracks, predictions_to_rttm, score_expdir)


def _rttm(turns: Sequence[Tuple[str, float, float, str]]) -> List[str]:
    return [f"SPEAKER {rec} 1 {onset:.2f} {offset - onset:.2f} <NA> <NA> {spk} <NA>"
            for rec, onset, offset, spk in turns]


def _write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _h5(path: Path, probs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("T_hat", data=np.asarray(probs, dtype=np.float32))
    return path


# ----------------------------------------------------------------------------------------------------
# DER: a worked example from dscore's definition

# rec1: A and B overlap in 3.0-4.0. The hypothesis starts 0.3 s before any reference speech and adds a false
# alarm after it: dscore scores from the earliest onset to the latest offset of reference AND system turns.
# Its labels are named so that pairing by name order (A-spk_a, B-spk_b) is the wrong mapping.
REFERENCE = [("rec1", 0.5, 4.0, "A"), ("rec1", 3.0, 6.0, "B"),
             ("rec2", 1.0, 3.0, "C"), ("rec2", 2.0, 5.0, "D"), ("rec2", 6.0, 7.0, "C")]
HYPOTHESIS = [("rec1", 0.2, 3.5, "spk_b"), ("rec1", 5.0, 6.0, "spk_b"),
              ("rec1", 3.5, 5.0, "spk_a"), ("rec1", 6.5, 7.0, "spk_a"),
              ("rec2", 1.0, 2.5, "1"), ("rec2", 6.0, 6.5, "1"), ("rec2", 2.0, 5.0, "0"), ("rec2", 6.5, 7.0, "0")]
# By hand. rec1: co-occurrence spk_b/A 3.0, spk_b/B 1.5, spk_a/A 0.5, spk_a/B 1.5, so the best mapping is
# spk_b->A, spk_a->B (4.5 s matched, against 2.0 s the other way). Scored region 0.2-7.0:
#   0.2-0.5 FA 0.3 | 0.5-3.0 ok | 3.0-3.5 A+B vs spk_b: miss 0.5 | 3.5-4.0 A+B vs spk_a: miss 0.5 |
#   4.0-5.0 ok | 5.0-6.0 B vs spk_b(=A): confusion 1.0 | 6.5-7.0 FA 0.5.  Reference time 3.5 + 3.0 = 6.5.
# rec2: "1"/C 2.0, "1"/D 0.5, "0"/C 1.5, "0"/D 3.0 -> "1"->C, "0"->D. Region 1.0-7.0:
#   1.0-2.5 ok | 2.5-3.0 C+D vs "0": miss 0.5 | 3.0-5.0 ok | 6.0-6.5 ok | 6.5-7.0 C vs "0"(=D): confusion 0.5.
#   Reference time 2.0 + 3.0 + 1.0 = 6.0.
# Summed before dividing: (miss 1.5 + false alarm 0.8 + confusion 1.5) / 12.5.
HAND = {"missed": 1.5, "false_alarm": 0.8, "confusion": 1.5, "total": 12.5}
HAND_DER = (1.5 + 0.8 + 1.5) / 12.5  # 0.304; mean of per-file DERs would be 0.2987, reference-only UEM 0.24


def test_worked_example_matches_dscore_definition(tmp_path):
    ref = _write(tmp_path / "ref.rttm", _rttm(REFERENCE))
    hyp_lines = _rttm(HYPOTHESIS)
    parts = der_breakdown(ref, hyp_lines)
    for key, value in HAND.items():
        assert parts[key] == pytest.approx(value, abs=1e-9), key
    assert parts["recordings"] == 2
    assert diarization_error_rate(ref, hyp_lines) == pytest.approx(HAND_DER, abs=1e-9)
    # an RTTM path gives the same; so does any order of the lines
    hyp = _write(tmp_path / "hyp.rttm", hyp_lines[::-1])
    assert diarization_error_rate(str(ref), hyp) == pytest.approx(HAND_DER, abs=1e-9)


def test_der_edge_rules_follow_dscore(tmp_path):
    ref = _write(tmp_path / "ref.rttm", _rttm(REFERENCE))
    hyp = _rttm(HYPOTHESIS)
    # overlapping turns of one system speaker are merged first (dscore's merge_turns): no double counting
    assert diarization_error_rate(ref, hyp + _rttm([("rec1", 0.2, 1.0, "spk_b")])) == pytest.approx(HAND_DER, abs=1e-9)
    # a reference recording without system turns is entirely missed (rec2 holds 6.0 s of speaker time)
    only_rec1 = [line for line in hyp if " rec1 " in line]
    assert der_breakdown(ref, only_rec1)["missed"] == pytest.approx(1.0 + 6.0, abs=1e-9)
    # comments, blank lines and other line types are skipped
    assert diarization_error_rate(ref, [";; comment", "", "SPKR-INFO rec1 1 <NA> <NA> <NA> unknown A <NA>"] + hyp) \
        == pytest.approx(HAND_DER, abs=1e-9)
    with pytest.raises(DiarizationError, match="not in the reference.*'rec9'"):
        diarization_error_rate(ref, hyp + _rttm([("rec9", 0.0, 1.0, "x")]))
    with pytest.raises(DiarizationError, match="line 2.*duration 0.0"):
        diarization_error_rate(ref, [hyp[0], "SPEAKER rec1 1 1.00 0.00 <NA> <NA> x <NA>"])
    with pytest.raises(DiarizationError, match="does not exist"):
        diarization_error_rate(tmp_path / "nope.rttm", hyp)


# ----------------------------------------------------------------------------------------------------
# predictions -> RTTM


@pytest.mark.filterwarnings("ignore:kernel_size exceeds volume extent")  # scipy, for runs shorter than 11
def test_median_filter_equals_scipy_medfilt():
    from scipy.signal import medfilt

    rng = np.random.default_rng(0)
    for width in (1, 3, 11):
        for _ in range(30):
            active = (rng.random((int(rng.integers(1, 60)), 2)) < rng.random()).astype(np.int64)
            assert np.array_equal(median_filter_tracks(active, width), medfilt(active, (width, 1)).astype(np.int64))
    with pytest.raises(DiarizationError, match="odd"):
        median_filter_tracks(np.zeros((5, 2)), 4)


def _example_probs() -> np.ndarray:
    """60 frames x 2 speakers. Speaker 0: 0.65 on frames 10-29 except a one-frame dip at 20, and exactly
    0.6 on frames 40-44. Speaker 1: 0.9 on frames 5-15 (11 frames) and a one-frame blip at 50."""
    probs = np.full((60, 2), 0.1)
    probs[10:30, 0] = 0.65
    probs[20, 0] = 0.1
    probs[40:45, 0] = 0.6
    probs[5:16, 1] = 0.9
    probs[50, 1] = 0.9
    return probs


def test_predictions_to_rttm_thresholds_median_and_frame_shift(tmp_path):
    files = [_h5(tmp_path / "recB.h5", _example_probs()), _h5(tmp_path / "recA.h5", _example_probs()[:, ::-1])]
    # 320 samples = 0.02 s per frame; recordings in name order, speakers in column order
    assert predictions_to_rttm(files, 320, 0.5, 1) == [
        "SPEAKER recA 1 0.10 0.22 <NA> <NA> recA_0 <NA>",   # frames 5-15
        "SPEAKER recA 1 1.00 0.02 <NA> <NA> recA_0 <NA>",   # the blip, frame 50
        "SPEAKER recA 1 0.20 0.20 <NA> <NA> recA_1 <NA>",   # frames 10-19
        "SPEAKER recA 1 0.42 0.18 <NA> <NA> recA_1 <NA>",   # frames 21-29
        "SPEAKER recA 1 0.80 0.10 <NA> <NA> recA_1 <NA>",   # frames 40-44 (0.6 > 0.5)
        "SPEAKER recB 1 0.20 0.20 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.42 0.18 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.80 0.10 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.10 0.22 <NA> <NA> recB_1 <NA>",
        "SPEAKER recB 1 1.00 0.02 <NA> <NA> recB_1 <NA>",
    ]
    recb = [tmp_path / "recB.h5"]
    # median 11: the one-frame dip is filled, the blip and the 5-frame run vanish, the 11-frame run stays
    assert predictions_to_rttm(recb, 320, 0.5, 11) == [
        "SPEAKER recB 1 0.20 0.40 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.10 0.22 <NA> <NA> recB_1 <NA>",
    ]
    # strictly above the threshold, compared in float32 as SUPERB's numpy comparison does: 0.6 is not > 0.6
    assert predictions_to_rttm(recb, 320, 0.6, 1) == [
        "SPEAKER recB 1 0.20 0.20 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.42 0.18 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.10 0.22 <NA> <NA> recB_1 <NA>",
        "SPEAKER recB 1 1.00 0.02 <NA> <NA> recB_1 <NA>",
    ]
    assert predictions_to_rttm(recb, 320, 0.95, 1) == []
    # 160 samples = 0.01 s per frame
    assert predictions_to_rttm(recb, 160, 0.5, 11) == [
        "SPEAKER recB 1 0.10 0.20 <NA> <NA> recB_0 <NA>",
        "SPEAKER recB 1 0.05 0.11 <NA> <NA> recB_1 <NA>",
    ]


def test_predictions_to_rttm_errors(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("other", data=np.zeros((3, 2)))
    with pytest.raises(DiarizationError, match="no 'T_hat'"):
        predictions_to_rttm([bad], 320, 0.5, 1)
    good = _h5(tmp_path / "a" / "rec.h5", _example_probs())
    twin = _h5(tmp_path / "b" / "rec.h5", _example_probs())
    with pytest.raises(DiarizationError, match="two prediction files for recording 'rec'"):
        predictions_to_rttm([good, twin], 320, 0.5, 1)
    with pytest.raises(DiarizationError, match="frame_shift"):
        predictions_to_rttm([good], 0, 0.5, 1)


# ----------------------------------------------------------------------------------------------------
# an experiment directory -> SUPERB's number


def _expdir(root: Path, frame_shift: str = "320\n") -> Tuple[Path, Path]:
    """r1 (150 frames of 0.02 s): reference A on frames 10-59, B on 40-99. The predictions match exactly
    at threshold 0.6 with median 11 only: lower thresholds add A on 60-69 (0.55) and B on 100-109 (0.45),
    median 1 keeps a one-frame blip (0.95) of A at frame 80, and 0.7 finds nothing else."""
    expdir = root / "exp"
    (expdir / "scoring" / "predictions").mkdir(parents=True)
    if frame_shift is not None:
        (expdir / "frame_shift").write_text(frame_shift)
    probs = np.full((150, 2), 0.05)
    probs[10:60, 0], probs[60:70, 0], probs[80, 0] = 0.65, 0.55, 0.95
    probs[40:100, 1], probs[100:110, 1] = 0.65, 0.45
    _h5(expdir / "scoring" / "predictions" / "r1.h5", probs)
    ref = _write(root / "rttm", _rttm([("r1", 0.2, 1.2, "A"), ("r1", 0.8, 2.0, "B")]))
    return expdir, ref


def test_score_expdir_reports_the_best_grid_point(tmp_path):
    expdir, ref = _expdir(tmp_path)
    result = score_expdir(expdir, ref)
    assert (result["der"], result["threshold"], result["median"]) == (0.0, 0.6, 11)
    assert result["recordings"] == 1 and result["frame_shift"] == 320
    assert Path(result["hypothesis_rttm"]) == expdir / "scoring" / "hyp_0.6_11.rttm"
    grid = result["grid"]
    assert sorted(grid) == sorted(f"th{t}_med{m}" for t in ("0.3", "0.4", "0.5", "0.6", "0.7") for m in (1, 11))
    total = 1.0 + 1.2  # reference speaker time
    assert grid["th0.6_med1"] == pytest.approx(0.02 / total, abs=1e-9)        # the blip
    assert grid["th0.5_med11"] == pytest.approx(0.2 / total, abs=1e-9)        # A on 60-69
    assert grid["th0.4_med11"] == pytest.approx((0.2 + 0.2) / total, abs=1e-9)  # and B on 100-109
    assert grid["th0.7_med11"] == pytest.approx(1.0, abs=1e-9)                 # nobody: all missed
    assert grid["th0.7_med1"] == pytest.approx((total - 0.02) / total, abs=1e-9)  # only the blip, inside B's speech
    rttms = sorted(p.name for p in (expdir / "scoring").glob("hyp_*.rttm"))
    assert rttms == sorted(f"hyp_{t}_{m}.rttm" for t in ("0.3", "0.4", "0.5", "0.6", "0.7") for m in (1, 11))
    assert (expdir / "scoring" / "hyp_0.6_11.rttm").read_text().splitlines() == [
        "SPEAKER r1 1 0.20 1.00 <NA> <NA> r1_0 <NA>", "SPEAKER r1 1 0.80 1.20 <NA> <NA> r1_1 <NA>"]
    saved = json.loads((expdir / "scoring" / "superb_der.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert not [p for p in (expdir / "scoring").iterdir() if p.name.endswith(".tmp")]


def test_score_expdir_ties_go_to_the_first_grid_point(tmp_path):
    expdir, ref = _expdir(tmp_path)
    probs = np.full((150, 2), 0.05)
    probs[10:60, 0], probs[40:100, 1] = 0.95, 0.95  # every grid point finds exactly the reference
    _h5(expdir / "scoring" / "predictions" / "r1.h5", probs)
    result = score_expdir(expdir, ref)
    assert set(result["grid"].values()) == {0.0}
    assert (result["threshold"], result["median"]) == (0.3, 1)


def test_score_expdir_errors_name_the_fix(tmp_path):
    expdir, ref = _expdir(tmp_path / "a", frame_shift=None)
    with pytest.raises(DiarizationError, match=r"frame_shift is missing.*320"):
        score_expdir(expdir, ref)
    expdir, ref = _expdir(tmp_path / "b", frame_shift="abc")
    with pytest.raises(DiarizationError, match="not a positive integer"):
        score_expdir(expdir, ref)
    expdir, ref = _expdir(tmp_path / "c")
    (expdir / "scoring" / "predictions" / "r1.h5").unlink()
    with pytest.raises(DiarizationError, match="no predictions.*test step"):
        score_expdir(expdir, ref)
    expdir, ref = _expdir(tmp_path / "d")
    _h5(expdir / "scoring" / "predictions" / "stray.h5", np.zeros((5, 2)))
    with pytest.raises(DiarizationError, match="not in the reference.*'stray'"):
        score_expdir(expdir, ref)
    expdir, ref = _expdir(tmp_path / "e")
    _write(ref, _rttm([("r1", 0.2, 1.2, "A"), ("r2", 0.0, 1.0, "B")]))
    with pytest.raises(DiarizationError, match="no prediction.*'r2'.*did not finish"):
        score_expdir(expdir, ref)


# ----------------------------------------------------------------------------------------------------
# the synthetic two-talker corpus, read by s3prl's own dataset

SD_SIZES = (3, 1, 1)


def _build(root: Path) -> dict:
    from lighthubert_s3prl.superb.corpus import PRESETS, _Build
    from lighthubert_s3prl.superb._espeak import EspeakSynthesizer
    from lighthubert_s3prl.superb.corpus_librimix import build_librimix

    root.mkdir(parents=True)
    with EspeakSynthesizer() as tts:
        return build_librimix(_Build(tts, 0, root, "Libri2Mix"), replace(PRESETS["ci"], sd_recordings=SD_SIZES))


@pytest.fixture(scope="module")
def librimix(tmp_path_factory) -> Tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sd") / "Libri2Mix"
    return root, _build(root)


def _table(path: Path) -> List[List[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_librimix_layout_and_tables(librimix, tmp_path):
    import soundfile

    root, info = librimix
    assert info["sd"]["paths"] == {"train_dir": "data/train", "dev_dir": "data/dev", "test_dir": "data/test"}
    assert info["sd"]["files"] == dict(zip(("train", "dev", "test"), SD_SIZES))
    talkers = {}
    for split, n in zip(("train", "dev", "test"), SD_SIZES):
        data = root / "data" / split
        # no wav.scp: s3prl's KaldiData then reads <data_dir>/wav/<rec>.wav
        assert not (data / "wav.scp").exists()
        wavs = sorted((data / "wav").iterdir())
        assert len(wavs) == n and all(p.suffix == ".wav" for p in wavs)
        durations = {rec: float(d) for rec, d in _table(data / "reco2dur")}
        assert sorted(durations) == [p.stem for p in wavs]
        for p in wavs:
            meta = soundfile.info(str(p))
            assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
            assert meta.frames == round(durations[p.stem] * 16000)
            assert 6.0 <= durations[p.stem] <= 12.0
        utt2spk = dict(_table(data / "utt2spk"))
        spk2utt = {row[0]: row[1:] for row in _table(data / "spk2utt")}
        assert {u: s for s, us in spk2utt.items() for u in us} == utt2spk
        segments = _table(data / "segments")
        assert sorted(u for u, *_ in segments) == sorted(utt2spk)
        # the reference rttm is the segments, one line per segment, with the same times and speakers
        from_segments = sorted((rec, round(float(st) * 1000), round((float(et) - float(st)) * 1000), utt2spk[utt])
                               for utt, rec, st, et in segments)
        from_rttm = sorted((f[1], round(float(f[3]) * 1000), round(float(f[4]) * 1000), f[7])
                           for f in _table(data / "rttm"))
        assert from_rttm == from_segments
        per_rec: Dict[str, Dict[str, list]] = {}
        for utt, rec, st, et in segments:
            assert 0.0 <= float(st) < float(et) <= durations[rec]
            per_rec.setdefault(rec, {}).setdefault(utt2spk[utt], []).append((float(st), float(et)))
        assert sorted(per_rec) == sorted(durations)
        for rec, by_spk in per_rec.items():
            assert len(by_spk) == 2, rec  # two talkers per mixture
            for spans in by_spk.values():
                assert 2 <= len(spans) <= 3  # two or three sentences, one after the other
                spans.sort()
                assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
        talkers[split] = set(spk2utt)
    # talker pools are disjoint between splits, as in Libri2Mix
    assert not (talkers["train"] & talkers["dev"] or talkers["train"] & talkers["test"]
                or talkers["dev"] & talkers["test"])
    # same seed, same bytes
    again = tmp_path / "Libri2Mix"
    _build(again)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        assert path.read_bytes() == (again / path.relative_to(root)).read_bytes(), path


def _runs(track: np.ndarray) -> List[Tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.pad(track.astype(int), 1)))
    return list(zip(edges[::2], edges[1::2]))


def test_s3prl_dataset_labels_match_where_the_speech_is(librimix):
    from s3prl.downstream.diarization.dataset import DiarizationDataset

    root, _ = librimix
    shares = []
    for split, n in zip(("train", "dev", "test"), SD_SIZES):
        data_dir = str(root / "data" / split)
        conf = dict(frame_shift=320, num_speakers=2, rate=16000, chunk_size=2000, subsampling=1)
        train = DiarizationDataset("train", data_dir, **conf)
        test = DiarizationDataset("test", data_dir, **conf)
        assert len(train) == len(test) == n
        for i in range(n):
            wav, labels = train[i]
            wavs, test_labels, rec = test[i]
            assert len(wavs) == 1 and np.array_equal(test_labels[0], labels) and np.array_equal(wavs[0], wav)
            frames = len(labels)
            assert labels.shape == (frames, 2) and frames == int(len(wav) / 320)
            rms = np.sqrt(np.mean(wav[: frames * 320].reshape(frames, 320) ** 2, axis=1))
            silent = labels.sum(1) == 0
            interior = silent & np.r_[True, silent[:-1]] & np.r_[silent[1:], True]
            assert interior.sum() >= 10, rec  # some silent stretches
            floor = np.median(rms[silent])
            # frames labelled silent for both talkers (away from a label edge) hold only the noise floor:
            # a label that ends early or starts late by two frames or more leaves speech in them
            assert rms[interior].max() < 1.5 * floor, rec
            assert np.median(rms[~silent]) > 5 * floor, rec
            for speaker in range(2):
                runs = _runs(labels[:, speaker])
                assert 2 <= len(runs) <= 3, rec  # one run per sentence
                for start, end in runs:  # each labelled sentence is mostly audible speech
                    assert np.mean(rms[start:end] > 3 * floor) > 0.6, (rec, speaker, start, end)
            both = np.count_nonzero(labels.sum(1) == 2)
            shares.append(both / np.count_nonzero(~silent))
            assert 0 < both and np.count_nonzero(labels.sum(1) == 1) > both, rec  # single-talker stretches too
    assert 0.08 <= float(np.mean(shares)) <= 0.32  # roughly 10-30 % of the speech overlapped


def test_labels_are_sample_exact_in_a_noise_free_build(monkeypatch, tmp_path):
    """Without the noise, silence is digital zero: nothing may sound outside the labelled segments, and a
    sentence that no other talker overlaps starts and ends on a sample at speech level (the clips are
    trimmed to their first and last sample above 2 % of their peak)."""
    import soundfile

    from lighthubert_s3prl.superb import corpus_librimix

    monkeypatch.setattr(corpus_librimix, "_finish",
                        lambda x, rng, **kw: (0.5 * x / np.abs(x).max()).astype(np.float32))
    root = tmp_path / "Libri2Mix"
    _build(root)
    checked = 0
    for split in ("train", "dev", "test"):
        data = root / "data" / split
        utt2spk = dict(_table(data / "utt2spk"))
        spans: Dict[str, List[Tuple[int, int, str]]] = {}
        for utt, rec, st, et in _table(data / "segments"):
            spans.setdefault(rec, []).append((round(float(st) * 16000), round(float(et) * 16000), utt2spk[utt]))
        for rec, segs in spans.items():
            x, _ = soundfile.read(str(data / "wav" / f"{rec}.wav"), dtype="int16")
            x = np.abs(x.astype(np.int64))
            covered = np.zeros(len(x), dtype=bool)
            for start, end, _ in segs:
                covered[start:end] = True
            assert not x[~covered].any(), rec
            for start, end, spk in segs:
                others = [(s, e) for s, e, k in segs if k != spk and s < end and start < e]
                if others:
                    continue
                peak = x[start:end].max()
                assert x[start] >= 0.019 * peak and x[start - 1] == 0, (rec, start)
                # the end is padded to a whole millisecond (16 samples) with zeros
                assert x[end - 16:end].max() >= 0.019 * peak and x[end] == 0, (rec, end)
                checked += 1
    assert checked >= 5


def test_oracle_predictions_from_s3prl_labels_score_near_zero(librimix, tmp_path):
    """End to end: the labels s3prl derives from the test split, written as the expert's predictions (speaker
    columns swapped: the mapping must not matter), score against the reference rttm with only the 20 ms
    frame quantisation left."""
    from s3prl.downstream.diarization.dataset import DiarizationDataset

    root, _ = librimix
    test_dir = root / "data" / "test"
    expdir = tmp_path / "exp"
    (expdir / "frame_shift").parent.mkdir(parents=True)
    (expdir / "frame_shift").write_text("320\n")
    dataset = DiarizationDataset("test", str(test_dir), frame_shift=320, num_speakers=2)
    for i in range(len(dataset)):
        _, labels, rec = dataset[i]
        _h5(expdir / "scoring" / "predictions" / f"{rec}.h5", 0.05 + 0.9 * np.vstack(labels)[:, ::-1])
    result = score_expdir(expdir, test_dir / "rttm")
    assert result["recordings"] == SD_SIZES[2]
    assert 0 < result["der"] < 0.02
    assert set(result["grid"].values()) == {result["der"]}
