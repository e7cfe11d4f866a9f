"""Scoring SUPERB's query-by-example task (QbE: spoken term detection on QUESST 2014).

s3prl's ``-d quesst14_dtw`` recipe writes ``<expdir>/benchmark.stdlist.xml``: for every query one
``<detected_termlist termid=QUERY>`` holding one ``<term file=DOC score=S decision=YES|NO/>`` per document.
SUPERB scores it with the database's own ``scoring/score-TWV-Cnxe.sh <expdir> groundtruth_quesst14_<split> -10``
and reports the maximum term weighted value (``maxTWV``, MTWV) of the layer that is best on dev, on eval.

This module reads that file and the ground truth, and computes the term weighted value (TWV) itself:

    TWV(theta) = 1 - (1/Q) * sum_q [ P_miss(q, theta) + beta * P_fa(q, theta) ]
    P_miss(q, theta) = 1 - N_hit(q, theta) / N_true(q)
    P_fa(q, theta)   = N_fa(q, theta) / (N_docs - N_true(q))
    beta = (C_fa / C_miss) * (1 - P_target) / P_target

with P_target = 0.0008, C_miss = 100, C_fa = 1, so beta = 12.49. These constants (and the effective prior
C_miss*P_target / (C_miss*P_target + C_fa*(1 - P_target)) = 0.0741289 they give the scoring jar) are those of
the QUESST scoring script published with the 2015 edition of the same task and tool, whose README prints that
prior; the 2014 script itself could not be read, so they are taken from there. A trial is one
(query, document) pair: QUESST asks whether a query occurs anywhere in an utterance, so detection is per
document, not per time stamp, and every document of the ground truth's ECF is a trial of every query.
Following the scoring tool:

* queries with no occurrence in the ground truth are left out of the average (the tool reports "Removing
  unseen models"), since their miss probability is undefined;
* a (query, document) trial missing from the system output gets the default score (SUPERB passes -10)
  and a NO decision, and stays in the P_fa denominator; a query missing altogether thus adds a per-query
  TWV of 0 (all misses) at every threshold above the default score;
* the actual TWV (ATWV) uses the system's YES/NO decisions (QUESST 2014 asks for them for that purpose).

How the jar breaks ties is not documented; here, as in the NIST STD 2006 definition, MTWV is the maximum
of TWV(theta) over one global threshold, a trial being detected when score >= theta (tied scores are
detected together), and detecting nothing (TWV 0) is one of the candidates.

When the database ships ``scoring/score-TWV-Cnxe.sh`` and it runs (it needs ``bash``, ``java`` and ``bc``),
:func:`score_stdlist` reports the tool's ``maxTWV`` and keeps ours as ``mtwv_ours``, so numbers stay
comparable with published SUPERB results; otherwise ours is reported, with a warning saying why.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

P_TARGET = 0.0008
C_MISS = 100.0
C_FA = 1.0
DEFAULT_SCORE = -10.0  # what SUPERB's scoring command passes for trials the system did not report
SPLITS = ("dev", "eval")
TOOL_NAME = "score-TWV-Cnxe.sh"
STDLIST_NAME = "benchmark.stdlist.xml"
OURS = "lighthubert_s3prl"

# Java prints floats as e.g. 0.40079603, 5.2125, 1.0E-4, -Infinity or NaN
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|Infinity|NaN))"
# the first such line is the main result; later lines of the same shape are per-query calibrated bounds
_TWV_LINE = re.compile(rf"actTWV:\s*{_NUMBER}\s+maxTWV:\s*{_NUMBER}\s+Threshold:\s*{_NUMBER}")
_CNXE_LINE = re.compile(rf"actCnxe:\s*{_NUMBER}\s+minCnxe:\s*{_NUMBER}")


class QbEError(ValueError):
    """A QbE input that cannot be scored; the message names the problem and the fix."""


class QbEToolWarning(UserWarning):
    """The database's scoring tool was present but could not be used; our own TWV is reported instead."""


