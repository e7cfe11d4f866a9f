"""SUPERB speaker-diarization (SD) scoring: s3prl's test predictions to the DER SUPERB reports.

The protocol (s3prl 0.4.18 ``downstream/diarization``: ``score.sh`` and ``make_rttm.py``):

1. The recipe's test run writes ``<expdir>/scoring/predictions/<recording>.h5`` (dataset ``T_hat``:
   frames x speakers sigmoid activities) and ``<expdir>/frame_shift`` (the label frame shift in samples).
2. For each median filter width in {1, 11} and threshold in {0.3, ..., 0.7}, a speaker is active in the
   frames whose activity is strictly above the threshold; with a width above 1 each speaker's 0/1 track
   is median filtered over time (zero padded at the ends); runs of active frames become RTTM turns,
   in seconds (``frame_shift / 16000`` per frame) written with two decimals.
3. Each of the ten hypotheses is scored against the test set's reference ``rttm`` with dscore's defaults,
   and SUPERB reports the LOWEST of the ten DERs: the post-processing is tuned on the test set, so the
   best grid point is the published number, and so it is here.

dscore's DER (``scorelib/metrics.py``, which runs NIST ``md-eval.pl``) is
``(missed speaker time + false alarm speaker time + speaker confusion time) / scored reference speaker
time``, summed over all recordings before dividing, with the reference-to-system speaker mapping chosen
per recording to maximise the matched time; no collar, and overlapped speech is scored (each reference
speaker counts). Without a UEM file dscore scores, per recording, from the earliest onset to the latest
offset of all reference and system turns of that recording (``scorelib/uem.py: gen_uem``), and it merges
overlapping turns of one speaker first. :func:`diarization_error_rate` reproduces that with
``pyannote.metrics.diarization.DiarizationErrorRate(collar=0, skip_overlap=False)`` and that explicit UEM.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np

from ..io_utils import atomic_write_text

SAMPLE_RATE = 16000
SUPERB_MEDIANS: Tuple[int, ...] = (1, 11)
SUPERB_THRESHOLDS: Tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
PREDICTION_KEY = "T_hat"  # the h5 dataset s3prl's diarization expert writes
RTTM_DECIMALS = 2  # make_rttm.py writes onsets and durations with two decimals; the DER depends on it
RESULT_NAME = "superb_der.json"

PathLike = Union[str, Path]
# file id -> [(onset, offset, speaker)] in seconds
Turns = Dict[str, List[Tuple[float, float, str]]]


class DiarizationError(ValueError):
    """SD scoring cannot go on; the message names the problem and the fix."""


def _pyannote():
    """(Annotation, Segment, Timeline, DiarizationErrorRate), or a clear error naming the install."""
    try:
        from pyannote.core import Annotation, Segment, Timeline
        from pyannote.metrics.diarization import DiarizationErrorRate
    except ImportError as exc:
        raise ImportError("SD scoring needs pyannote.metrics (it computes dscore's DER): "
                          "pip install pyannote.metrics") from exc
    return Annotation, Segment, Timeline, DiarizationErrorRate


# ----------------------------------------------------------------------------------------------------
# predictions -> RTTM


def median_filter_tracks(active: np.ndarray, width: int) -> np.ndarray:
    """Median filter each column of a 0/1 (frames x speakers) array over time, zero padded at the ends.

    For 0/1 values the median of an odd window is 1 exactly when more than half of the window is 1,
    which is what ``scipy.signal.medfilt(active, (width, 1))`` gives (make_rttm.py's filter).
    """
    if width < 1 or width % 2 == 0:
        raise DiarizationError(f"median filter width must be a positive odd number, got {width}")
    active = np.asarray(active, dtype=np.int64)
    if width == 1 or active.size == 0:
        return active
    half = width // 2
    padded = np.pad(active, ((half + 1, half), (0, 0)))
    csum = np.cumsum(padded, axis=0)
    counts = csum[width:] - csum[:-width]  # ones in the window centred on each frame
    return (counts > half).astype(np.int64)


def _read_prediction(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if PREDICTION_KEY not in f:
                raise DiarizationError(f"{path} has no {PREDICTION_KEY!r} dataset (it holds {sorted(f)}); "
                                       "it is not a prediction of s3prl's diarization expert: remove it from "
                                       "scoring/predictions or re-run the test step")
            probs = np.asarray(f[PREDICTION_KEY][()])
    except OSError as exc:
        raise DiarizationError(f"cannot read {path} ({exc}); re-run the test step to rewrite it") from exc
    if probs.ndim != 2:
        raise DiarizationError(f"{path}: {PREDICTION_KEY} has shape {probs.shape}, expected (frames, speakers); "
                               "re-run the test step")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    return probs


def predictions_to_rttm(prediction_files: Iterable[PathLike], frame_shift: int, threshold: float, median: int,
                        sample_rate: int = SAMPLE_RATE) -> List[str]:
    """RTTM lines ``SPEAKER <rec> 1 <onset> <duration> <NA> <NA> <rec>_<speaker index> <NA>``.

    ``<rec>`` is each file's stem. Files are taken in sorted path order, speakers in column order; a
    speaker is active where its probability is strictly above ``threshold`` (compared in the file's float
    precision), then each speaker's track is median filtered with the odd width ``median`` (1: none);
    frame ``i`` starts at ``i * frame_shift / sample_rate`` seconds. Times are written with two decimals
    as SUPERB's converter does; a turn whose duration rounds to zero is left out (dscore rejects it).
    """
    if isinstance(frame_shift, bool) or not isinstance(frame_shift, (int, np.integer)) or frame_shift <= 0:
        raise DiarizationError(f"frame_shift must be a positive number of samples, got {frame_shift!r}")
    if sample_rate <= 0:
        raise DiarizationError(f"sample_rate must be positive, got {sample_rate!r}")
    median_filter_tracks(np.zeros((0, 1)), median)  # rejects an even or non-positive width before any work
    factor = frame_shift / sample_rate
    paths = sorted((Path(p) for p in prediction_files), key=str)
    seen: Dict[str, Path] = {}
    lines: List[str] = []
    for path in paths:
        rec = path.stem
        if rec in seen:
            raise DiarizationError(f"two prediction files for recording {rec!r}: {seen[rec]} and {path}; "
                                   "keep one per recording")
        seen[rec] = path
        probs = _read_prediction(path)
        # compared in the stored precision (float32 from s3prl), as make_rttm.py's numpy comparison does
        active = median_filter_tracks((probs > probs.dtype.type(threshold)).astype(np.int64), median)
        for speaker, track in enumerate(active.T):
            edges = np.flatnonzero(np.diff(np.pad(track, 1)))
            for start, end in zip(edges[::2], edges[1::2]):
                duration = f"{(end - start) * factor:.{RTTM_DECIMALS}f}"
                if float(duration) <= 0:
                    continue
                lines.append(f"SPEAKER {rec} 1 {start * factor:.{RTTM_DECIMALS}f} {duration} "
                             f"<NA> <NA> {rec}_{speaker} <NA>")
    return lines


# ----------------------------------------------------------------------------------------------------
# RTTM -> DER


def _parse_rttm(lines: Iterable[str], source: str) -> Turns:
    """SPEAKER lines as {file id: [(onset, offset, speaker)]}; other line types and comments are skipped."""
    turns: Turns = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise DiarizationError(f"{source} line {number}: {line.strip()!r} has {len(fields)} fields; an RTTM "
                                   "SPEAKER line has at least 8 (type file channel onset duration ortho stype "
                                   "speaker ...); fix or regenerate the file")
        try:
            onset, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise DiarizationError(f"{source} line {number}: onset {fields[3]!r} or duration {fields[4]!r} is not "
                                   "a number; fix or regenerate the file") from None
        if not (math.isfinite(onset) and math.isfinite(duration)) or onset < 0 or duration <= 0:
            raise DiarizationError(f"{source} line {number}: onset {onset} / duration {duration}; dscore needs "
                                   "onset >= 0 and duration > 0; fix or regenerate the file")
        turns.setdefault(fields[1], []).append((onset, onset + duration, fields[7]))
    return turns


def _load_turns(rttm: Union[PathLike, Sequence[str]], what: str) -> Tuple[Turns, str]:
    if isinstance(rttm, (str, Path)):
        path = Path(rttm)
        if not path.is_file():
            raise DiarizationError(f"{what} RTTM {path} does not exist; pass the path of an existing RTTM file "
                                   "(the reference is the rttm file in the test data folder)")
        return _parse_rttm(path.read_text(encoding="utf-8").splitlines(), str(path)), str(path)
    return _parse_rttm(rttm, f"{what} RTTM lines"), f"the {what} RTTM lines"


def der_breakdown(reference_rttm: PathLike, hypothesis: Union[PathLike, Sequence[str]]) -> Dict[str, float]:
    """dscore's DER and its parts, in seconds summed over recordings: keys ``der`` (fraction),
    ``missed``, ``false_alarm``, ``confusion``, ``total`` (scored reference speaker time), ``recordings``.

    ``hypothesis`` is an RTTM path or a sequence of RTTM lines. Reference recordings that the hypothesis
    does not mention are scored as entirely missed (as dscore does); hypothesis recordings that are not in
    the reference are an error.
    """
    Annotation, Segment, Timeline, DiarizationErrorRate = _pyannote()
    reference, ref_name = _load_turns(reference_rttm, "reference")
    hyp, hyp_name = _load_turns(hypothesis, "hypothesis")
    if not reference:
        raise DiarizationError(f"{ref_name} holds no SPEAKER turns; score against the test set's reference rttm")
    extra = sorted(set(hyp) - set(reference))
    if extra:
        raise DiarizationError(f"{len(extra)} recording(s) in {hyp_name} are not in the reference {ref_name} "
                               f"(first: {extra[0]!r}); score the predictions against the rttm of the data set they "
                               "were made on (the test_dir of the run)")

    def annotation(uri: str, turns: Sequence[Tuple[float, float, str]]):
        ann = Annotation(uri=uri)
        for track, (onset, offset, speaker) in enumerate(turns):
            ann[Segment(onset, offset), track] = speaker
        return ann.support()  # merges overlapping turns of one speaker, as dscore does

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for uri in sorted(reference):
        both = reference[uri] + hyp.get(uri, [])
        # dscore's default UEM: earliest onset to latest offset over reference and system turns
        uem = Timeline([Segment(min(t[0] for t in both), max(t[1] for t in both))], uri=uri)
        metric(annotation(uri, reference[uri]), annotation(uri, hyp.get(uri, [])), uem=uem)
    parts = metric[:]
    total = float(parts["total"])
    if total <= 0:
        raise DiarizationError(f"{ref_name} holds no reference speech to score against")
    missed, false_alarm, confusion = (float(parts[k]) for k in ("missed detection", "false alarm", "confusion"))
    return {"der": (missed + false_alarm + confusion) / total, "missed": missed, "false_alarm": false_alarm,
            "confusion": confusion, "total": total, "recordings": len(reference)}


def diarization_error_rate(reference_rttm: PathLike, hypothesis: Union[PathLike, Sequence[str]]) -> float:
    """dscore's default DER (a fraction, not percent) of ``hypothesis`` (RTTM path or lines); see the
    module docstring for the definition and :func:`der_breakdown` for its parts."""
    return der_breakdown(reference_rttm, hypothesis)["der"]


# ----------------------------------------------------------------------------------------------------
# an s3prl experiment directory -> SUPERB's number


def _read_frame_shift(expdir: Path) -> int:
    path = expdir / "frame_shift"
    if not path.is_file():
        raise DiarizationError(
            f"{path} is missing: s3prl's diarization expert writes the label frame shift (in samples) there when "
            "the model is built. Run the test step with s3prl 0.4.18 in this expdir, or write the frame shift the "
            "model was trained with into it (one integer, 320 for a 20 ms upstream); SUPERB's script would "
            "silently assume 160, which misplaces every turn of a 320 model")
    text = path.read_text(encoding="utf-8").strip()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise DiarizationError(f"{path} holds {text!r}, not a positive integer frame shift in samples; "
                               "write the training label frame shift into it (e.g. 320)")
    return value


def _grid_key(threshold: float, median: int) -> str:
    return f"th{threshold:g}_med{median}"


def score_expdir(expdir: PathLike, reference_rttm: PathLike,
                 thresholds: Sequence[float] = SUPERB_THRESHOLDS,
                 medians: Sequence[int] = SUPERB_MEDIANS) -> dict:
    """Score an SD experiment directory as SUPERB does and return (and save) the result.

    Reads ``<expdir>/frame_shift`` and ``<expdir>/scoring/predictions/*.h5``; for every median width and
    threshold writes ``<expdir>/scoring/hyp_<threshold>_<median>.rttm`` and scores it against
    ``reference_rttm`` (the test data folder's ``rttm``) with dscore's default DER. SUPERB reports the
    lowest DER of the grid, so ``der`` is that minimum (ties go to the earlier grid point: median widths
    in the given order, then thresholds). Returns ``{"der", "threshold", "median", "grid"
    ({"th0.5_med11": der, ...}), "hypothesis_rttm", "recordings", "frame_shift", "reference_rttm",
    "breakdown"}`` with DERs as fractions, also written to ``<expdir>/scoring/superb_der.json``.
    Every test recording of the reference must have a prediction and vice versa.
    """
    expdir = Path(expdir)
    reference_rttm = Path(reference_rttm)
    frame_shift = _read_frame_shift(expdir)
    scoring = expdir / "scoring"
    predictions = sorted((scoring / "predictions").glob("*.h5"))
    if not predictions:
        raise DiarizationError(f"no predictions (*.h5) in {scoring / 'predictions'}: run the recipe's test step "
                               "(run_downstream -m evaluate on the test split), which writes one "
                               "<recording>.h5 per test recording, then score again")
    if not thresholds or not medians:
        raise DiarizationError("the threshold and median grids must not be empty; use the SUPERB defaults")
    reference, _ = _load_turns(reference_rttm, "reference")
    predicted = {p.stem for p in predictions}
    unscored = sorted(predicted - set(reference))
    if unscored:
        raise DiarizationError(f"{len(unscored)} recording(s) with predictions are not in the reference "
                               f"{reference_rttm} (first: {unscored[0]!r}): pass the rttm of the test set the "
                               "predictions were made on, or clear stale files from scoring/predictions")
    missing = sorted(set(reference) - predicted)
    if missing:
        raise DiarizationError(f"{len(missing)} of {len(reference)} test recordings have no prediction in "
                               f"{scoring / 'predictions'} (first: {missing[0]!r}): the test step did not finish; "
                               "re-run it")

    grid: Dict[str, float] = {}
    best: Union[None, dict] = None
    for median in medians:
        for threshold in thresholds:
            lines = predictions_to_rttm(predictions, frame_shift, threshold, median)
            path = scoring / f"hyp_{threshold:g}_{median}.rttm"
            atomic_write_text(path, "".join(f"{line}\n" for line in lines))
            parts = der_breakdown(reference_rttm, lines)
            grid[_grid_key(threshold, median)] = parts["der"]
            if best is None or parts["der"] < best["der"]:
                best = {"der": parts["der"], "threshold": float(threshold), "median": int(median),
                        "hypothesis_rttm": str(path), "breakdown": parts}
    assert best is not None
    result = {**best, "grid": grid, "recordings": len(predictions), "frame_shift": frame_shift,
              "reference_rttm": str(reference_rttm)}
    atomic_write_text(scoring / RESULT_NAME, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result

