"""The mini corpus's query-by-example set: spoken terms searched in spoken sentences, in QUESST 2014's layout.

Each term is a multi-syllable content word (so DTW has several phones to align) with one dev query and one
eval query, each said on its own by a query talker; dev and eval queries come from different talkers, and
no query talker speaks any document. Documents are sentences by other talkers holding zero, one or two
distinct terms among filler words: every term occurs in at least two documents and some documents hold
none, so both misses and false alarms are possible. A document is said piece by piece (fillers, term,
fillers, ...) and joined with short pauses, which gives each occurrence's exact time in the ground truth.

Layout written (folder ``quesst14Database``), as s3prl's ``quesst14_dtw`` recipe and the scoring tool read it:

* ``Audio/quesst14_NNNNN.wav``, ``dev_queries/quesst14_dev_NNNN.wav``, ``eval_queries/quesst14_eval_NNNN.wav``;
* ``scoring/language_key_{utterances,dev,eval}.lst``: ``quesst14Database/<folder>/<name>.wav nnenglish`` per
  line (s3prl drops the first path component and joins the rest to the data set root);
* ``scoring/groundtruth_quesst14_{dev,eval}/``: ``quesst14.ecf.xml`` (every document, with its duration),
  ``quesst14_<split>.tlist.xml`` (that split's queries) and ``quesst14_<split>.rttm`` (a SPEAKER line per
  document and a ``LEXEME <doc> 1 <tbeg> <dur> <query> lex <talker> <NA>`` line per occurrence).

The audio is 16 kHz (the real set is 8 kHz; the recipe resamples to 16 kHz either way).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .corpus import SAMPLE_RATE, CorpusError, Preset, Voice, _Build, _draw_voices, _finish

# three or more syllables each, none contained in another or in a filler
TERMS = (
    "elephant", "umbrella", "telephone", "butterfly", "chocolate", "kangaroo", "helicopter", "avocado",
    "dinosaur", "volcano", "hamburger", "pineapple", "calendar", "violin", "submarine", "marathon",
    "lemonade", "gorilla", "tornado", "strawberry", "photographer", "astronaut", "cinnamon", "saxophone",
)
FILLERS = (
    "the", "a", "we", "saw", "near", "old", "red", "big", "then", "they", "found", "my", "on", "with", "and",
    "was", "in", "by", "her", "his", "some", "new", "small", "day", "left", "went", "home", "after", "yellow",
    "morning", "over", "window", "garden", "little", "quiet", "green",
)
LANGUAGE = "nnenglish"  # the language key s3prl keeps (it drops every other language of the real lists)
DATASET = "quesst14Database"  # the first path component of the list entries, which s3prl strips
QUERY_TALKERS = 4  # two say the dev queries, two others the eval queries
_GAP = (0.04, 0.15)  # seconds of pause between the pieces of a document


def _doc_name(i: int) -> str:
    return f"quesst14_{i + 1:05d}"


def _query_name(split: str, j: int) -> str:
    return f"quesst14_{split}_{j + 1:04d}"


def _plan_documents(rng: np.random.Generator, n_terms: int, n_docs: int) -> List[Tuple[int, ...]]:
    """The term indices each document holds: about a quarter hold none (at least one), the others one or two
    distinct terms (about a third of them two), and every term occurs in at least two documents."""
    # a document holds two terms at most and each term needs two documents, so max(2, terms) must hold some
    least = max(2, n_terms)
    if n_terms < 1 or n_docs < least + 1:
        raise CorpusError(f"QbE needs at least one term and more documents than max(2, terms) (every term in two "
                          f"documents, one document without any); got qbe_terms={n_terms}, qbe_documents={n_docs}")
    empty = max(1, min(round(n_docs / 4), n_docs - least))
    holding = n_docs - empty
    total = min(2 * holding, max(2 * n_terms, holding + holding // 3))
    base = [t for t in range(n_terms) for _ in range(2)]
    # occurrences beyond two per term go round the terms, so no term is favoured
    extra = [int(t) for t in rng.permutation(np.resize(np.arange(n_terms), max(0, total - len(base))))]
    for _ in range(200):
        pool = [(base + extra)[i] for i in rng.permutation(len(base) + len(extra))]
        # every term has two copies among the firsts or seconds; both copies in one document are refused below
        docs: List[List[int]] = [[t] for t in pool[:holding]]
        ok = True
        for t in pool[holding:]:
            free = [d for d in docs if len(d) == 1 and d[0] != t]
            if not free:
                ok = False
                break
            free[int(rng.integers(len(free)))].append(t)
        if ok and all(sum(t in d for d in docs) >= 2 for t in range(n_terms)):
            plans = [tuple(d) for d in docs] + [()] * empty
            return [plans[i] for i in rng.permutation(len(plans))]
    raise CorpusError(f"could not spread {n_terms} terms over {n_docs} documents; use more documents")


def _fillers(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(FILLERS[i] for i in rng.integers(len(FILLERS), size=int(rng.integers(low, high + 1))))


def _pieces(rng: np.random.Generator, terms: Sequence[str]) -> List[Tuple[str, bool]]:
    """(text, is_term) in speaking order: fillers around and between the terms."""
    if not terms:
        return [(_fillers(rng, 4, 8), False)]
    out = [(_fillers(rng, 0, 2), False)]
    for k, term in enumerate(terms):
        out.append((term, True))
        out.append((_fillers(rng, 2 if k + 1 < len(terms) else 1, 3), False))
    return [(text, is_term) for text, is_term in out if text]


def _xml_ecf(docs: Sequence[str], durations: Dict[str, float]) -> List[str]:
    total = sum(durations[d] for d in docs)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<ecf source_signal_duration="{total:.3f}" version="lighthubert_s3prl mini corpus">']
    lines += [f'  <excerpt audio_filename="Audio/{d}.wav" channel="1" tbeg="0.000" dur="{durations[d]:.3f}" '
              f'language="{LANGUAGE}" source_type="synthetic"/>' for d in docs]
    return lines + ["</ecf>"]


def _xml_tlist(queries: Sequence[str]) -> List[str]:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<termlist ecf_filename="quesst14.ecf.xml" language="{LANGUAGE}" encoding="UTF-8" '
             'compareNormalize="" version="lighthubert_s3prl mini corpus">']
    # the term text is the query's id, as in a query-by-example set: the word itself is not given away
    lines += [f'  <term termid="{q}"><termtext>{q}</termtext></term>' for q in queries]
    return lines + ["</termlist>"]


def build_quesst(b: _Build, p: Preset) -> Dict[str, dict]:
    """Write the QUESST 2014 mini set into ``b.root`` (the ``quesst14Database`` folder); see the module doc."""
    n_terms, n_docs = p.qbe_terms, p.qbe_documents
    if n_terms > len(TERMS):
        raise CorpusError(f"qbe_terms={n_terms} exceeds the {len(TERMS)} terms available; ask for fewer")
    terms = [TERMS[i] for i in sorted(b.rng("terms").choice(len(TERMS), n_terms, replace=False))]
    plans = _plan_documents(b.rng("plan"), n_terms, n_docs)
    n_doc_talkers = max(3, min(8, n_docs // 3))
    voices = _draw_voices(b.rng("voices"), QUERY_TALKERS + n_doc_talkers, acoustics=p.acoustics)
    query_voices, doc_voices = voices[:QUERY_TALKERS], voices[QUERY_TALKERS:]

    # queries: dev query j says term j; eval queries are numbered in another order, as unrelated sets would be
    eval_order = [int(i) for i in b.rng("eval-order").permutation(n_terms)]
    queries: Dict[str, Tuple[str, int]] = {}  # query name -> (split, term index)
    jobs = []
    for j in range(n_terms):
        queries[_query_name("dev", j)] = ("dev", j)
        queries[_query_name("eval", eval_order.index(j))] = ("eval", j)
    for name, (split, t) in queries.items():
        talker = (t % 2) + (0 if split == "dev" else 2)
        jobs.append((name, query_voices[talker].vary(b.rng(name)).request(terms[t])))

    # documents, piece by piece
    doc_pieces: Dict[str, List[Tuple[str, bool]]] = {}
    doc_talker: Dict[str, int] = {}
    for i, plan in enumerate(plans):
        doc = _doc_name(i)
        rng = b.rng(doc)
        talker = i % n_doc_talkers
        voice: Voice = doc_voices[talker].vary(rng)
        doc_pieces[doc] = _pieces(rng, [terms[t] for t in plan])
        doc_talker[doc] = talker
        jobs += [(f"{doc}#{k}", voice.request(text)) for k, (text, _) in enumerate(doc_pieces[doc])]

    audio = dict(b.speak(jobs, "queries and documents"))
    for name, (split, _) in queries.items():
        b.write(f"{split}_queries/{name}.wav", _finish(audio[name], b.rng("finish", name), acoustics=p.acoustics))

    durations: Dict[str, float] = {}
    spans: Dict[str, List[Tuple[str, float, float]]] = {}  # doc -> (term, start s, duration s)
    for i, plan in enumerate(plans):
        doc = _doc_name(i)
        rng = b.rng("join", doc)
        parts, clock, found = [], 0, []
        for k, (text, is_term) in enumerate(doc_pieces[doc]):
            if k:
                gap = int(rng.uniform(*_GAP) * SAMPLE_RATE)
                parts.append(np.zeros(gap, dtype=np.float32))
                clock += gap
            piece = audio[f"{doc}#{k}"]
            if is_term:
                found.append((text, clock / SAMPLE_RATE, len(piece) / SAMPLE_RATE))
            parts.append(piece.astype(np.float32))
            clock += len(piece)
        wav = _finish(np.concatenate(parts), b.rng("finish", doc), acoustics=p.acoustics)
        b.write(f"Audio/{doc}.wav", wav)
        durations[doc] = len(wav) / SAMPLE_RATE
        spans[doc] = found

    docs = [_doc_name(i) for i in range(n_docs)]
    b.write_text("scoring/language_key_utterances.lst", [f"{DATASET}/Audio/{d}.wav {LANGUAGE}" for d in docs])
    for split in ("dev", "eval"):
        names = sorted(q for q, (s, _) in queries.items() if s == split)
        term_query = {terms[queries[q][1]]: q for q in names}
        b.write_text(f"scoring/language_key_{split}.lst",
                     [f"{DATASET}/{split}_queries/{q}.wav {LANGUAGE}" for q in names])
        folder = f"scoring/groundtruth_quesst14_{split}"
        b.write_text(f"{folder}/quesst14.ecf.xml", _xml_ecf(docs, durations))
        b.write_text(f"{folder}/quesst14_{split}.tlist.xml", _xml_tlist(names))
        rttm = []
        for d in docs:
            speaker = f"talker{doc_talker[d] + 1:02d}"
            rttm.append(f"SPEAKER {d} 1 0.000 {durations[d]:.3f} <NA> <NA> {speaker} <NA>")
            rttm += [f"LEXEME {d} 1 {start:.3f} {length:.3f} {term_query[word]} lex {speaker} <NA>"
                     for word, start, length in spans[d]]
        b.write_text(f"{folder}/quesst14_{split}.rttm", rttm)

    return {"qbe": {"paths": {"dataset_root": "."},
                    "files": {"documents": n_docs, "dev_queries": n_terms, "eval_queries": n_terms},
                    "terms": terms, "occurrences": sum(len(plan) for plan in plans),
                    "documents_without_term": sum(1 for plan in plans if not plan)}}
