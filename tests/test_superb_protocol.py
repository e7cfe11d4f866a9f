"""The SUPERB protocol details the recipes must get right, checked without training anything.

Every expected value here is written out by hand from s3prl 0.4.18's repository, the SUPERB
leaderboard or plain arithmetic; none is read back from the code under test. The lexicon download is
exercised against a loopback HTTP server, never the network.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from lighthubert_s3prl.superb import reference, runner
from lighthubert_s3prl.superb import tasks as task_registry
from lighthubert_s3prl.superb.tasks import TASKS, TaskConfigError, build_config

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# fixtures: real-layout data sets made of metadata only (no audio is read while building configs)


def _trials(count: int) -> str:
    return "".join(f"{i % 2} id10270/v{i}/00001.wav id10300/w{i}/00002.wav\n" for i in range(count))


def _voxceleb(root: Path, lists: dict) -> Path:
    """A VoxCeleb1 folder with speaker folders, iden_split.txt and trial lists of the given lengths."""
    vox = root / "VoxCeleb1"
    for part, speaker in (("dev", "id10001"), ("test", "id10270")):
        (vox / part / "wav" / speaker).mkdir(parents=True)
    (vox / "iden_split.txt").write_text("1 id10001/a/00001.wav\n2 id10001/b/00001.wav\n3 id10001/c/00001.wav\n")
    for name, count in lists.items():
        (vox / name).write_text(_trials(count))
    return vox


def _librispeech(root: Path) -> Path:
    libri = root / "LibriSpeech"
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        chapter = libri / split / "19" / "198"
        chapter.mkdir(parents=True)
        (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n")
    return libri


def _run_options(argv):
    return runner.options_from_args(runner.build_parser().parse_args(argv))


# ----------------------------------------------------------------------------------------------------
# ASV: the original VoxCeleb1-O list (37,720 trials), never silently the cleaned one (37,611)


def test_asv_scores_the_original_trial_list(tmp_path):
    vox = _voxceleb(tmp_path, {"veri_test2.txt": 37611, "veri_test.txt": 37720})
    config = yaml.safe_load(build_config("asv", vox, tmp_path / "asv.yaml").read_text())
    assert config["downstream_expert"]["datarc"]["test_meta_data"] == str(vox / "veri_test.txt")
    # s3prl's copy of the same list, under its own name, is found as well
    (vox / "veri_test.txt").rename(vox / "voxceleb1_test_v2.txt")
    config = yaml.safe_load(build_config("asv", vox, tmp_path / "asv2.yaml").read_text())
    assert config["downstream_expert"]["datarc"]["test_meta_data"] == str(vox / "voxceleb1_test_v2.txt")


def test_asv_refuses_the_cleaned_list_unless_asked(tmp_path):
    vox = _voxceleb(tmp_path, {"veri_test2.txt": 37611})
    out = tmp_path / "asv.yaml"
    with pytest.raises(TaskConfigError, match=r"no original VoxCeleb1-O trial list .*test_meta_data=PATH"):
        build_config("asv", vox, out)
    cleaned = vox / "veri_test2.txt"
    with pytest.raises(TaskConfigError, match=r"37,611 trials, the cleaned VoxCeleb1-O list.*37,720 trials"
                                              r".*allow_cleaned_trials=True"):
        build_config("asv", vox, out, test_meta_data=cleaned)
    assert not out.exists()
    config = yaml.safe_load(build_config("asv", vox, out, test_meta_data=cleaned, allow_cleaned_trials=True)
                            .read_text())
    assert config["downstream_expert"]["datarc"]["test_meta_data"] == str(cleaned)


def test_run_superb_asv_cleaned_trials_flag(tmp_path, capsys):
    vox = _voxceleb(tmp_path, {"veri_test2.txt": 37611})
    data = tmp_path / "data.yaml"
    data.write_text(f"asv: {{root: {vox}, test_meta_data: {vox / 'veri_test2.txt'}}}\n")
    argv = ["-u", "fbank", "--tasks", "asv", "--data-config", str(data), "--gpus", "0", "--exp-root",
            str(tmp_path / "exp")]
    with pytest.raises(runner.RunnerError, match="cleaned VoxCeleb1-O list"):
        runner.SuperbRunner(_run_options(argv)).build_configs(["asv"])
    allowed = runner.SuperbRunner(_run_options(argv + ["--asv-cleaned-trials"]))
    allowed.build_configs(["asv"])
    config = yaml.safe_load((tmp_path / "exp" / "configs" / "asv.yaml").read_text())
    assert config["downstream_expert"]["datarc"]["test_meta_data"] == str(vox / "veri_test2.txt")


# ----------------------------------------------------------------------------------------------------
# --gpus N: s3prl accumulates per process, so the accumulation is divided by N


def test_gpus_divide_gradient_accumulation(tmp_path, capsys):
    vox = _voxceleb(tmp_path, {"veri_test.txt": 20})
    argv = ["-u", "fbank", "--tasks", "sid,er,pr", "--data", str(vox), "--gpus", "2", "--device", "cuda",
            "--exp-root", str(tmp_path / "exp")]
    superb = runner.SuperbRunner(_run_options(argv))
    # SID 8 x 4 on one GPU -> 8 x 2 on each of 2; ER 4 x 8 -> 4 x 4; PR 16 x 2 -> 16 x 1
    assert {t: superb._overrides(t)["runner.gradient_accumulate_steps"] for t in ("sid", "er", "pr")} == \
        {"sid": 2, "er": 4, "pr": 1}
    superb.build_configs(["sid"])
    config = yaml.safe_load((tmp_path / "exp" / "configs" / "sid.yaml").read_text())
    assert config["runner"]["gradient_accumulate_steps"] == 2
    assert config["downstream_expert"]["datarc"]["train_batch_size"] * 2 * 2 == 32  # per GPU x accum x GPUs

    assert runner.main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# sid: effective batch 8 per step x 2 accumulation x 2 processes = 32" in out
    assert "# sid: --gpus 2: gradient_accumulate_steps 4 -> 2 per process" in out
    assert "# er: --gpus 2: gradient_accumulate_steps 8 -> 4 per process" in out


def test_gpus_that_do_not_divide_the_accumulation_are_refused(tmp_path, capsys):
    vox = _voxceleb(tmp_path, {"veri_test.txt": 20})
    argv = ["-u", "fbank", "--tasks", "sid,er", "--data", str(vox), "--gpus", "3", "--dry-run",
            "--exp-root", str(tmp_path / "exp")]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert "sid: gradient_accumulate_steps 4 (effective batch 32) is not divisible by --gpus 3" in err
    assert "--gpus 1 or 2 or 4" in err and "--set sid:runner.gradient_accumulate_steps=12" in err
    assert "er: gradient_accumulate_steps 8 (effective batch 32) is not divisible by --gpus 3" in err
    # the fix the message names is accepted: 12 / 3 = 4 per process
    assert runner.main(argv[:2] + ["--tasks", "sid"] + argv[4:] + ["--set", "sid:runner.gradient_accumulate_steps=12"]) == 0
    assert "gradient_accumulate_steps 12 -> 4 per process" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# SID learning rate: from the subnet actually run, whatever the entry


@pytest.fixture(scope="module")
def base_width_ckpt(tmp_path_factory) -> Path:
    """A one-layer supernet 640 wide (base's width) whose own subnet is that width."""
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    cfg = tiny_model_config(encoder_embed_dim=640, encoder_ffn_embed_dim=640, encoder_attention_heads=10,
                            encoder_layers=1, layer_pred_num="0", teacher_embed_dim=640)
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "wide.pt", "small", seed=0, model_cfg=cfg)


