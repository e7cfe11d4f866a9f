"""``lighthubert-s3prl package``: SUPERB leaderboard submissions.

``package public`` builds the public-set ``predict.zip``: each task's test predictions, copied from its
s3prl expdir into the leaderboard layout ``predict/<task>_public/...`` (the same file mapping as s3prl's
``submit.py``). Before and after writing, the submission is validated, and an
incomplete one is refused with the reason: an ER fold missing (ER is scored only with all five), an
empty or malformed prediction file, fewer predictions than test items, ASV predictions that the
checkpoint sweep did not choose, predictions that changed since the runner tested the checkpoint.

``package hidden`` writes a hidden-set model folder (``expert.py`` + ``model.pt`` of one subnet, and the
``.gitattributes`` that stores the weights with git-LFS on the Hugging Face Hub) with
``lighthubert_s3prl.upstream.hidden_set.write_hidden_set_folder`` and then runs the checks of the submission
template's ``cli.py validate`` on it in a fresh interpreter, with this package unimportable, so the
folder is shown to load on its own. The check writes no bytecode: the folder is pushed as it is.

``package validate predict.zip`` and ``package validate-hidden DIR`` run the checks alone.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lighthubert_s3prl.io_utils import atomic_write

from .units import (DONE_FILE, MANIFEST_NAME, RESULT_FILE, SWEEP_FILE, prediction_sha256, read_json, sha256_of,
                    unit_expdir)

LOG = logging.getLogger(__name__)

ER_FOLDS = tuple(f"fold{i}" for i in range(1, 6))
# the fixed mtime of every archive member, so the same predictions give the same bytes
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class PackageError(ValueError):
    """A submission that cannot be built or does not validate; the message gives the reason."""


@dataclass(frozen=True)
class Entry:
    """One prediction file of the public-set layout."""

    key: str  # --exp key: pr, asr, asr_lm, ks, ic, sid, asv, er_foldN, sf, sd, qbe
    source: str  # file name in the s3prl expdir (SD: a folder of files)
    dest: str  # path inside the archive (SD: the folder)
    kind: str  # format: ark | label | csv | score (text lines) | stdlist (QbE XML) | h5 (SD, a folder of them)
    truth: Optional[str] = None  # file beside the source with one line per test item, when s3prl writes one
    # files shipped with it, (name in the expdir, path in the archive): SD's label frame shift
    companions: Tuple[Tuple[str, str], ...] = ()

    @property
    def folder(self) -> bool:
        return self.kind == "h5"

    @property
    def unit(self) -> str:
        """What the archive check counts for this entry."""
        return {"h5": "recordings", "stdlist": "queries"}.get(self.kind, "lines")


# The leaderboard's public-set layout: a table, not logic (pinned by the package tests against SUPERB's layout).
ENTRIES: Dict[str, Entry] = {
    "pr": Entry("pr", "test-hyp.ark", "predict/pr_public/predict.ark", "ark", "test-ref.ark"),
    "asr": Entry("asr", "test-clean-noLM-hyp.ark", "predict/asr_public/predict.ark", "ark", "test-clean-noLM-ref.ark"),
    "asr_lm": Entry("asr_lm", "test-clean-LM-hyp.ark", "predict/asr_lm_public/predict.ark", "ark",
                    "test-clean-LM-ref.ark"),
    "ks": Entry("ks", "test_predict.txt", "predict/ks_public/predict.txt", "label", "test_truth.txt"),
    "ic": Entry("ic", "test_predict.csv", "predict/ic_public/predict.csv", "csv", "test_truth.csv"),
    "sid": Entry("sid", "test_predict.txt", "predict/sid_public/predict.txt", "label", "test_truth.txt"),
    "asv": Entry("asv", "test_predict.txt", "predict/sv_public/predict.txt", "score", "test_truth.txt"),
    **{f"er_{fold}": Entry(f"er_{fold}", f"test_{fold}_predict.txt", f"predict/er_{fold}_public/predict.txt", "label",
                           f"test_{fold}_truth.txt") for fold in ER_FOLDS},
    "sf": Entry("sf", "test-hyp.ark", "predict/sf_public/predict.ark", "ark", "test-ref.ark"),
    "sd": Entry("sd", "scoring/predictions", "predict/sd_public/scoring/predictions", "h5",
                companions=(("frame_shift", "predict/sd_public/frame_shift"),)),
    "qbe": Entry("qbe", "benchmark.stdlist.xml", "predict/qbe_public/benchmark.stdlist.xml", "stdlist"),
}
KEY_ALIASES = {"sv": "asv", "asr_no_lm": "asr", "asr_with_lm": "asr_lm", **{f"er{i}": f"er_fold{i}" for i in range(1, 6)}}
DEST_TO_ENTRY = {e.dest: e for e in ENTRIES.values() if not e.folder}
COMPANION_TO_ENTRY = {dest: e for e in ENTRIES.values() for _, dest in e.companions}


# ----------------------------------------------------------------------------------------------------
# content checks


def check_stdlist(entry: Entry, data: bytes, where: str) -> int:
    """QbE's benchmark.stdlist.xml: one detected_termlist per query, scored terms; returns the query count."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise PackageError(f"{entry.key}: {where} is not well-formed XML ({err})") from None
    if root.tag != "stdlist":
        raise PackageError(f"{entry.key}: {where} has root <{root.tag}>; expected <stdlist>")
    queries = root.findall("detected_termlist")
    if not queries:
        raise PackageError(f"{entry.key}: {where} holds no detected_termlist")
    for query in queries:
        for term in query.findall("term"):
            try:
                float(term.get("score", ""))
            except ValueError:
                raise PackageError(f"{entry.key}: {where}: query {query.get('termid')!r}, document "
                                   f"{term.get('file')!r}: score {term.get('score')!r} is not a number") from None
    return len(queries)


