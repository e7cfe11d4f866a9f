"""SD mini corpus: two-talker mixtures in the kaldi-style data folders s3prl's diarization recipe reads.

Stands in for SUPERB's Libri2Mix data (folder ``Libri2Mix`` of the corpus). Each split (train, dev,
test) has its own talkers, as Libri2Mix does. A mixture holds two talkers, each saying two or three short
sentences with pauses; the second talker starts while the first is still talking so that roughly 10-30 %
of the speech time is overlapped, and the mixture also has single-talker and silent stretches (6-12 s,
light noise, 16 kHz 16-bit).

Labels are exact by construction: every synthesised sentence is trimmed to its first and last sample
above 2 % of its peak, placed on a 1 ms grid, and its segment is exactly the placed samples, so the
written times (three decimals) are the true extents. Per split, ``data/<split>/`` holds

* ``wav/<rec>.wav``: the mixtures. There is deliberately no ``wav.scp``: s3prl's ``KaldiData`` then lists
  ``<data_dir>/wav/`` and opens ``os.path.join(<data_dir>, "wav", <file>)``, which is absolute whenever the
  config's data dir is, so the corpus can be built in a temporary folder and moved;
* ``segments`` (``<utt> <rec> <start> <end>``, one line per sentence), ``utt2spk``, ``spk2utt``,
  ``reco2dur`` (``<rec> <seconds>``, the recipe sizes its chunks from it);
* ``rttm``: the reference for scoring (``SPEAKER <rec> 1 <onset> <duration> <NA> <NA> <spk> <NA>``, one
  line per segment, the same times).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .corpus import SAMPLE_RATE, CorpusError, Preset, _Build, _draw_voices, _finish, _trim

SPLITS = ("train", "dev", "test")
GRID = SAMPLE_RATE // 1000  # samples per millisecond: every boundary is a whole millisecond
_STEP = 10 * GRID  # offsets of the second talker are searched on a 10 ms grid

SD_WORDS = (
    "we", "met", "near", "the", "old", "station", "after", "lunch", "she", "found", "a", "small", "blue",
    "box", "under", "table", "they", "walked", "home", "along", "river", "his", "friend", "bought", "fresh",
    "bread", "this", "morning", "our", "team", "won", "game", "last", "night", "please", "close", "window",
    "rain", "will", "stop", "soon", "children", "played", "in", "garden", "letter", "arrived", "today",
)
SENTENCES_PER_TALKER = (2, 4)  # drawn from [2, 4): two or three
WORDS_PER_SENTENCE = (4, 8)
PAUSE_S = (0.3, 0.9)  # between one talker's sentences
EDGE_S = (0.2, 0.7)  # silence before the first and after the last speech
OVERLAP_SHARE = (0.10, 0.30)  # overlapped speech time / speech time
DURATION_S = (6.0, 12.0)


def _ms(seconds: float) -> int:
    """Seconds to a whole number of milliseconds, in samples."""
    return int(round(seconds * 1000)) * GRID


def _mask(spans: Sequence[Tuple[int, int]], shift: int, length: int) -> np.ndarray:
    """Activity of ``spans`` (samples, shifted) on the 10 ms search grid of ``length`` cells."""
    out = np.zeros(length, dtype=bool)
    for start, end in spans:
        out[(start + shift) // _STEP: -(-(end + shift) // _STEP)] = True
    return out


def _second_offset(first: Sequence[Tuple[int, int]], second: Sequence[Tuple[int, int]],
                   rng: np.random.Generator) -> int:
    """Start of the second talker's stream relative to the first's: a random one among those giving an
    overlap share inside OVERLAP_SHARE and a speech extent short enough for DURATION_S with its edges,
    else (rare: two very unequal streams) the one of those short enough closest to a 20 % share."""
    end_a, end_b = first[-1][1], second[-1][1]
    cells = -(-(end_a + end_b) // _STEP) + 1
    a = _mask(first, 0, cells)
    offsets = np.arange(0, end_a, _STEP)
    shares = np.empty(len(offsets))
    for n, offset in enumerate(offsets):
        b = _mask(second, int(offset), cells)
        shares[n] = np.count_nonzero(a & b) / np.count_nonzero(a | b)
    extent = np.maximum(end_a, offsets + end_b) / SAMPLE_RATE
    fits = extent + 2 * EDGE_S[1] <= DURATION_S[1]
    good = np.flatnonzero((shares >= OVERLAP_SHARE[0]) & (shares <= OVERLAP_SHARE[1]) & fits)
    if good.size:
        return int(offsets[good[rng.integers(good.size)]])
    return int(offsets[np.argmin(np.abs(shares - 0.2) + 10.0 * ~fits)])


def _stream(clips: Sequence[np.ndarray], rng: np.random.Generator) -> List[Tuple[int, int]]:
    """One talker's sentences one after the other with pauses: (start, end) in samples from 0."""
    spans, t = [], 0
    for k, clip in enumerate(clips):
        if k:
            t += _ms(rng.uniform(*PAUSE_S))
        spans.append((t, t + len(clip)))
        t += len(clip)
    return spans


def _tight(audio: np.ndarray) -> np.ndarray:
    """The sentence from its first to its last sample above 2 % of its peak, zero padded to whole ms."""
    x = _trim(audio, margin=0.0)
    return np.pad(x, (0, -len(x) % GRID))


