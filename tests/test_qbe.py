"""QbE scoring (TWV, MTWV, ATWV on QUESST 2014 files) and the synthetic QUESST 2014 mini set.

Expected TWV values are worked out by hand from the definition
TWV = 1 - (1/Q) * sum_q [P_miss(q) + beta * P_fa(q)], P_fa(q) = N_fa(q) / (N_docs - N_true(q)),
over the queries that occur at least once.
"""
from __future__ import annotations

import math
import stat
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pytest
from lxml import etree

from lighthubert_s3prl.superb import corpus, qbe
from lighthubert_s3prl.superb.corpus_quesst import build_quesst
from lighthubert_s3prl.superb.qbe import (
    GroundTruth, QbEError, QbEToolWarning, actual_term_weighted_value, maximum_term_weighted_value,
    read_groundtruth, read_stdlist, score_stdlist, term_weighted_value,
)

DOCS = [f"quesst14_{i:05d}" for i in range(1, 6)]
Q1, Q2, Q3 = "quesst14_dev_0001", "quesst14_dev_0002", "quesst14_dev_0003"
D1, D2, D3, D4, D5 = DOCS

# Case A: q1 occurs in d1, d2 (2 targets, 3 non-targets); q2 in d3 (1 target, 4 non-targets); q3 nowhere,
# so it is not scored even though it has a confident YES; q2's d5 is missing from the output.
CASE_A = {
    Q1: {D1: (0.9, True), D2: (0.4, False), D3: (0.5, False), D4: (0.1, False), D5: (-0.2, False)},
    Q2: {D3: (0.7, True), D1: (0.6, True), D2: (0.3, False), D4: (0.2, False)},
    Q3: {D1: (0.95, True), D2: (0.0, False)},
}
TRUTH_A = GroundTruth.of([Q1, Q2, Q3], DOCS, {Q1: [D1, D2], Q2: [D3]})


def test_beta_and_effective_prior_of_quesst_parameters():
    # beta = C_fa/C_miss * (1 - P_target)/P_target with P_target 0.0008, C_miss 100, C_fa 1
    assert qbe.BETA == pytest.approx(0.01 * 0.9992 / 0.0008) == pytest.approx(12.49)
    # the prior the scoring script hands the jar: C_miss*P / (C_miss*P + C_fa*(1-P)) = 0.08 / 1.0792
    assert 1.0 / (1.0 + qbe.BETA) == pytest.approx(0.0741289, abs=1e-7)


def test_mtwv_with_quesst_beta_stops_before_the_first_false_alarm():
    # At theta=0.7: q1 finds d1 only (P_miss 1/2), q2 finds d3 (P_miss 0), no false alarm.
    # Lower, the first extra detection is q2's false alarm on d1, costing beta/4/2 = 1.56 > any gain left.
    mtwv, threshold = maximum_term_weighted_value(CASE_A, TRUTH_A)
    assert mtwv == pytest.approx(1 - 0.5 * (0.5 + 0.0))
    assert threshold == 0.7


def test_mtwv_with_small_beta_picks_an_inner_threshold():
    beta = 0.5
    # theta in (0.3, 0.4]: q1 hits d1, d2 and false-alarms on d3 (1 of 3); q2 hits d3, false-alarms on d1 (1 of 4)
    best = 1 - 0.5 * ((0 + beta * 1 / 3) + (0 + beta * 1 / 4))
    assert best == pytest.approx(41 / 48)
    mtwv, threshold = maximum_term_weighted_value(CASE_A, TRUTH_A, beta=beta)
    assert (mtwv, threshold) == (pytest.approx(best), 0.4)
    # a threshold equal to a score detects that trial
    assert term_weighted_value(CASE_A, TRUTH_A, 0.4, beta=beta) == pytest.approx(best)
    # a few thresholds by hand: between 0.5 and 0.6, and accept-all
    assert term_weighted_value(CASE_A, TRUTH_A, 0.45, beta=beta) == pytest.approx(
        1 - 0.5 * ((0.5 + beta * 1 / 3) + (0 + beta * 1 / 4)))
    assert term_weighted_value(CASE_A, TRUTH_A, -100.0, beta=beta) == pytest.approx(1 - beta)
    # above nothing: TWV is 0 exactly (every query misses everything, no false alarm)
    assert term_weighted_value(CASE_A, TRUTH_A, 5.0, beta=beta) == 0.0