def check_h5(entry: Entry, data: bytes, where: str) -> int:
    """One SD recording's predictions: a (frames, speakers) T_hat of probabilities; returns its frames."""
    import io

    import h5py
    import numpy as np

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            probs = np.asarray(f["T_hat"])
    except (OSError, KeyError) as err:
        raise PackageError(f"{entry.key}: {where} is not an HDF5 file with a T_hat dataset ({err})") from None
    if probs.ndim != 2 or probs.shape[0] == 0 or not np.all((probs >= 0) & (probs <= 1)):
        raise PackageError(f"{entry.key}: {where}: T_hat must be (frames, speakers) probabilities in [0, 1], "
                           f"got shape {probs.shape}")
    return int(probs.shape[0])


def check_frame_shift(entry: Entry, data: bytes, where: str) -> None:
    if not data.strip().isdigit() or int(data.strip()) <= 0:
        raise PackageError(f"{entry.key}: {where} must hold the label frame shift in samples (e.g. 320), got "
                           f"{data[:20]!r}")


def check_member(entry: Entry, data: bytes, where: str) -> int:
    """Check one prediction file of ``entry``; returns what counts for it (lines, queries, frames)."""
    if entry.kind == "stdlist":
        return check_stdlist(entry, data, where)
    if entry.kind == "h5":
        return check_h5(entry, data, where)
    return check_lines(entry, data, where)


def check_lines(entry: Entry, data: bytes, where: str) -> int:
    """Raise PackageError unless ``data`` is a non-empty prediction file of ``entry``'s format; return lines."""
    if not data.strip():
        raise PackageError(f"{entry.key}: {where} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{entry.key}: {where} is not UTF-8 text") from None
    lines = text.splitlines()
    ids = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise PackageError(f"{entry.key}: {where} line {number} is blank")
        if entry.kind == "csv":
            fields = line.split(",")
            if len(fields) != 4:
                raise PackageError(f"{entry.key}: {where} line {number} has {len(fields)} comma-separated fields; "
                                   "expected 4 (file,action,object,location)")
        else:
            fields = line.split(" ", 1) if entry.kind == "ark" else line.split()
            if entry.kind in ("label", "score") and len(fields) != 2:
                raise PackageError(f"{entry.key}: {where} line {number} has {len(fields)} fields; expected 2 "
                                   f"({'utterance label' if entry.kind == 'label' else 'trial score'})")
            if entry.kind == "score":
                try:
                    float(fields[1])
                except ValueError:
                    raise PackageError(f"{entry.key}: {where} line {number}: score {fields[1]!r} is not a number") from None
        # a trial list may repeat a pair (every line is scored); an utterance is predicted once
        if fields[0] in ids and entry.kind != "score":
            raise PackageError(f"{entry.key}: {where} line {number} repeats {fields[0]!r}")
        ids.add(fields[0])
    return len(lines)