@pytest.fixture(scope="module")
def narrow_ckpt(tmp_path_factory) -> Path:
    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "narrow.pt", "small", seed=0,
                                   model_cfg=tiny_model_config())


def _sid_lr(tmp_path, entry_args):
    vox = _voxceleb(tmp_path, {})
    argv = [*entry_args, "--tasks", "sid", "--data", str(vox), "--gpus", "0", "--exp-root", str(tmp_path / "e")]
    superb = runner.SuperbRunner(_run_options(argv))
    return superb._overrides("sid").get("lr"), superb.sid_rate[1]


def _subnet_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_sid_rate_follows_the_subnet_run(tmp_path, base_width_ckpt, narrow_ckpt):
    ckpt = str(base_width_ckpt)
    # the same checkpoint through the generic entries: its own subnet is 640 wide, base's width -> 5e-2
    for entry in (["-u", "lighthubert_local", "-k", ckpt], ["-u", "lighthubert_subnet", "-k", ckpt, "-g",
                  _subnet_file(tmp_path, "own.yaml", "implementation: compact\nsubnet: {embed_dim: 640, "
                                                     "layer_num: 1, heads_num: 10, ffn_embed: 640}\n")]):
        lr, why = _sid_lr(tmp_path / entry[1], entry)
        assert lr == 5e-2 and "embed_dim 640" in why and "base" in why, why
    # an official name with -g choosing another released subnet: that subnet's rate, not the name's
    small = _subnet_file(tmp_path, "small.yaml", "subnet: small\n")
    lr, why = _sid_lr(tmp_path / "b", ["-u", "lighthubert_base", "-k", ckpt, "-g", small])
    assert lr == 5e-3 and "released small subnet" in why, why
    stage1 = _subnet_file(tmp_path, "stage1.yaml", "subnet: stage1\n")
    lr, why = _sid_lr(tmp_path / "s", ["-u", "lighthubert_subnet", "-k", ckpt, "-g", stage1])
    assert lr == 1e-2 and "released stage1 subnet" in why, why
    assert _sid_lr(tmp_path / "n", ["-u", "lighthubert_base"])[0] == 5e-2
    # a width no released model has: the config's rate, said so
    lr, why = _sid_lr(tmp_path / "t", ["-u", "lighthubert_local", "-k", str(narrow_ckpt)])
    assert lr is None and "lr 0.005, the config's" in why and "embed_dim 128" in why, why
    # an explicit --lr always wins
    assert _sid_lr(tmp_path / "l", ["-u", "lighthubert_local", "-k", ckpt, "--lr", "sid=3e-3"])[0] == 3e-3


