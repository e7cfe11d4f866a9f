"""Audio SNIPS for s3prl's ``ctc`` recipe (SUPERB slot filling), which the PyPI package does not ship.

s3prl's ``-d ctc`` with ``corpus.name: snips`` imports ``downstream/ctc/corpus/snips.py``; the wheel lacks
that folder, so :mod:`lighthubert_s3prl.upstream.recipe_patches` registers :class:`SnipsDataset` under
that module name. The data layout is SUPERB's release of Audio SNIPS:

* ``<path>/{train,valid,test}/<Speaker>-snips-<split>-<n>.wav`` (16 kHz), one folder per split;
* ``<path>/all.iob.snips.txt``: ``<uid> BOS W1 W2 ... EOS<TAB>O T1 T2 ... <intent>``, a slot tag (or ``O``)
  per word, between a leading ``O`` for BOS and the intent in EOS's place;
* ``<path>/slots.txt``: the slot names, one per line, ``O`` first (the recipe's tokenizer skips line one).

A split keeps the files whose uid starts with one of the split's talkers (``<split>_speakers`` in the
config: SUPERB trains on 8 Polly voices and holds 4 out for dev and 4 for test).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from .bucketed_dataset import BucketedDataset

TRANSCRIPTS = "all.iob.snips.txt"


class SnipsDataset(BucketedDataset):
    """SNIPS utterances as (wav path, token ids), longest transcript first; buckets of ``bucket_size``.

    Same constructor the recipe calls: ``(split_names, tokenizer, bucket_size, path, **corpus_config)``.
    """

    def __init__(self, split: Sequence[str], tokenizer, bucket_size: int, path: str, ascending: bool = False,
                 **kwargs) -> None:
        split = [split] if isinstance(split, str) else list(split)
        key = f"{split[0]}_speakers"
        speakers = kwargs.get(key)
        if not speakers:
            raise ValueError(f"SNIPS split {split}: the config names no talkers ({key} under "
                             "downstream_expert.corpus); list the talkers whose files make up this split")
        transcripts = read_transcripts(Path(path) / TRANSCRIPTS)
        files: List[Path] = []
        for name in split:
            folder = Path(path, name)
            found = sorted(f for f in folder.glob("*.wav") if f.stem.split("-", 1)[0] in speakers)
            if not found:
                raise FileNotFoundError(f"no .wav files of talkers {list(speakers)} in {folder}; check corpus.path "
                                        f"and {key}")
            files += found
        unlabelled = [f.stem for f in files if f.stem not in transcripts]
        if unlabelled:
            raise KeyError(f"{len(unlabelled)} SNIPS files have no line in {Path(path) / TRANSCRIPTS}, e.g. "
                           f"{unlabelled[:3]}")
        super().__init__(files, [tokenizer.encode(transcripts[f.stem]) for f in files], bucket_size, ascending)


def read_transcripts(path: Path) -> Dict[str, str]:
    """uid -> ``"BOS ... EOS<TAB>O ... intent"``, the string the recipe's slot tokenizer encodes."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: corpus.path must be SUPERB's SNIPS folder (with "
                                f"{TRANSCRIPTS}, slots.txt and train/valid/test)")
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            uid, _, rest = line.partition(" ")
            if "\t" not in rest:
                raise ValueError(f"{path}:{n}: expected '<uid> BOS words EOS<TAB>O tags intent', got {line[:80]!r}")
            words, tags = rest.split("\t", 1)
            if len(words.split()) != len(tags.split()):
                raise ValueError(f"{path}:{n}: {len(words.split())} words but {len(tags.split())} tags")
            out[uid] = rest
    return out