def check_er_folds(keys: Iterable[str]) -> None:
    folds = [k for k in keys if k.startswith("er_fold")]
    if folds and len(folds) != len(ER_FOLDS):
        missing = [f"er_{f}" for f in ER_FOLDS if f"er_{f}" not in folds]
        raise PackageError(f"ER is incomplete: {', '.join(missing)} missing (have {', '.join(sorted(folds))}); "
                           "the leaderboard scores ER only with all 5 folds. Run the missing folds or leave ER out")


# ----------------------------------------------------------------------------------------------------
# sources


def _check_asv_sweep(expdir: Path, pred: Path) -> None:
    """ASV has no dev set: the predictions must be those of the best checkpoint of a sweep."""
    sweep = read_json(expdir / SWEEP_FILE)
    if isinstance(sweep, dict):
        if sweep.get("prediction_sha256") != sha256_of(pred):
            raise PackageError(f"asv: {pred} differs from the predictions the checkpoint sweep chose "
                               f"({sweep.get('best_ckpt')}); re-run scripts/run_superb.sh --tasks asv to redo the sweep")
        return
    if pred.is_symlink() and (expdir / "report.txt").is_file():  # s3prl's own test_expdir.sh picked it
        return
    raise PackageError(
        f"asv: {pred} was not chosen by a checkpoint sweep (no {SWEEP_FILE} in {expdir}). ASV has no dev set: "
        "every states-*.ckpt must be evaluated on the test trials and the best EER's predictions kept; "
        "run scripts/run_superb.sh --tasks asv (it does the sweep)")


def source_files(entry: Entry, expdir: Path) -> Dict[str, Path]:
    """{path in the archive: checked file} of ``entry`` in ``expdir``: one file, or SD's folder and frame shift."""
    if not entry.folder:
        return {entry.dest: source_file(entry, expdir)}
    if not expdir.is_dir():
        raise PackageError(f"{entry.key}: expdir {expdir} does not exist")
    folder = expdir / entry.source
    files = sorted(folder.glob("*.h5")) if folder.is_dir() else []
    if not files:
        raise PackageError(f"{entry.key}: no {entry.source}/*.h5 in {expdir} (has the test been run?)")
    out = {}
    for f in files:
        check_member(entry, f.read_bytes(), str(f))
        out[f"{entry.dest}/{f.name}"] = f
    for name, dest in entry.companions:
        if not (expdir / name).is_file():
            raise PackageError(f"{entry.key}: no {name} in {expdir}; the leaderboard needs it to turn the predictions "
                               "into RTTM (s3prl writes it when the downstream is built; re-run the test)")
        check_frame_shift(entry, (expdir / name).read_bytes(), str(expdir / name))
        out[dest] = expdir / name
    _check_runner_hash(entry, expdir, folder)
    return out


def _check_runner_hash(entry: Entry, expdir: Path, pred: Path) -> None:
    result = read_json(expdir / RESULT_FILE)
    if isinstance(result, dict) and result.get("prediction_file") == entry.source and result.get("prediction_sha256"):
        if result["prediction_sha256"] != prediction_sha256(pred):
            raise PackageError(f"{entry.key}: {pred} changed after the runner tested {result.get('ckpt')} "
                               "(another evaluation overwrote it?); re-run the test step")


def source_file(entry: Entry, expdir: Path) -> Path:
    """The checked prediction file of ``entry`` in ``expdir``."""
    if not expdir.is_dir():
        raise PackageError(f"{entry.key}: expdir {expdir} does not exist")
    pred = expdir / entry.source
    if not pred.is_file():
        raise PackageError(f"{entry.key}: no {entry.source} in {expdir} (has the test been run?)")
    lines = check_member(entry, pred.read_bytes(), str(pred))
    truth = expdir / entry.truth if entry.truth else None
    if truth is not None and truth.is_file() and truth.stat().st_size > 0:
        expected = len(truth.read_text(errors="replace").splitlines())
        if lines != expected:
            raise PackageError(f"{entry.key}: {pred} has {lines} predictions but {truth.name} lists {expected} test "
                               "items (an interrupted or mismatched evaluation?)")
    if entry.key == "asv":
        _check_asv_sweep(expdir, pred)
    _check_runner_hash(entry, expdir, pred)
    return pred