def test_missing_document_is_a_rejected_trial_at_the_default_score():
    beta = 0.5
    # theta=-5 detects every reported trial; q2's unreported d5 sits at -10, so it is a non-target trial that
    # was not detected: q2 P_fa = 3/4 (its denominator stays 4), q1 P_fa = 3/3
    assert term_weighted_value(CASE_A, TRUTH_A, -5.0, beta=beta) == pytest.approx(1 - 0.5 * (beta * 1 + beta * 3 / 4))
    # with a default score above everything it is detected first, an immediate false alarm
    assert term_weighted_value(CASE_A, TRUTH_A, 5.0, beta=beta, default_score=10.0) == pytest.approx(
        1 - 0.5 * ((1 + 0) + (1 + beta * 1 / 4)))


def test_missing_target_and_missing_query_count_as_misses():
    docs = DOCS[:4]
    truth = GroundTruth.of([Q1, Q2], docs, {Q1: [D1, D2], Q2: [D3]})
    # q1's target d2 is not reported, q2 is not reported at all
    out = {Q1: {D1: (1.0, True), D3: (0.0, False), D4: (0.5, False)}}
    mtwv, threshold = maximum_term_weighted_value(out, truth)
    assert (mtwv, threshold) == (pytest.approx(1 - 0.5 * ((1 - 1 / 2) + 1)), 1.0)
    assert actual_term_weighted_value(out, truth) == pytest.approx(0.25)


def test_atwv_uses_the_yes_decisions_not_the_scores():
    # YES: q1-d1 (hit), q2-d3 (hit), q2-d1 (false alarm, 1 of 4 non-targets); q3 is not scored
    assert actual_term_weighted_value(CASE_A, TRUTH_A) == pytest.approx(1 - 0.5 * (0.5 + qbe.BETA / 4))
    assert actual_term_weighted_value(CASE_A, TRUTH_A) == pytest.approx(-0.81125)


def test_tied_scores_enter_together():
    truth = GroundTruth.of([Q1], DOCS[:3], {Q1: [D1]})
    out = {Q1: {D1: (0.5, True), D2: (0.5, False), D3: (0.1, False)}}
    # d1 cannot be detected without d2: TWV(0.5) = 1 - (0 + 0.5 * 1/2); detecting d1 alone (1.0) is impossible
    assert maximum_term_weighted_value(out, truth, beta=0.5) == (pytest.approx(0.75), 0.5)


def test_no_detection_beats_a_system_that_only_false_alarms():
    truth = GroundTruth.of([Q1], DOCS[:3], {Q1: [D1]})
    out = {Q1: {D1: (0.0, False), D2: (1.0, True), D3: (0.5, False)}}
    assert maximum_term_weighted_value(out, truth) == (0.0, math.inf)


def test_undefined_or_mismatched_inputs_name_the_fix():
    with pytest.raises(QbEError, match="no query of the ground truth occurs"):
        maximum_term_weighted_value(CASE_A, GroundTruth.of([Q1, Q2], DOCS, {}))
    eval_truth = GroundTruth.of(["quesst14_eval_0001"], DOCS, {"quesst14_eval_0001": [D1]})
    with pytest.raises(QbEError, match=r"score a dev run against split 'dev'"):
        maximum_term_weighted_value(CASE_A, eval_truth)


# ----------------------------------------------------------------------------------------------------
# files: system output as s3prl writes it, ground truth as QUESST 2014 ships it


