"""SUPERB's PR lexicons: the two g2p files from s3prl's repository, fetched once into our cache.

SUPERB's phoneme recognition maps LibriSpeech words to phonemes with
``librispeech-lexicon-200k-g2p.txt`` followed by ``librispeech-lexicon-allothers-g2p.txt`` (the first
pronunciation of a word wins). They live in s3prl's git repository under
``s3prl/downstream/ctc/lexicon/`` but not in its PyPI package, and no other word list stands in for
them: CMUdict has only 752 of the 14,716 words that the second file adds.

:func:`superb_lexicons` returns the two files from ``<cache>/superb_lexicon/``, downloading a missing
one from s3prl's repository at a pinned commit. Every file is checked against the table below before it
is installed (atomically) or used: the git blob id read from s3prl's tree at that commit, which is
``sha1(b"blob <size>\\0" + content)``, plus the sha256 and byte size where those were measured from the
file itself. A file that fails the check is never installed. Offline, the files must be in the cache
already, or the caller passes its own copies (``lexicon=[...]`` in :func:`tasks.build_config`).
"""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional, Sequence, Union

from lighthubert_s3prl.io_utils import atomic_write, cache_root, offline

from .metadata import TaskConfigError

# s3prl's v0.4.18 release commit; the lexicon folder has not changed since 2021
S3PRL_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"
S3PRL_LEXICON_URL = f"https://raw.githubusercontent.com/s3prl/s3prl/{S3PRL_COMMIT}/s3prl/downstream/ctc/lexicon/"
S3PRL_LEXICON_PAGE = "https://github.com/s3prl/s3prl/tree/main/s3prl/downstream/ctc/lexicon"
CACHE_FOLDER = "superb_lexicon"
_TIMEOUT_S = 60.0


class LexiconError(TaskConfigError):
    """The SUPERB lexicons cannot be had; the message names both ways to provide them."""


@dataclass(frozen=True)
class LexiconFile:
    """One file of s3prl's lexicon folder and what it must hash to."""

    name: str
    git_blob_sha1: str  # the blob id in s3prl's tree at S3PRL_COMMIT
    sha256: Optional[str] = None  # measured from the file, where it was available to measure
    size: Optional[int] = None


# the order matters: s3prl's libriphone config lists the 200k file first, and the first pronunciation wins
SUPERB_LEXICONS = (
    LexiconFile("librispeech-lexicon-200k-g2p.txt", git_blob_sha1="a9143b4f90bde7f71221b7e546f780f3b655c8f7"),
    LexiconFile("librispeech-lexicon-allothers-g2p.txt", git_blob_sha1="cdc9ff665e674959c1150c62714150c3d3d0b726",
                sha256="5473abdf594196db8f3a7cd26792350f7c32ef04fef2da4630e1bc7245ff4c0f", size=436856),
)


def lexicon_cache_dir() -> Path:
    return cache_root() / CACHE_FOLDER


class _Digests:
    """sha256 and git blob sha1 of a byte stream, fed in chunks."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.chunks: List[bytes] = []  # git's blob header needs the size first, so keep the (small) file
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.chunks.append(chunk)
        self.size += len(chunk)

    def git_blob_sha1(self) -> str:
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        for chunk in self.chunks:
            digest.update(chunk)
        return digest.hexdigest()


def _mismatch(entry: LexiconFile, digests: _Digests) -> Optional[str]:
    """What about the bytes disagrees with the table, or None when they match."""
    if entry.size is not None and digests.size != entry.size:
        return f"{digests.size} bytes, expected {entry.size}"
    if entry.sha256 is not None and digests.sha256.hexdigest() != entry.sha256:
        return f"sha256 {digests.sha256.hexdigest()}, expected {entry.sha256}"
    blob = digests.git_blob_sha1()
    if blob != entry.git_blob_sha1:
        return f"git blob sha1 {blob}, expected {entry.git_blob_sha1}"
    return None


def _digest_file(path: Path) -> _Digests:
    digests = _Digests()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digests.update(chunk)
    return digests


def _routes(entries: Sequence[LexiconFile], cache: Path) -> str:
    names = " and ".join(e.name for e in entries)
    return (f"Either let it download {names} from s3prl's repository ({S3PRL_LEXICON_PAGE}) into {cache} "
            f"(needs network; unset LIGHTHUBERT_S3PRL_OFFLINE/HF_HUB_OFFLINE), or download them yourself and "
            f"pass their paths: build_config('pr', ..., lexicon=[PATH_200K, PATH_ALLOTHERS]), or for "
            f"run_superb.sh a --data-config entry `pr: {{root: LIBRISPEECH, lexicon: [PATH_200K, PATH_ALLOTHERS]}}`")


def _download(entry: LexiconFile, url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` atomically; a file that fails the checksum is never installed."""

    def write(f: BinaryIO) -> None:
        digests = _Digests()
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digests.update(chunk)
                f.write(chunk)
        problem = _mismatch(entry, digests)
        if problem:  # raising here makes atomic_write delete its temporary file
            raise LexiconError(f"{url} failed its checksum ({problem}); nothing was installed in {target.parent}. "
                               "The file is not the one SUPERB uses: check the URL, or a proxy rewriting it")

    atomic_write(target, write)


def fetch_lexicon(entry: LexiconFile, cache: Optional[Union[str, Path]] = None,
                  base_url: str = S3PRL_LEXICON_URL) -> Path:
    """``entry`` in the cache, verified; downloaded from ``base_url + entry.name`` when absent or damaged."""
    folder = Path(cache) if cache is not None else lexicon_cache_dir()
    target = folder / entry.name
    if target.is_file() and _mismatch(entry, _digest_file(target)) is None:
        return target
    damaged = target.is_file()
    if offline():
        state = "is damaged (checksum mismatch)" if damaged else "is not in the cache"
        raise LexiconError(f"PR needs SUPERB's g2p lexicons; {entry.name} {state} and offline mode is set. "
                           + _routes(SUPERB_LEXICONS, folder))
    url = base_url + entry.name
    try:
        _download(entry, url, target)
    except (urllib.error.URLError, OSError) as err:
        raise LexiconError(f"PR needs SUPERB's g2p lexicons; downloading {url} failed ({err}). "
                           + _routes(SUPERB_LEXICONS, folder)) from None
    return target


def superb_lexicons(cache: Optional[Union[str, Path]] = None, base_url: str = S3PRL_LEXICON_URL,
                    entries: Optional[Sequence[LexiconFile]] = None) -> List[str]:
    """Paths of SUPERB's PR lexicon files, in the order s3prl's recipe reads them."""
    return [str(fetch_lexicon(entry, cache, base_url)) for entry in (entries or SUPERB_LEXICONS)]