def _er_sources(expdir: Path) -> Dict[str, Path]:
    """``er=DIR``: DIR holds the 5 folds' expdirs (fold1..fold5) or their prediction files side by side."""
    return {f"er_{fold}": expdir / fold if (expdir / fold).is_dir() else expdir for fold in ER_FOLDS}


def parse_exp_args(items: Sequence[str]) -> Dict[str, Path]:
    """``--exp KEY=DIR`` values -> {entry key: expdir}."""
    out: Dict[str, Path] = {}
    for item in items:
        key, sep, path = item.partition("=")
        key = KEY_ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or not path:
            raise PackageError(f"--exp {item!r}: expected KEY=DIR, e.g. --exp ks=exp/ks")
        if key == "er":
            found = _er_sources(Path(path).expanduser())
        elif key in ENTRIES:
            found = {key: Path(path).expanduser()}
        else:
            raise PackageError(f"--exp {item!r}: unknown task key {key!r}; use one of "
                               f"{', '.join(ENTRIES)} (or er=DIR for all five folds)")
        twice = sorted(set(found) & set(out))
        if twice:
            raise PackageError(f"--exp gives {', '.join(twice)} more than once")
        out.update(found)
    return out


def sources_from_exp_root(root: Path, skip: Sequence[str] = ()) -> Dict[str, Path]:
    """Every finished task of a run_superb.sh root; refuses half-finished ones (unless skipped)."""
    if not (root / MANIFEST_NAME).is_file():
        raise PackageError(f"{root} is not a run_superb.sh experiment root (no {MANIFEST_NAME}); use --exp KEY=DIR")
    out: Dict[str, Path] = {}
    problems = []
    for task in ("pr", "ks", "ic", "sid", "asr", "asv", "sd", "qbe", "sf"):
        if task in skip:
            continue
        expdir = unit_expdir(root, task)
        if not expdir.exists():
            continue  # a subset is a valid submission
        if not (expdir / DONE_FILE).is_file():
            problems.append(f"{task}: not finished in {expdir} (no test result yet)")
            continue
        out[task] = expdir
    if "er" not in skip:
        started = [f for f in ER_FOLDS if unit_expdir(root, "er", f).exists()]
        done = [f for f in ER_FOLDS if (unit_expdir(root, "er", f) / DONE_FILE).is_file()]
        if started and len(done) < len(ER_FOLDS):
            missing = [f for f in ER_FOLDS if f not in done]
            problems.append(f"er: {len(done)}/5 folds finished ({', '.join(missing)} missing); the leaderboard scores "
                            "ER only with all 5 folds")
        elif done:
            out.update({f"er_{f}": unit_expdir(root, "er", f) for f in ER_FOLDS})
    if problems:
        raise PackageError("incomplete submission:\n  " + "\n  ".join(problems) +
                           "\nfinish them with scripts/run_superb.sh, or leave them out with --skip TASK")
    if not out:
        raise PackageError(f"{root} has no finished task to submit")
    return out


# ----------------------------------------------------------------------------------------------------
# the archive