def write_s3prl_stdlist(path: Path, detections: Mapping[str, Mapping[str, Tuple[float, bool]]]) -> Path:
    """The system output in the shape s3prl's quesst14_dtw expert writes (lxml, same attributes)."""
    root = etree.Element("stdlist", termlist_filename="benchmark.stdlist.xml", indexing_time="1.00",
                         language="english", index_size="1", system_id="benchmark")
    for query, docs in detections.items():
        block = etree.SubElement(root, "detected_termlist", termid=query, term_search_time="1.0",
                                 oov_term_count="1")
        for doc, (score, decision) in docs.items():
            etree.SubElement(block, "term", file=doc, channel="1", tbeg="0.000", dur="0.00", score=f"{score:.4f}",
                             decision="YES" if decision else "NO")
    path.parent.mkdir(parents=True, exist_ok=True)
    etree.ElementTree(root).write(str(path), encoding="UTF-8", pretty_print=True)
    return path


def write_groundtruth(root: Path, split: str, docs: Sequence[str], queries: Sequence[str],
                      occurrences: Mapping[str, Sequence[str]]) -> Path:
    """A QUESST 2014 style ground-truth folder: ECF, term list and RTTM (with lines the scorer ignores)."""
    folder = root / "scoring" / f"groundtruth_quesst14_{split}"
    folder.mkdir(parents=True, exist_ok=True)
    ecf = ['<?xml version="1.0" encoding="UTF-8"?>', '<ecf source_signal_duration="10.0" version="test">']
    ecf += [f'<excerpt audio_filename="Audio/{d}.wav" channel="1" tbeg="0.000" dur="2.0" source_type="x"/>'
            for d in docs]
    (folder / "quesst14.ecf.xml").write_text("\n".join(ecf + ["</ecf>"]) + "\n")
    tlist = ['<?xml version="1.0" encoding="UTF-8"?>', '<termlist ecf_filename="quesst14.ecf.xml" version="test">']
    tlist += [f'<term termid="{q}"><termtext>{q}</termtext></term>' for q in queries]
    (folder / f"quesst14_{split}.tlist.xml").write_text("\n".join(tlist + ["</termlist>"]) + "\n")
    rttm = [";; a comment line"]
    for d in docs:
        rttm.append(f"SPEAKER {d} 1 0.000 2.000 <NA> <NA> spk <NA>")
        rttm += [f"LEXEME {d} 1 0.500 0.600 {q} lex spk <NA>" for q, ds in occurrences.items() if d in ds]
    rttm.append(f"LEXEME {docs[-1]} 1 0.000 2.000 NO_KEYWORD lex spk <NA>")
    (folder / f"quesst14_{split}.rttm").write_text("\n".join(rttm) + "\n")
    return folder


@pytest.fixture
def case_a_files(tmp_path) -> Tuple[Path, Path]:
    root = tmp_path / "quesst14Database"
    write_groundtruth(root, "dev", DOCS, [Q1, Q2, Q3], {Q1: [D1, D2], Q2: [D3]})
    return root, write_s3prl_stdlist(tmp_path / "exp" / "benchmark.stdlist.xml", CASE_A)


def test_read_stdlist_reads_s3prl_output(case_a_files):
    _, xml = case_a_files
    assert read_stdlist(xml) == CASE_A