def test_sid_rate_is_printed_by_dry_run(tmp_path, base_width_ckpt, capsys):
    vox = _voxceleb(tmp_path, {})
    argv = ["-u", "lighthubert_local", "-k", str(base_width_ckpt), "--tasks", "sid", "--data", str(vox),
            "--gpus", "0", "--exp-root", str(tmp_path / "e"), "--dry-run"]
    assert runner.main(argv) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("# sid: lr"))
    assert line.startswith("# sid: lr 0.05, the LightHuBERT authors' SID rate for base") and "wide.pt" in line


# ----------------------------------------------------------------------------------------------------
# PR lexicon: SUPERB's g2p files, fetched and verified; CMUdict only for the synthetic corpus

FIXTURE = b"NORTHANGER\tN AO1 R TH AE2 NG G ER0\nABBEY\tAE1 B IY0\n"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL) of a loopback HTTP server serving that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(name: str, data: bytes, **wrong):
    from lighthubert_s3prl.superb.lexicon import LexiconFile

    values = dict(git_blob_sha1=_git_blob_sha1(data), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    values.update(wrong)
    return LexiconFile(name, **values)


def test_lexicon_blob_check_agrees_with_git(served, tmp_path, monkeypatch):
    """The 200k file is pinned by its git blob id alone: the check must compute what git computes."""
    from lighthubert_s3prl.superb.lexicon import LexiconError, LexiconFile, fetch_lexicon

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.delenv("LIGHTHUBERT_S3PRL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder, url = served
    (folder / "blob-g2p.txt").write_bytes(FIXTURE)
    blob = subprocess.run(["git", "hash-object", "--no-filters", str(folder / "blob-g2p.txt")], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert fetch_lexicon(LexiconFile("blob-g2p.txt", git_blob_sha1=blob), tmp_path / "c", url).read_bytes() == FIXTURE
    (folder / "blob-g2p.txt").write_bytes(FIXTURE + b"\n")  # one byte more: another blob
    with pytest.raises(LexiconError, match="git blob sha1"):
        fetch_lexicon(LexiconFile("blob-g2p.txt", git_blob_sha1=blob), tmp_path / "d", url)


def test_lexicon_download_is_verified_and_installed_atomically(served, tmp_path, monkeypatch):
    from lighthubert_s3prl.superb.lexicon import fetch_lexicon

    monkeypatch.delenv("LIGHTHUBERT_S3PRL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder, url = served
    (folder / "fixture-g2p.txt").write_bytes(FIXTURE)
    cache = tmp_path / "cache"
    path = fetch_lexicon(_entry("fixture-g2p.txt", FIXTURE), cache, url)
    assert path == cache / "fixture-g2p.txt" and path.read_bytes() == FIXTURE
    assert os.listdir(cache) == ["fixture-g2p.txt"]  # no temporary file left beside it
    # a cached, verified file is used without the server
    (folder / "fixture-g2p.txt").unlink()
    assert fetch_lexicon(_entry("fixture-g2p.txt", FIXTURE), cache, url) == path


@pytest.mark.parametrize("wrong", [{"sha256": "0" * 64}, {"sha256": None, "size": None, "git_blob_sha1": "1" * 40},
                                   {"size": len(FIXTURE) + 1}])
def test_lexicon_with_a_wrong_checksum_is_never_installed(served, tmp_path, monkeypatch, wrong):
    from lighthubert_s3prl.superb.lexicon import LexiconError, fetch_lexicon

    monkeypatch.delenv("LIGHTHUBERT_S3PRL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder, url = served
    (folder / "fixture-g2p.txt").write_bytes(FIXTURE)
    cache = tmp_path / "cache"
    with pytest.raises(LexiconError, match=r"fixture-g2p.txt failed its checksum .*nothing was installed"):
        fetch_lexicon(_entry("fixture-g2p.txt", FIXTURE, **wrong), cache, url)
    assert not cache.exists() or os.listdir(cache) == []


def test_lexicon_offline_names_both_routes(tmp_path, monkeypatch):
    from lighthubert_s3prl.superb.lexicon import LexiconError, fetch_lexicon

    monkeypatch.setenv("LIGHTHUBERT_S3PRL_OFFLINE", "1")
    with pytest.raises(LexiconError) as err:
        fetch_lexicon(_entry("librispeech-lexicon-200k-g2p.txt", FIXTURE), tmp_path / "cache",
                      "http://127.0.0.1:9/")
    text = str(err.value)
    assert "offline mode is set" in text and "https://github.com/s3prl/s3prl" in text  # route 1: the download
    assert "lexicon=[PATH_200K, PATH_ALLOTHERS]" in text  # route 2: local copies


def test_pr_on_real_librispeech_uses_superb_lexicons(tmp_path, monkeypatch):
    from lighthubert_s3prl.superb import lexicon

    libri = _librispeech(tmp_path)
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_OFFLINE", "1")
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_CACHE", str(tmp_path / "cache"))
    # offline with an empty cache: refused (no CMUdict stand-in), naming both ways out
    with pytest.raises(TaskConfigError, match=r"g2p lexicons.*github.com/s3prl/s3prl.*lexicon=\[PATH_200K"):
        build_config("pr", libri, tmp_path / "pr.yaml")
    # local copies passed as lexicon= work offline, in the order given
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(FIXTURE), second.write_bytes(FIXTURE)
    config = yaml.safe_load(build_config("pr", libri, tmp_path / "pr.yaml", lexicon=[first, second]).read_text())
    assert config["downstream_expert"]["corpus"]["lexicon"] == [str(first), str(second)]
    # verified files in the cache are used offline, in s3prl's order
    entries = (_entry("one-g2p.txt", FIXTURE), _entry("two-g2p.txt", FIXTURE + b"X\tEH1 K S\n"))
    monkeypatch.setattr(lexicon, "SUPERB_LEXICONS", entries)
    cache = tmp_path / "cache" / lexicon.CACHE_FOLDER
    cache.mkdir(parents=True)
    (cache / "one-g2p.txt").write_bytes(FIXTURE)
    (cache / "two-g2p.txt").write_bytes(FIXTURE + b"X\tEH1 K S\n")
    config = yaml.safe_load(build_config("pr", libri, tmp_path / "pr2.yaml").read_text())
    assert config["downstream_expert"]["corpus"]["lexicon"] == [str(cache / "one-g2p.txt"), str(cache / "two-g2p.txt")]


def test_superb_lexicon_table_matches_s3prls_files():
    from lighthubert_s3prl.superb import lexicon

    # s3prl's tree at its 0.4.18 commit: blob ids, and the allothers file as measured
    assert lexicon.S3PRL_COMMIT == "ec8064b5889f81ca460fbe2c094ce576a6f120b7"
    assert [(e.name, e.git_blob_sha1) for e in lexicon.SUPERB_LEXICONS] == [
        ("librispeech-lexicon-200k-g2p.txt", "a9143b4f90bde7f71221b7e546f780f3b655c8f7"),
        ("librispeech-lexicon-allothers-g2p.txt", "cdc9ff665e674959c1150c62714150c3d3d0b726")]
    assert lexicon.SUPERB_LEXICONS[1].size == 436856
    assert lexicon.S3PRL_LEXICON_URL.startswith("https://raw.githubusercontent.com/s3prl/s3prl/ec8064b5")


# ----------------------------------------------------------------------------------------------------
# hidden-set submission folder: a Hub repository's content


def test_package_hidden_writes_a_hub_ready_folder(tmp_path, narrow_ckpt):
    from lighthubert_s3prl.superb import package

    folder = tmp_path / "hidden"
    package.build_hidden(narrow_ckpt, _subnet_file(tmp_path, "subnet.yaml", "subnet: {embed_dim: 64, layer_num: 6, "
                                                   "heads_num: 1, ffn_ratio: 2.0}\n"), folder)
    # weights go through git-LFS
    attributes = (folder / ".gitattributes").read_text().splitlines()
    assert "*.pt filter=lfs diff=lfs merge=lfs -text" in attributes
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(folder)], check=True)
        check = subprocess.run(["git", "-C", str(folder), "check-attr", "filter", "--", "model.pt"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert check == "model.pt: filter: lfs"
        shutil.rmtree(folder / ".git")
    # the bundled code's needs (load_state_dict(assign=True) is torch 2.1), not the exporting machine's torch
    assert (folder / "requirements.txt").read_text().split() == ["torch>=2.1", "pyyaml"]
    # validation compiles nothing into the folder that is pushed
    package.validate_hidden_folder(folder)
    assert not [p for p in folder.rglob("__pycache__")]
    # a folder whose weights would be pushed without LFS is refused with the fix
    (folder / ".gitattributes").unlink()
    with pytest.raises(package.PackageError, match=r"does not store model.pt with git-LFS.*\*\.pt filter=lfs"):
        package.validate_hidden_folder(folder)


# ----------------------------------------------------------------------------------------------------
# small facts


def test_sid_sota_anchor_is_the_leaderboards():
    # (x - FBANK) / (SOTA - FBANK) with SID's FBANK 20.06 and the leaderboard's SOTA 90.30
    assert reference.task_term("sid", 90.30) == pytest.approx(1.0)
    assert reference.task_term("sid", 69.70) == pytest.approx(49.64 / 70.24)


S3PRL_CHAR_ORDER = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "C", "W", "F", "G",
                    "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]


def test_char_dict_has_s3prls_symbol_order():
    path = REPO / "downstream_configs" / "asr" / "char.dict"
    assert [line.split()[0] for line in path.read_text().splitlines()] == S3PRL_CHAR_ORDER
    from s3prl.downstream.asr.dictionary import Dictionary

    dictionary = Dictionary.load(str(path))
    assert dictionary.symbols[dictionary.nspecial:] == S3PRL_CHAR_ORDER  # output index = position


def test_asr_decoder_args_take_s3prls_kenlm_override():
    from s3prl.utility.helper import override

    config = task_registry.load_task_config("asr")
    decoder = config["downstream_expert"]["datarc"]["decoder_args"]
    assert decoder == {"decoder_type": "None", "nbest": 1, "criterion": "ctc", "beam": 5, "beam_threshold": 25,
                       "kenlm_model": decoder["kenlm_model"], "lexicon": decoder["lexicon"], "lm_weight": 2,
                       "word_score": -1, "unk_weight": "-math.inf", "sil_weight": 0}
    # s3prl's documented evaluation command, applied by s3prl's own override parser
    override("config.downstream_expert.datarc.decoder_args.decoder_type='kenlm',,"
             "config.downstream_expert.datarc.decoder_args.kenlm_model='/lm/4-gram.arpa.gz',,"
             "config.downstream_expert.datarc.decoder_args.lexicon='/lm/librispeech_lexicon.lst'",
             Namespace(), config)
    args = Namespace(**config["downstream_expert"]["datarc"]["decoder_args"])
    # everything s3prl's W2lKenLMDecoder reads from its args
    for key in ("beam", "beam_threshold", "kenlm_model", "lexicon", "lm_weight", "nbest", "sil_weight",
                "unk_weight", "word_score"):
        assert hasattr(args, key), key
    assert args.decoder_type == "kenlm" and args.kenlm_model == "/lm/4-gram.arpa.gz"


def test_asr_trains_on_16_utterances_per_step(tmp_path):
    """s3prl's own ASR dataset, on a LibriSpeech-like length table: every bucket of 32 is split in two."""
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary

    libri, bucket = tmp_path / "LibriSpeech", tmp_path / "len_for_bucket"
    chapter = libri / "train-clean-100" / "19" / "198"
    chapter.mkdir(parents=True)
    bucket.mkdir()
    utts = [f"19-198-{i:04d}" for i in range(64)]
    (chapter / "19-198.trans.txt").write_text("".join(f"{u} A B\n" for u in utts))
    # the shortest LibriSpeech utterances last about a second: far above the recipe's 2000-sample cut
    rows = "".join(f"{i},train-clean-100/19/198/{u}.flac,{16000 * (40 - i // 2)},\n" for i, u in enumerate(utts))
    (bucket / "train-clean-100.csv").write_text(",file_path,length,label\n" + rows)
    config = task_registry.load_task_config("asr")["downstream_expert"]["datarc"]
    dictionary = Dictionary.load(str(REPO / "downstream_configs" / "asr" / "char.dict"))
    data = SequenceDataset("train", config["batch_size"], dictionary, str(libri), str(bucket),
                           train=["train-clean-100"])
    assert config["batch_size"] == 32 and [len(batch) for batch in data.X] == [16, 16, 16, 16]
    assert TASKS["asr"].effective_batch == 16
    assert task_registry.batch_plan("asr").effective == 16