def validate_archive(path: Union[str, Path]) -> Dict[str, int]:
    """Check a predict.zip: layout, every file's format, ER all-or-nothing. Returns {entry key: lines}."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise PackageError(f"{path} is not a zip archive") from None
    counts: Dict[str, int] = {}
    with archive:
        bad = archive.testzip()
        if bad is not None:
            raise PackageError(f"{path}: member {bad} is corrupt")
        folders = {"predict/"} | {f for e in ENTRIES.values() for f in _folders_of(e.dest, e.folder)}
        companions = set()
        for info in archive.infolist():
            if info.is_dir():
                if info.filename not in folders:
                    raise PackageError(f"{path}: unexpected folder {info.filename!r}; the layout is "
                                       "predict/<task>_public/")
                continue
            where = f"{path}:{info.filename}"
            entry = DEST_TO_ENTRY.get(info.filename)
            if entry is not None:
                counts[entry.key] = check_member(entry, archive.read(info), where)
            elif info.filename in COMPANION_TO_ENTRY:
                entry = COMPANION_TO_ENTRY[info.filename]
                check_frame_shift(entry, archive.read(info), where)
                companions.add(entry.key)
            else:
                entry = next((e for e in ENTRIES.values() if e.folder and info.filename.startswith(e.dest + "/")
                              and info.filename.endswith(".h5")), None)
                if entry is None:
                    raise PackageError(f"{path}: unexpected member {info.filename!r}; a public-set submission holds "
                                       "only predict/<task>_public/ files (predict.{ark,txt,csv}, "
                                       "benchmark.stdlist.xml, scoring/predictions/*.h5 and frame_shift)")
                check_member(entry, archive.read(info), where)
                counts[entry.key] = counts.get(entry.key, 0) + 1
    for entry in ENTRIES.values():
        if entry.companions and (entry.key in counts) != (entry.key in companions):
            has, lacks = ("predictions", "frame_shift") if entry.key in counts else ("frame_shift", "predictions")
            raise PackageError(f"{path}: {entry.key} has {has} but no {lacks}; the leaderboard needs both")
    if not counts:
        raise PackageError(f"{path} holds no prediction file")
    check_er_folds(counts)
    return counts


def _folders_of(dest: str, folder: bool) -> List[str]:
    """Every folder above ``dest`` (and ``dest`` itself when it is one), as zip folder entries."""
    parts = dest.split("/")
    upto = len(parts) if folder else len(parts) - 1
    return ["/".join(parts[:i]) + "/" for i in range(1, upto + 1)]


def build_public(sources: Dict[str, Path], out: Union[str, Path]) -> Tuple[Path, Dict[str, int]]:
    """Validate every source, write the archive atomically, validate the archive; return (path, line counts)."""
    if not sources:
        raise PackageError("nothing to package: give --exp KEY=DIR (repeatable) or --from EXP_ROOT")
    check_er_folds(sources)
    files: Dict[str, Path] = {}  # path in the archive -> file
    for key, expdir in sources.items():
        files.update(source_files(ENTRIES[key], expdir))
    out = Path(out).expanduser()
    if out.suffix != ".zip":
        raise PackageError(f"-o {out}: the leaderboard takes a .zip (e.g. -o predict.zip)")

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            # folder entries too, as `zip -r predict.zip predict/` (s3prl's submit.py) writes them
            folders = sorted({f for dest in files for f in _folders_of(dest, False)})
            for folder in folders:
                info = zipfile.ZipInfo(folder, date_time=_ZIP_TIME)
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            for dest in sorted(files):
                info = zipfile.ZipInfo(dest, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, files[dest].read_bytes())

    atomic_write(out, write)
    try:
        counts = validate_archive(out)
    except PackageError:
        out.unlink(missing_ok=True)  # never leave an invalid submission behind
        raise
    return out, counts


# ----------------------------------------------------------------------------------------------------
# hidden set


HIDDEN_TASKS = ("PR", "SID", "ER", "ASR", "ASV", "SD", "QbE", "ST", "SS", "SE", "secret")

# run in a fresh interpreter inside the folder; mirrors the submission template's `cli.py validate`
_HIDDEN_CHECK = textwrap.dedent('''
    import importlib.abc, json, os, sys
    folder, blocked, tasks = sys.argv[1], set(json.loads(sys.argv[2])), json.loads(sys.argv[3])

    def bundled(name):  # a module the folder holds a copy of may load from there, and only from there
        base = os.path.join(folder, *name.split("."))
        return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked and not bundled(name):
                raise ImportError(f"{name} is not available to a hidden-set folder: it must load on its own")
            return None

    sys.meta_path.insert(0, _Blocked())
    os.chdir(folder)
    sys.path.insert(0, folder)
    import torch
    from expert import UpstreamExpert
    torch.manual_seed(0)
    model = UpstreamExpert(ckpt="model.pt")
    model.eval()
    wavs = [torch.randn(int(16000 * s)) for s in (2, 1.8, 3.7)]
    max_len = max(len(w) for w in wavs)
    with torch.no_grad():
        results = model(wavs)
    if not isinstance(results, dict) or "hidden_states" not in results:
        raise SystemExit("forward() must return a dict with 'hidden_states'")
    report = {}
    for task in tasks:
        feats = results.get(task, results["hidden_states"])
        if not isinstance(feats, (list, tuple)) or not feats:
            raise SystemExit(f"{task}: features must be a non-empty list of tensors, got {type(feats).__name__}")
        shapes = {tuple(f.shape) for f in feats}
        if any(not torch.is_tensor(f) or f.dim() != 3 for f in feats) or len(shapes) != 1:
            raise SystemExit(f"{task}: features must be 3-D tensors of one shape, got {sorted(shapes)}")
        rate = model.get_downsample_rates(task)
        if not isinstance(rate, int):
            raise SystemExit(f"{task}: get_downsample_rates must return an int, got {type(rate).__name__}")
        frames = feats[0].shape[1]
        if abs(round(max_len / rate) - frames) >= 5:
            raise SystemExit(f"{task}: {frames} frames but round({max_len}/{rate}) = {round(max_len / rate)}")
        report[task] = {"layers": len(feats), "shape": list(feats[0].shape), "rate": rate}
    params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    print("HIDDEN_SET_REPORT " + json.dumps({"tasks": report, "params": params}))
''')


def declared_requirements(folder: Union[str, Path]) -> List[str]:
    """Distribution names listed in ``folder/requirements.txt`` (normalised: lower case, '_' -> '-')."""
    path = Path(folder) / "requirements.txt"
    if not path.is_file():
        return []
    names = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.startswith("-"):
            names.append(match.group(1).lower().replace("_", "-"))
    return names


def lfs_tracked(folder: Union[str, Path], name: str) -> bool:
    """Whether ``folder/.gitattributes`` stores the top-level file ``name`` with git-LFS (the last match wins)."""
    path = Path(folder) / ".gitattributes"
    tracked = False
    if not path.is_file():
        return tracked
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        pattern, *attributes = line.split() or ["#"]
        if pattern.startswith("#") or not fnmatch.fnmatchcase(name, pattern.lstrip("/")):
            continue
        for attribute in attributes:
            if attribute == "filter=lfs":
                tracked = True
            elif attribute in ("-filter", "!filter") or attribute.startswith("filter="):
                tracked = False
    return tracked


def validate_hidden_folder(folder: Union[str, Path], blocked: Sequence[str] = ("lighthubert_s3prl",),
                           timeout: float = 600.0) -> dict:
    """The template's ``cli.py validate`` checks on ``folder``, run in a fresh interpreter; returns a report.

    The folder must load from its own files plus what its ``requirements.txt`` declares (the evaluators
    install those): modules in ``blocked`` are made unimportable unless requirements.txt lists them or the
    folder bundles them (a copy inside it, which then shadows any installed one).
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise PackageError(f"{folder} is not a directory")
    for name in ("expert.py", "model.pt"):
        if not (folder / name).is_file():
            raise PackageError(f"hidden-set folder {folder} has no {name}")
    if not lfs_tracked(folder, "model.pt"):
        raise PackageError(
            f"{folder / '.gitattributes'} does not store model.pt with git-LFS, and the Hugging Face Hub refuses "
            "files over 10 MB without it: add the line `*.pt filter=lfs diff=lfs merge=lfs -text` (or run "
            "`git lfs track model.pt` in the repository); `lighthubert-s3prl package hidden` writes it")
    declared = declared_requirements(folder)
    blocked = [m for m in blocked if m.lower().replace("_", "-") not in declared]
    # -B: no __pycache__ may end up in the folder, which is pushed to the Hub as it is
    cmd = [sys.executable, "-I", "-B", "-c", _HIDDEN_CHECK, str(folder), json.dumps(list(blocked)),
           json.dumps(HIDDEN_TASKS)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise PackageError(f"hidden-set check of {folder} did not finish in {timeout:.0f} s") from None
    marker = [line for line in proc.stdout.splitlines() if line.startswith("HIDDEN_SET_REPORT ")]
    if proc.returncode != 0 or not marker:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise PackageError(f"hidden-set folder {folder} does not validate: {reason}")
    report = json.loads(marker[-1].split(" ", 1)[1])
    report["requirements"] = declared
    return report


def build_hidden(ckpt: Union[str, Path], subnet: str, out_dir: Union[str, Path], validate: bool = True) -> dict:
    ckpt = Path(ckpt).expanduser()
    if not ckpt.is_file():
        raise PackageError(f"checkpoint not found: {ckpt}")
    from ..upstream.hidden_set import write_hidden_set_folder  # imports torch: only when a folder is built

    write_hidden_set_folder(str(ckpt), subnet, str(out_dir))
    return validate_hidden_folder(out_dir) if validate else {}


# ----------------------------------------------------------------------------------------------------
# command line


def _print_counts(path: Path, counts: Dict[str, int]) -> None:
    for key in sorted(counts, key=lambda k: ENTRIES[k].dest):
        print(f"  {ENTRIES[key].dest:36s} {counts[key]:7d} {ENTRIES[key].unit}")
    print(f"{path}: valid public-set submission ({len(counts)} file(s))")


def _print_hidden(report: dict) -> None:
    first = report["tasks"]["PR"]
    print(f"  forward: {first['layers']} hidden states of shape {first['shape']} for 3 test wavs, rate {first['rate']}; "
          f"all {len(report['tasks'])} task keys pass; {report.get('params') or '?'} parameters")
    if "lighthubert-s3prl" in report.get("requirements", []):
        print("  note: requirements.txt lists lighthubert-s3prl, so the evaluators must be able to pip-install it")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lighthubert-s3prl package",
        description="Build and check SUPERB leaderboard submissions (public-set predict.zip, hidden-set model folder).")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("public", help="build predict.zip from s3prl expdirs",
                         description="Copy each task's test predictions into predict/<task>_public/ and zip them; "
                                     "refuses incomplete or malformed submissions with the reason.")
    pub.add_argument("--exp", action="append", default=[], metavar="KEY=DIR",
                     help=f"expdir of one task (repeatable); keys: {', '.join(ENTRIES)}, er=DIR (all folds)")
    pub.add_argument("--from", dest="exp_root", metavar="EXP_ROOT", help="every finished task of a run_superb.sh root")
    pub.add_argument("--skip", default="", help="with --from: tasks to leave out, e.g. er,asv")
    pub.add_argument("-o", "--output", default="predict.zip", help="archive to write (default predict.zip)")
    val = sub.add_parser("validate", help="check an existing predict.zip")
    val.add_argument("archive")
    hid = sub.add_parser("hidden", help="write and check a hidden-set model folder",
                         description="Write expert.py + model.pt of one subnet (lighthubert_s3prl.upstream.hidden_set) "
                                     "and run the submission template's validate checks on it, in isolation.")
    hid.add_argument("--ckpt", required=True, help="LightHuBERT checkpoint (supernet)")
    hid.add_argument("--subnet", required=True, help="subnet: preset name, YAML file, random:SPACE:SEED, budget:...")
    hid.add_argument("-o", "--out-dir", required=True, help="folder to write")
    hid.add_argument("--no-validate", action="store_true", help="skip the isolated load check")
    vhid = sub.add_parser("validate-hidden", help="check a hidden-set model folder")
    vhid.add_argument("folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "public":
            sources: Dict[str, Path] = {}
            if args.exp_root:
                skip = [s.strip().lower() for s in args.skip.split(",") if s.strip()]
                sources.update(sources_from_exp_root(Path(args.exp_root).expanduser().resolve(), skip))
            sources.update(parse_exp_args(args.exp))
            path, counts = build_public(sources, args.output)
            _print_counts(path, counts)
        elif args.command == "validate":
            _print_counts(Path(args.archive), validate_archive(args.archive))
        elif args.command == "hidden":
            report = build_hidden(args.ckpt, args.subnet, args.out_dir, validate=not args.no_validate)
            print(f"{args.out_dir}: hidden-set folder written" + (" and validated" if report else ""))
            if report:
                _print_hidden(report)
        else:
            _print_hidden(validate_hidden_folder(args.folder))
            print(f"{args.folder}: valid hidden-set folder")
    except PackageError as err:
        print(f"lighthubert-s3prl package: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