@pytest.mark.parametrize("body, message", [
    ("<stdlist><detected_termlist termid='q'><term file='d' score='x' decision='NO'/>", "not well-formed"),
    ("<results/>", r"root element is <results>, expected <stdlist>"),
    ("<stdlist/>", "holds no <detected_termlist>"),
    ("<stdlist><detected_termlist><term file='d' score='1' decision='NO'/></detected_termlist></stdlist>",
     "has no termid"),
    ("<stdlist><detected_termlist termid='q'><term file='d' score='high' decision='NO'/></detected_termlist></stdlist>",
     "score 'high' is not a number"),
    ("<stdlist><detected_termlist termid='q'><term file='d' score='nan' decision='NO'/></detected_termlist></stdlist>",
     "is not finite"),
    ("<stdlist><detected_termlist termid='q'><term file='d' score='1' decision='MAYBE'/></detected_termlist></stdlist>",
     "decision 'MAYBE' is not YES or NO"),
    ("<stdlist><detected_termlist termid='q'><term file='d' decision='NO'/></detected_termlist></stdlist>",
     "lacks its file or score"),
    ("<stdlist><detected_termlist termid='q'><term file='d' score='1' decision='NO'/>"
     "<term file='d' score='2' decision='NO'/></detected_termlist></stdlist>", "document 'd' is listed twice"),
    ("<stdlist><detected_termlist termid='q'/><detected_termlist termid='q'/></stdlist>", "two <detected_termlist>"),
])
def test_read_stdlist_rejects_malformed_files(tmp_path, body, message):
    path = tmp_path / "benchmark.stdlist.xml"
    path.write_text(body)
    with pytest.raises(QbEError, match=message):
        read_stdlist(path)
    with pytest.raises(QbEError, match="does not exist"):
        read_stdlist(tmp_path / "missing.xml")


def test_read_groundtruth_reads_quesst_files(case_a_files):
    root, _ = case_a_files
    truth = read_groundtruth(root, "dev")
    assert truth.documents == tuple(DOCS) and truth.queries == (Q1, Q2, Q3)
    assert dict(truth.occurrences) == {Q1: {D1, D2}, Q2: {D3}}
    assert truth.scored_queries == [Q1, Q2]


def test_read_groundtruth_errors_name_the_fix(case_a_files):
    root, _ = case_a_files
    with pytest.raises(QbEError, match=r"groundtruth_quesst14_eval does not exist.*quesst14Database"):
        read_groundtruth(root, "eval")
    with pytest.raises(QbEError, match="split must be one of dev, eval"):
        read_groundtruth(root, "test")
    folder = root / "scoring" / "groundtruth_quesst14_dev"
    (folder / "extra.rttm").write_text("")
    with pytest.raises(QbEError, match=r"exactly one \*\.rttm file .* found 2"):
        read_groundtruth(root, "dev")
    (folder / "extra.rttm").write_text("LEXEME quesst14_00001 1 0.0\n")
    (folder / "quesst14_dev.rttm").unlink()
    with pytest.raises(QbEError, match=r"extra.rttm:1: a LEXEME line needs at least 6 fields"):
        read_groundtruth(root, "dev")


def test_score_stdlist_end_to_end_without_the_tool(case_a_files):
    root, xml = case_a_files
    result = score_stdlist(xml, root, "dev")
    assert result["tool"] == "lighthubert_s3prl"
    assert result["mtwv"] == pytest.approx(0.75) and result["threshold"] == 0.7
    assert result["atwv"] == pytest.approx(-0.81125)
    assert (result["queries"], result["documents"], result["defaulted_trials"]) == (2, 5, 1)


FAKE_TOOL_OUTPUT = """\
Loading tlist file: groundtruth/Query.tlist.xml ...  Done (size: 3)
Scores: 15 (3 model x 5 test)  given: 14  default(null): 1  minScore: -10.0  maxScore: 0.95

Main Results:

actTWV: 0.40079603  maxTWV: 0.41911224  Threshold: 5.2125
actCnxe: 0.97036207  minCnxe: 0.6852714

Model-dependent calibration Results:

Upper-bound TWV (model-dependent offset)  -  actTWV: 0.5082787  maxTWV: 0.5082787  Threshold: 0.0
Lower-bound Cnxe (model-dependent PAV)    -  actCnxe: 0.46791807  minCnxe: 0.4677087
"""