def build_librimix(b: _Build, p: Preset) -> Dict[str, dict]:
    """Write the SD data set; returns ``{"sd": {"paths": {train_dir, dev_dir, test_dir}, "files", ...}}``."""
    counts = dict(zip(SPLITS, p.sd_recordings))
    if len(p.sd_recordings) != 3 or any(int(n) < 1 for n in counts.values()):
        raise CorpusError(f"sd_recordings must give at least one mixture for each of train, dev and test, got "
                          f"{p.sd_recordings!r}; e.g. (12, 3, 3)")
    talkers = {split: max(3, n) for split, n in counts.items()}  # disjoint pools, as in Libri2Mix
    total = sum(talkers.values())
    ids = [str(int(x)) for x in b.rng("speaker-ids").choice(np.arange(100, 9000), total, replace=False)]
    voices = _draw_voices(b.rng("voices"), total, acoustics=p.acoustics)
    pools: Dict[str, List[Tuple[str, object]]] = {}
    start = 0
    for split in SPLITS:
        pools[split] = list(zip(ids[start:start + talkers[split]], voices[start:start + talkers[split]]))
        start += talkers[split]

    # plan: recording -> two talkers, each with its sentences
    jobs, plans = [], []  # plans: (split, rec, [(speaker, [uid, ...]), (speaker, [uid, ...])])
    for split in SPLITS:
        for i in range(counts[split]):
            rng = b.rng("mixture", split, i)
            pair = [pools[split][j] for j in rng.choice(len(pools[split]), 2, replace=False)]
            rec = f"{split}{i:04d}-{pair[0][0]}-{pair[1][0]}"
            talks = []
            for spk, voice in pair:
                day = voice.vary(rng)
                uids = []
                for k in range(int(rng.integers(*SENTENCES_PER_TALKER))):
                    words = [SD_WORDS[w] for w in rng.integers(len(SD_WORDS), size=int(rng.integers(*WORDS_PER_SENTENCE)))]
                    uid = f"{spk}-{rec}-{k}"
                    jobs.append((uid, day.vary(rng, pitch=1, rate=0.02).request(" ".join(words))))
                    uids.append(uid)
                talks.append((spk, uids))
            plans.append((split, rec, talks))
    audio = {uid: _tight(x) for uid, x in b.speak(jobs, "sentences")}

    tables: Dict[str, Dict[str, list]] = {s: {"segments": [], "utt2spk": [], "reco2dur": [], "rttm": []}
                                          for s in SPLITS}
    overlap_shares = []
    for split, rec, talks in plans:
        rng = b.rng("layout", rec)
        streams = []
        for spk, uids in talks:
            level = 10 ** (rng.uniform(-3.0, 3.0) / 20)  # the two talkers are not equally loud
            clips = [audio[u] * (0.1 * level / (np.sqrt(np.mean(audio[u] ** 2)) + 1e-9)) for u in uids]
            streams.append((spk, uids, clips, _stream(clips, rng)))
        if rng.random() < 0.5:  # who starts
            streams.reverse()
        offset = _second_offset(streams[0][3], streams[1][3], rng)
        lead, tail = _ms(rng.uniform(*EDGE_S)), _ms(rng.uniform(*EDGE_S))
        extent = max(offset + streams[1][3][-1][1], streams[0][3][-1][1])
        short = max(0, _ms(DURATION_S[0]) - (lead + extent + tail))  # short speech: longer silent edges
        lead += short // (2 * GRID) * GRID
        starts = (lead, lead + offset)
        length = max(_ms(DURATION_S[0]), lead + extent + tail)
        mix = np.zeros(length, dtype=np.float64)
        active = np.zeros((2, length), dtype=bool)
        for t, (base, (spk, uids, clips, spans)) in enumerate(zip(starts, streams)):
            for uid, clip, (s, e) in zip(uids, clips, spans):
                mix[base + s: base + e] += clip
                active[t, base + s: base + e] = True
                st, et = (base + s) / SAMPLE_RATE, (base + e) / SAMPLE_RATE
                tables[split]["segments"].append(f"{uid} {rec} {st:.3f} {et:.3f}")
                tables[split]["utt2spk"].append(f"{uid} {spk}")
                tables[split]["rttm"].append(f"SPEAKER {rec} 1 {st:.3f} {et - st:.3f} <NA> <NA> {spk} <NA>")
        overlap_shares.append(np.count_nonzero(active.all(0)) / np.count_nonzero(active.any(0)))
        wav = _finish(mix.astype(np.float32), b.rng("finish", rec), peak=(0.5, 0.9), snr_db=(20.0, 35.0),
                      acoustics=p.acoustics)
        b.write(f"data/{split}/wav/{rec}.wav", wav)
        tables[split]["reco2dur"].append(f"{rec} {length / SAMPLE_RATE:.3f}")

    for split, table in tables.items():
        spk2utt: Dict[str, List[str]] = {}
        for line in sorted(table["utt2spk"]):
            utt, spk = line.split()
            spk2utt.setdefault(spk, []).append(utt)
        folder = f"data/{split}"
        b.write_text(f"{folder}/segments", sorted(table["segments"]))
        b.write_text(f"{folder}/utt2spk", sorted(table["utt2spk"]))
        b.write_text(f"{folder}/spk2utt", [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())])
        b.write_text(f"{folder}/reco2dur", sorted(table["reco2dur"]))
        b.write_text(f"{folder}/rttm", sorted(table["rttm"], key=lambda l: (l.split()[1], float(l.split()[3]))))
    return {"sd": {"paths": {f"{split}_dir": f"data/{split}" for split in SPLITS},
                   "files": dict(counts), "speakers": dict(talkers),
                   "overlap_share": round(float(np.mean(overlap_shares)), 4)}}