def twv_beta(p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> float:
    """The false-alarm weight of TWV: how many misses one false alarm costs, per non-target trial."""
    if not 0.0 < p_target < 1.0 or c_miss <= 0 or c_fa < 0:
        raise QbEError(f"TWV needs 0 < P_target < 1, C_miss > 0 and C_fa >= 0; got P_target={p_target}, "
                       f"C_miss={c_miss}, C_fa={c_fa}")
    return (c_fa / c_miss) * (1.0 - p_target) / p_target


BETA = twv_beta()


def _name_key(name: str) -> str:
    """Documents are named by file stem in the system output and by ``Audio/<stem>.wav`` in the ECF: compare
    stems so either spelling matches."""
    base = PurePosixPath(name.strip().replace("\\", "/")).name
    return base[:-4] if base.lower().endswith(".wav") else base


# ----------------------------------------------------------------------------------------------------
# system output


Detections = Dict[str, Dict[str, Tuple[float, bool]]]


def _parse_xml(path: Path, what: str, fix: str) -> ET.Element:
    if not path.is_file():
        raise QbEError(f"{what} {path} does not exist; {fix}")
    try:
        return ET.parse(str(path)).getroot()
    except ET.ParseError as exc:
        raise QbEError(f"{what} {path} is not well-formed XML ({exc}); {fix}") from None


def read_stdlist(path: PathLike) -> Detections:
    """``{query: {document: (score, decision)}}`` from an NIST STD ``.stdlist.xml`` as s3prl writes it.

    ``decision`` is True for ``decision="YES"``. Documents are keyed by file stem (``quesst14_00001``), the
    spelling s3prl uses. Raises :class:`QbEError` on anything the scoring tool would misread: a wrong root
    element, a missing or repeated ``termid``, a ``term`` without ``file``/``score``, a score that is not a
    finite number, a decision other than YES/NO, or the same document twice for one query.
    """
    path = Path(path)
    fix = "re-run the recipe (run_downstream.py -m evaluate -d quesst14_dtw) to rewrite it"
    root = _parse_xml(path, "system output", fix)
    if root.tag != "stdlist":
        raise QbEError(f"{path}: root element is <{root.tag}>, expected <stdlist> (NIST STD 2006 system output); "
                       f"pass the benchmark.stdlist.xml the recipe writes into its expdir")
    out: Detections = {}
    for block in root:
        if block.tag != "detected_termlist":
            continue
        query = (block.get("termid") or "").strip()
        if not query:
            raise QbEError(f"{path}: a <detected_termlist> has no termid attribute; {fix}")
        if query in out:
            raise QbEError(f"{path}: query {query!r} has two <detected_termlist> blocks; merge them into one")
        docs: Dict[str, Tuple[float, bool]] = {}
        for term in block:
            if term.tag != "term":
                continue
            where = f"{path}: query {query!r}"
            file_attr, score_attr = term.get("file"), term.get("score")
            if not file_attr or score_attr is None:
                raise QbEError(f"{where}: a <term> lacks its file or score attribute; {fix}")
            try:
                score = float(score_attr)
            except ValueError:
                raise QbEError(f"{where}, file {file_attr!r}: score {score_attr!r} is not a number; {fix}") from None
            if not math.isfinite(score):
                raise QbEError(f"{where}, file {file_attr!r}: score {score_attr!r} is not finite; the DTW "
                               "features probably held NaN, check the upstream's hidden states")
            decision = (term.get("decision") or "").strip().upper()
            if decision not in ("YES", "NO"):
                raise QbEError(f"{where}, file {file_attr!r}: decision {term.get('decision')!r} is not YES or NO; "
                               f"{fix}")
            doc = _name_key(file_attr)
            if doc in docs:
                raise QbEError(f"{where}: document {doc!r} is listed twice; keep one score per query and document")
            docs[doc] = (score, decision == "YES")
        out[query] = docs
    if not out:
        raise QbEError(f"{path} holds no <detected_termlist>; the recipe found no queries, check that the "
                       "language_key_*.lst lists name nnenglish files")
    return out


# ----------------------------------------------------------------------------------------------------
# ground truth


@dataclass(frozen=True)
class GroundTruth:
    """Which documents hold each query: the trials are every query of ``queries`` against every document of
    ``documents``; ``occurrences`` maps a query to the documents that contain it (queries without any are
    not scored)."""

    queries: Tuple[str, ...]
    documents: Tuple[str, ...]
    occurrences: Mapping[str, FrozenSet[str]]
    split: str = ""
    folder: Optional[Path] = None
    durations: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def of(queries: Iterable[str], documents: Iterable[str],
           occurrences: Mapping[str, Iterable[str]]) -> "GroundTruth":
        """A ground truth built in memory (names are matched by file stem, as in files)."""
        docs = tuple(_name_key(d) for d in documents)
        return GroundTruth(queries=tuple(queries), documents=docs,
                           occurrences={q: frozenset(_name_key(d) for d in ds) for q, ds in occurrences.items()})

    @property
    def scored_queries(self) -> List[str]:
        """The queries that count: listed, and occurring in at least one listed document."""
        docs = set(self.documents)
        return [q for q in self.queries if self.occurrences.get(q, frozenset()) & docs]


def groundtruth_dir(dataset_root: PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise QbEError(f"split must be one of {', '.join(SPLITS)} (QUESST 2014 dev or eval queries), got {split!r}; "
                       "SUPERB's -t test runs the eval queries")
    return Path(dataset_root) / "scoring" / f"groundtruth_quesst14_{split}"


def _one_file(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        # the scoring script globs each kind and passes the match on: it needs exactly one
        raise QbEError(f"{folder} must hold exactly one {pattern} file (the scoring tool globs it), found "
                       f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}")
    return found[0]


def read_groundtruth(dataset_root: PathLike, split: str) -> GroundTruth:
    """The ground truth of QUESST 2014 ``split`` ("dev" or "eval") from ``scoring/groundtruth_quesst14_<split>/``.

    That folder holds the three NIST STD 2006 files the scoring tool takes: ``*.ecf.xml`` (the documents, as
    ``<excerpt audio_filename="Audio/<doc>.wav" ... dur=...>``), ``*.tlist.xml`` (the queries, as
    ``<term termid="quesst14_<split>_NNNN">``) and ``*.rttm`` (one ``LEXEME <doc> <chan> <tbeg> <dur>
    <termid> ...`` line per occurrence). Lines of other types, and LEXEMEs naming no listed query, are
    ignored, as are occurrences in documents the ECF does not list (they are no trial).
    """
    folder = groundtruth_dir(dataset_root, split)
    if not folder.is_dir():
        raise QbEError(f"{folder} does not exist: {dataset_root} is not a QUESST 2014 database with {split} ground "
                       "truth; point dataset_root at the extracted quesst14Database folder (or one made by "
                       "make-corpus --tasks qbe)")
    ecf_path, tlist_path, rttm_path = (_one_file(folder, p) for p in ("*.ecf.xml", "*.tlist.xml", "*.rttm"))
    fix = "restore the folder from the QUESST 2014 archive or regenerate the mini corpus"

    ecf = _parse_xml(ecf_path, "ECF", fix)
    documents: List[str] = []
    durations: Dict[str, float] = {}
    for excerpt in ecf.iter("excerpt"):
        name = excerpt.get("audio_filename")
        if not name:
            raise QbEError(f"{ecf_path}: an <excerpt> has no audio_filename; {fix}")
        doc = _name_key(name)
        if doc in durations:
            raise QbEError(f"{ecf_path}: document {doc!r} is listed twice; {fix}")
        documents.append(doc)
        try:
            durations[doc] = float(excerpt.get("dur", "nan"))
        except ValueError:
            durations[doc] = math.nan
    if not documents:
        raise QbEError(f"{ecf_path} lists no <excerpt>; {fix}")

    tlist = _parse_xml(tlist_path, "term list", fix)
    queries: List[str] = []
    for term in tlist.iter("term"):
        termid = (term.get("termid") or "").strip()
        if not termid:
            raise QbEError(f"{tlist_path}: a <term> has no termid; {fix}")
        if termid not in queries:
            queries.append(termid)
    if not queries:
        raise QbEError(f"{tlist_path} lists no <term>; {fix}")

    known, listed = set(queries), set(documents)
    occurrences: Dict[str, set] = {}
    for number, line in enumerate(rttm_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "LEXEME":
            continue
        if len(fields) < 6:
            raise QbEError(f"{rttm_path}:{number}: a LEXEME line needs at least 6 fields "
                           f"(LEXEME file channel tbeg dur termid ...), got {line.strip()!r}; {fix}")
        doc, termid = _name_key(fields[1]), fields[5]
        if termid in known and doc in listed:
            occurrences.setdefault(termid, set()).add(doc)
    return GroundTruth(queries=tuple(queries), documents=tuple(documents),
                       occurrences={q: frozenset(d) for q, d in occurrences.items()}, split=split, folder=folder,
                       durations=durations)


# ----------------------------------------------------------------------------------------------------
# TWV


@dataclass(frozen=True)
class _Trials:
    """Every scored (query, document) trial as flat arrays: its score, the system's decision, and its
    contribution to TWV when detected (+1/(N_true*Q) for a hit, -beta/(N_false*Q) for a false alarm), so
    that TWV at any threshold is the sum of the gains of the trials detected at it."""

    scores: np.ndarray
    decisions: np.ndarray
    gains: np.ndarray
    queries: int
    documents: int
    defaulted: int  # trials filled with the default score


def _trials(detections: Mapping[str, Mapping[str, Tuple[float, bool]]], truth: GroundTruth, beta: float,
            default_score: float) -> _Trials:
    scored = truth.scored_queries
    if not scored:
        raise QbEError("no query of the ground truth occurs in any of its documents, so TWV is undefined; "
                       "check that the rttm names the tlist's termids and the ECF's documents")
    if not any(q in detections for q in truth.queries):
        split = f" {truth.split}" if truth.split else ""
        raise QbEError(f"none of the {len(detections)} queries in the system output is a{split} query of the ground "
                       f"truth (e.g. {next(iter(detections), '?')!r} vs {truth.queries[0]!r}); score a dev run "
                       "against split 'dev' and a test run (-t test) against split 'eval'")
    doc_index = {d: i for i, d in enumerate(truth.documents)}
    n_docs, n_queries = len(truth.documents), len(scored)
    scores = np.full((n_queries, n_docs), float(default_score))
    decisions = np.zeros((n_queries, n_docs), dtype=bool)
    gains = np.empty((n_queries, n_docs))
    given = 0
    for row, query in enumerate(scored):
        for doc, (score, decision) in detections.get(query, {}).items():
            col = doc_index.get(doc)
            if col is not None:  # documents outside the ECF are no trial
                scores[row, col], decisions[row, col] = score, decision
                given += 1
        targets = np.zeros(n_docs, dtype=bool)
        targets[[doc_index[d] for d in truth.occurrences[query] if d in doc_index]] = True
        n_true = int(targets.sum())
        n_false = n_docs - n_true
        gains[row] = np.where(targets, 1.0 / (n_true * n_queries),
                              -beta / (n_false * n_queries) if n_false else 0.0)
    return _Trials(scores=scores.ravel(), decisions=decisions.ravel(), gains=gains.ravel(), queries=n_queries,
                   documents=n_docs, defaulted=n_queries * n_docs - given)


def _max_twv(t: _Trials) -> Tuple[float, float]:
    order = np.argsort(-t.scores, kind="stable")
    scores, gains = t.scores[order], t.gains[order]
    # the last trial of each run of equal scores: a threshold admits all of a tie or none of it
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    totals = np.cumsum(gains)[ends]
    # rounding away cumulative noise lets equal values tie, and argmax then keeps the highest threshold
    k = int(np.argmax(np.round(totals, 12)))
    value = float(math.fsum(gains[: ends[k] + 1]))  # the winning prefix again, without cumulative rounding
    if value > 0.0:
        return value, float(scores[ends[k]])
    return 0.0, math.inf


def term_weighted_value(detections: Mapping[str, Mapping[str, Tuple[float, bool]]], truth: GroundTruth,
                        threshold: float, *, beta: float = BETA, default_score: float = DEFAULT_SCORE) -> float:
    """TWV when every trial with ``score >= threshold`` is a detection (see the module docstring)."""
    t = _trials(detections, truth, beta, default_score)
    return float(math.fsum(t.gains[t.scores >= threshold]))


def maximum_term_weighted_value(detections: Mapping[str, Mapping[str, Tuple[float, bool]]], truth: GroundTruth,
                                *, beta: float = BETA, default_score: float = DEFAULT_SCORE) -> Tuple[float, float]:
    """``(MTWV, threshold)``: the best TWV over all thresholds and the highest threshold reaching it.

    Exact: TWV only changes at the trial scores, so the trials are sorted once by score (O(n log n)) and
    every distinct score is tried as the threshold, tied scores entering together. Detecting nothing
    (TWV 0, threshold +inf) is one of the candidates, so MTWV is never negative.
    """
    return _max_twv(_trials(detections, truth, beta, default_score))


def actual_term_weighted_value(detections: Mapping[str, Mapping[str, Tuple[float, bool]]], truth: GroundTruth,
                               *, beta: float = BETA) -> float:
    """ATWV: TWV of the system's own YES decisions (trials missing from the output count as NO)."""
    t = _trials(detections, truth, beta, DEFAULT_SCORE)
    return float(math.fsum(t.gains[t.decisions]))


# ----------------------------------------------------------------------------------------------------
# the database's scoring tool


def parse_tool_output(text: str) -> Optional[Dict[str, float]]:
    """``actTWV``/``maxTWV``/``Threshold`` (and ``actCnxe``/``minCnxe`` when printed) from the scoring tool's
    output, or None when it printed no result line."""
    twv = _TWV_LINE.search(text)
    if twv is None:
        return None
    out = {"atwv": float(twv.group(1)), "mtwv": float(twv.group(2)), "threshold": float(twv.group(3))}
    cnxe = _CNXE_LINE.search(text)
    if cnxe is not None:
        out.update(act_cnxe=float(cnxe.group(1)), min_cnxe=float(cnxe.group(2)))
    return out


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def run_scoring_tool(stdlist_xml: PathLike, dataset_root: PathLike, split: str, *,
                     default_score: float = DEFAULT_SCORE, timeout: float = 1800.0) -> Dict[str, object]:
    """Run ``scoring/score-TWV-Cnxe.sh`` the way SUPERB does and return its parsed result.

    The script scores every ``*.stdlist.xml`` of the folder it is given and writes its plots and
    ``score.out`` there, so the system output is copied alone into a temporary folder first (an expdir may
    hold older outputs, and we leave it untouched). It runs from the scoring folder, which holds the jar it
    calls by a relative name, with ``groundtruth_quesst14_<split>`` and the default score as SUPERB passes
    them. It is run through ``bash`` because unpacked copies often lose the executable bit. The result line
    is accepted even when the script exits non-zero afterwards: its last steps only draw plots (gnuplot,
    ps2pdf), which are often missing. Raises :class:`QbEError` saying why when no result line was printed.
    """
    root = Path(dataset_root)
    scoring = root / "scoring"
    tool = scoring / TOOL_NAME
    if not tool.is_file():
        raise QbEError(f"{tool} does not exist; it ships in the QUESST 2014 archive's scoring folder")
    bash = shutil.which("bash")
    if bash is None:
        raise QbEError(f"{TOOL_NAME} needs bash, which is not on PATH; install bash or use our own TWV")
    groundtruth = groundtruth_dir(root, split).name
    with tempfile.TemporaryDirectory(prefix="qbe_score_") as work:
        shutil.copyfile(stdlist_xml, Path(work) / STDLIST_NAME)
        command = [bash, TOOL_NAME, work, groundtruth, f"{default_score:g}"]
        try:
            done = subprocess.run(command, cwd=scoring, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QbEError(f"{TOOL_NAME} did not finish within {timeout:g} s; raise the timeout or use our own "
                           "TWV") from None
        except OSError as exc:
            raise QbEError(f"{TOOL_NAME} could not be started ({exc})") from None
        text = done.stdout
        saved = Path(work) / "score.out"
        if _TWV_LINE.search(text) is None and saved.is_file():
            text = saved.read_text(encoding="utf-8", errors="replace")
    parsed = parse_tool_output(text)
    if parsed is None:
        raise QbEError(f"{TOOL_NAME} exited with status {done.returncode} without printing an 'actTWV: ... maxTWV: ... "
                       f"Threshold: ...' line (it needs java and bc); last output: {_tail(done.stderr + done.stdout)}")
    if not all(math.isfinite(parsed[k]) for k in ("atwv", "mtwv")):
        raise QbEError(f"{TOOL_NAME} printed a non-finite TWV ({parsed}); check the system output and ground truth")
    return {**parsed, "returncode": done.returncode, "output": text}


def score_stdlist(stdlist_xml: PathLike, dataset_root: PathLike, split: str, *, use_tool: bool = True,
                  default_score: float = DEFAULT_SCORE, timeout: float = 1800.0) -> Dict[str, object]:
    """Score a QbE system output (``benchmark.stdlist.xml``) against QUESST 2014 ``split`` ("dev"/"eval").

    Returns ``mtwv``, ``threshold`` (the lowest detected score at MTWV; +inf when detecting nothing is best),
    ``atwv``, ``queries`` (queries scored), ``documents``, ``defaulted_trials`` (trials missing from the output)
    and ``tool``. When ``use_tool`` and the database's
    ``score-TWV-Cnxe.sh`` exists and prints a result, ``tool`` is that script's name, ``mtwv``/``atwv``/
    ``threshold`` are its numbers and ours are kept as ``mtwv_ours``/``atwv_ours``/``threshold_ours``;
    otherwise ``tool`` is ``"lighthubert_s3prl"``, and if the script existed but failed a
    :class:`QbEToolWarning` says why (also kept as ``tool_error``).
    """
    truth = read_groundtruth(dataset_root, split)
    detections = read_stdlist(stdlist_xml)
    trials = _trials(detections, truth, BETA, default_score)
    mtwv, threshold = _max_twv(trials)
    result: Dict[str, object] = {
        "mtwv": mtwv, "threshold": threshold, "atwv": float(math.fsum(trials.gains[trials.decisions])),
        "queries": trials.queries, "documents": trials.documents, "defaulted_trials": trials.defaulted,
        "split": split, "p_target": P_TARGET, "c_miss": C_MISS, "c_fa": C_FA, "beta": BETA,
        "default_score": default_score, "tool": OURS,
    }
    if use_tool and (Path(dataset_root) / "scoring" / TOOL_NAME).is_file():
        try:
            found = run_scoring_tool(stdlist_xml, dataset_root, split, default_score=default_score, timeout=timeout)
        except QbEError as exc:
            warnings.warn(f"QUESST scoring tool not used, reporting our own MTWV instead: {exc}", QbEToolWarning,
                          stacklevel=2)
            result["tool_error"] = str(exc)
        else:
            result.update(mtwv_ours=mtwv, atwv_ours=result["atwv"], threshold_ours=threshold,
                          mtwv=found["mtwv"], atwv=found["atwv"], threshold=found["threshold"], tool=TOOL_NAME,
                          tool_returncode=found["returncode"])
            for key in ("act_cnxe", "min_cnxe"):
                if key in found:
                    result[key] = found[key]
    return result