def _fake_tool(root: Path, body: str) -> None:
    tool = root / "scoring" / "score-TWV-Cnxe.sh"
    tool.write_text("#!/bin/bash -e\n" + body)
    tool.chmod(tool.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))  # as unpacked without +x


def test_score_stdlist_reports_the_tools_numbers_when_it_prints_them(case_a_files):
    root, xml = case_a_files
    (root / "scoring" / "tool_output.txt").write_text(FAKE_TOOL_OUTPUT)
    # checks it is called as SUPERB calls it, prints the result like the jar, then fails in the plotting step
    _fake_tool(root, """\
[ -f ./score-TWV-Cnxe.sh ] || { echo "not run from the scoring folder" >&2; exit 9; }
[ "$2" = groundtruth_quesst14_dev ] && [ "$3" = -10 ] || { echo "bad arguments: $*" >&2; exit 9; }
[ $(ls "$1"/*.stdlist.xml | wc -l) -eq 1 ] || { echo "no single stdlist in $1" >&2; exit 9; }
grep -q 'detected_termlist termid="quesst14_dev_0002"' "$1"/*.stdlist.xml || exit 9
cat tool_output.txt | tee "$1/score.out"
echo "gnuplot: command not found" >&2
exit 127
""")
    result = score_stdlist(xml, root, "dev")
    assert result["tool"] == "score-TWV-Cnxe.sh"
    assert (result["mtwv"], result["atwv"], result["threshold"]) == (0.41911224, 0.40079603, 5.2125)
    assert (result["act_cnxe"], result["min_cnxe"]) == (0.97036207, 0.6852714)
    assert result["mtwv_ours"] == pytest.approx(0.75) and result["atwv_ours"] == pytest.approx(-0.81125)
    assert result["tool_returncode"] == 127
    assert sorted(p.name for p in xml.parent.iterdir()) == ["benchmark.stdlist.xml"]  # expdir left untouched
    assert score_stdlist(xml, root, "dev", use_tool=False)["tool"] == "lighthubert_s3prl"


def test_failing_tool_falls_back_to_our_value_with_the_reason(case_a_files):
    root, xml = case_a_files
    _fake_tool(root, 'echo "Error: Unable to access jarfile MediaEvalQUESST2014.jar" >&2\nexit 1\n')
    with pytest.warns(QbEToolWarning, match=r"exited with status 1 .*Unable to access jarfile"):
        result = score_stdlist(xml, root, "dev")
    assert result["tool"] == "lighthubert_s3prl" and result["mtwv"] == pytest.approx(0.75)
    assert "Unable to access jarfile" in result["tool_error"] and "mtwv_ours" not in result


# ----------------------------------------------------------------------------------------------------
# the mini corpus


@pytest.fixture(scope="module")
def quesst(tmp_path_factory) -> dict:
    """The QbE set at the ci preset's sizes, built with the real synthesizer, plus what was asked of it."""
    from lighthubert_s3prl.superb._espeak import EspeakSynthesizer

    root = tmp_path_factory.mktemp("qbe") / "quesst14Database"
    root.mkdir()
    spoken: Dict[str, Tuple[str, str]] = {}  # uid -> (text, voice)
    pieces: Dict[str, np.ndarray] = {}
    original = corpus._Build.speak

    def recording_speak(self, jobs, desc):
        for uid, req in jobs:
            spoken[uid] = (req.text, req.voice)
        for uid, audio in original(self, jobs, desc):
            pieces[uid] = audio
            yield uid, audio

    preset = corpus.PRESETS["ci"]
    with EspeakSynthesizer() as tts, pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus._Build, "speak", recording_speak)
        build = corpus._Build(tts, 0, root, "quesst14Database")
        info = build_quesst(build, preset)
    return {"root": root, "info": info["qbe"], "spoken": spoken, "pieces": pieces, "preset": preset}


def test_s3prl_finds_every_query_and_document(quesst):
    from s3prl.downstream.quesst14_dtw.dataset import english_audio_paths

    root, preset = quesst["root"], quesst["preset"]
    docs = english_audio_paths(root, "language_key_utterances.lst")
    assert len(docs) == preset.qbe_documents == quesst["info"]["files"]["documents"]
    assert sorted(docs) == sorted((root / "Audio").glob("*.wav"))
    for split in ("dev", "eval"):
        queries = english_audio_paths(root, f"language_key_{split}.lst")
        assert len(queries) == preset.qbe_terms
        assert sorted(queries) == sorted((root / f"{split}_queries").glob("*.wav"))
        assert all(p.stem.startswith(f"quesst14_{split}_") for p in queries)


def _document_texts(spoken: Mapping[str, Tuple[str, str]]) -> Dict[str, List[str]]:
    texts: Dict[str, List[str]] = defaultdict(list)
    for uid in sorted(u for u in spoken if "#" in u):
        doc, _ = uid.split("#")
        texts[doc] += spoken[uid][0].split()
    return texts


def test_groundtruth_agrees_with_what_was_spoken(quesst):
    spoken, root = quesst["spoken"], quesst["root"]
    texts = _document_texts(spoken)
    for split in ("dev", "eval"):
        truth = read_groundtruth(root, split)
        assert set(truth.documents) == set(texts)
        for query in truth.queries:
            word = spoken[query][0]
            assert len(word.split()) == 1 and len(word) >= 6  # a single content word
            holding = {d for d, words in texts.items() if word in words}
            assert truth.occurrences.get(query, frozenset()) == holding
            assert len(holding) >= 2
    per_doc = [sum(spoken[q][0] in words for q in read_groundtruth(root, "dev").queries) for words in texts.values()]
    assert set(per_doc) == {0, 1, 2}  # documents with no term, one term and two terms
    # query talkers never speak a document; dev and eval queries come from different talkers
    doc_voices = {v.split("+")[0] + "+" + v.split("+")[1] for u, (_, v) in spoken.items() if "#" in u}
    dev_voices = {spoken[q][1] for q in read_groundtruth(root, "dev").queries}
    eval_voices = {spoken[q][1] for q in read_groundtruth(root, "eval").queries}
    assert not (dev_voices | eval_voices) & doc_voices and not dev_voices & eval_voices


def test_rttm_times_point_at_the_spoken_term(quesst):
    import soundfile

    root, pieces, spoken = quesst["root"], quesst["pieces"], quesst["spoken"]
    rttm = (root / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm").read_text().splitlines()
    checked = 0
    for line in rttm:
        fields = line.split()
        if fields[0] != "LEXEME":
            continue
        doc, start, length, query = fields[1], float(fields[3]), float(fields[4]), fields[5]
        audio, rate = soundfile.read(str(root / "Audio" / f"{doc}.wav"), dtype="float32")
        segment = audio[round(start * rate): round(start * rate) + round(length * rate)]
        word = spoken[query][0]
        piece = next(pieces[u] for u, (text, _) in spoken.items() if u.startswith(doc + "#") and text == word)
        assert abs(len(segment) - len(piece)) <= 0.001 * rate  # times are written to the millisecond
        # so the span may be off by up to half a millisecond: take the best alignment within one
        lag = int(0.001 * rate)
        padded = np.pad(segment, lag)
        n = len(piece) - lag
        best = max(np.corrcoef(padded[k:k + n], piece[:n])[0, 1] for k in range(2 * lag + 1))
        assert best > 0.95
        checked += 1
    assert checked == quesst["info"]["occurrences"]


def _oracle(truth: GroundTruth, reverse: bool = False) -> Dict[str, Dict[str, Tuple[float, bool]]]:
    out = {}
    for q in truth.queries:
        out[q] = {}
        for d in truth.documents:
            hit = d in truth.occurrences.get(q, frozenset())
            score = float(hit != reverse)
            out[q][d] = (score, score > 0.5)
    return out


@pytest.mark.parametrize("split", ["dev", "eval"])
def test_oracle_scores_one_and_reversed_oracle_at_most_zero(quesst, tmp_path, split):
    root = quesst["root"]
    truth = read_groundtruth(root, split)
    oracle = write_s3prl_stdlist(tmp_path / "oracle" / "benchmark.stdlist.xml", _oracle(truth))
    best = score_stdlist(oracle, root, split)
    assert best["tool"] == "lighthubert_s3prl"
    assert best["mtwv"] == pytest.approx(1.0) and best["atwv"] == pytest.approx(1.0)
    assert best["queries"] == quesst["preset"].qbe_terms and best["defaulted_trials"] == 0
    worst = score_stdlist(write_s3prl_stdlist(tmp_path / "reversed" / "benchmark.stdlist.xml",
                                              _oracle(truth, reverse=True)), root, split)
    assert worst["mtwv"] <= 0.0 and worst["atwv"] < 0.0


def test_s3prl_dtw_recipe_output_scores_above_chance_on_the_mini_set(quesst, tmp_path):
    """s3prl's own DTW stage (its expert's log_records) on MFCCs writes the file we score: the words are
    findable across talkers even by a plain spectral feature."""
    import soundfile
    import torch
    import torchaudio
    from s3prl.downstream.quesst14_dtw.dataset import english_audio_paths
    from s3prl.downstream.quesst14_dtw.expert import DownstreamExpert

    root = quesst["root"]
    queries = english_audio_paths(root, "language_key_dev.lst")
    docs = english_audio_paths(root, "language_key_utterances.lst")
    mfcc = torchaudio.transforms.MFCC(16000, n_mfcc=13, melkwargs=dict(n_fft=400, hop_length=160, n_mels=40))
    features = [mfcc(torch.from_numpy(soundfile.read(str(p), dtype="float32")[0])).T for p in queries + docs]
    config = dict(max_workers=1, feature_normalization=True, silence_frame=None,
                  datarc=dict(dataset_root=str(root), num_workers=0, batch_size=1),
                  dtwrc=dict(dist_method="cosine_exp", minmax_norm=True, step_pattern="asymmetric", subsequence=True))
    expert = DownstreamExpert(13, config, str(tmp_path))
    expert.test_dataset = type("Loaded", (), {"n_queries": len(queries)})()
    records: Dict[str, list] = defaultdict(list)
    expert.forward("dev", features, [p.stem for p in queries + docs], records)
    expert.log_records("dev", records)

    detections = read_stdlist(tmp_path / "benchmark.stdlist.xml")
    assert set(detections) == {p.stem for p in queries}
    assert all(set(v) == {p.stem for p in docs} for v in detections.values())
    result = score_stdlist(tmp_path / "benchmark.stdlist.xml", root, "dev")
    assert result["defaulted_trials"] == 0 and 0.0 < result["mtwv"] <= 1.0


def test_builder_rejects_sizes_it_cannot_honour():
    from lighthubert_s3prl.superb.corpus_quesst import _plan_documents

    with pytest.raises(corpus.CorpusError, match=r"more documents than max\(2, terms\)"):
        _plan_documents(np.random.default_rng(0), 5, 5)
    with pytest.raises(corpus.CorpusError, match="qbe_terms=1, qbe_documents=2"):
        _plan_documents(np.random.default_rng(0), 1, 2)
    for terms, docs in ((1, 3), (2, 3), (3, 4), (6, 24), (10, 11), (24, 30)):
        plans = _plan_documents(np.random.default_rng(terms), terms, docs)
        assert len(plans) == docs and any(not p for p in plans)
        assert all(len(set(p)) == len(p) <= 2 for p in plans)
        assert all(sum(t in p for p in plans) >= 2 for t in range(terms))
