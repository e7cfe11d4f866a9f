"""Task registry, config building, and every SUPERB recipe run through s3prl's own runner on the ci corpus.

The end-to-end runs use s3prl's weight-free ``fbank`` upstream on CPU (switch ``UPSTREAM`` to a tiny
LightHuBERT checkpoint once the launcher's entries are wanted here). Each task trains with the ``ci``
config, then ``-m evaluate -e <checkpoint>`` must print the task's score line and write its
prediction file. One learning check trains KS long enough to show the corpus is learnable.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
import yaml

from lighthubert_s3prl.superb import tasks as task_registry
from lighthubert_s3prl.superb.corpus import make_corpus
from lighthubert_s3prl.superb.tasks import TASKS, TaskConfigError, build_config

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = ["-u", "fbank"]

# Runs s3prl's run_downstream.main() once per argv list, in one process (one import of s3prl). "-e"
# values of the form "BEST_OR_LAST:<expdir>:<best name>" become that checkpoint if it was written
# (a dev score must improve on its initial value first) or else the last states-*.ckpt.
DRIVER = r"""
import argparse, glob, json, os, sys
import torch
torch.set_num_threads(1)  # the ops here are tiny: OpenMP threads only add contention on 2 cores
torch.serialization.add_safe_globals([argparse.Namespace])  # s3prl checkpoints pickle the args
from lighthubert_s3prl.upstream import recipe_patches
recipe_patches.apply()
from s3prl import run_downstream
for argv in json.loads(sys.argv[1]):
    argv = list(argv)
    if "-e" in argv and argv[argv.index("-e") + 1].startswith("BEST_OR_LAST:"):
        _, expdir, best = argv[argv.index("-e") + 1].split(":")
        states = sorted(glob.glob(os.path.join(expdir, "states-*.ckpt")), key=lambda p: int(p.split("-")[-1][:-5]))
        argv[argv.index("-e") + 1] = os.path.join(expdir, best) if best and os.path.isfile(os.path.join(expdir, best)) else states[-1]
    print(f"@@@ run_downstream {argv[1]}", flush=True)
    sys.argv = ["run_downstream.py"] + argv
    run_downstream.main()
"""


@pytest.fixture(scope="session")
def ci_corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.getbasetemp() / "mini_superb_ci", "ci", seed=0)


@pytest.fixture(scope="session")
def recipe_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipe_cache")


def run_s3prl(runs, workdir: Path, cache: Path, timeout: int = 400, **env_extra: str) -> str:
    """Run the argv lists through the driver in a fresh process (cwd = workdir); return its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", LIGHTHUBERT_S3PRL_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **env_extra)
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return proc.stdout


# ----------------------------------------------------------------------------------------------------
# registry and configs


def test_registry_covers_the_ten_tasks():
    assert sorted(TASKS) == ["asr", "asv", "er", "ic", "ks", "pr", "qbe", "sd", "sf", "sid"]
    assert {t: s.downstream for t, s in TASKS.items()} == {
        "asr": "asr", "asv": "sv_voxceleb1", "er": "emotion", "ic": "fluent_commands", "ks": "speech_commands",
        "pr": "ctc", "sid": "voxceleb1", "sd": "diarization", "qbe": "quesst14_dtw", "sf": "ctc"}
    assert [t for t in TASKS if not TASKS[t].trains] == ["qbe"]
    assert {t: TASKS[t].scored_by for t in ("sd", "qbe", "sf")} == {"sd": "diarization", "qbe": "qbe", "sf": "recipe"}
    assert TASKS["sd"].best_ckpt == "best-states-dev.ckpt" and TASKS["qbe"].prediction_file == "benchmark.stdlist.xml"
    assert TASKS["asr"].evaluate_splits == ("test-clean",) and TASKS["asr"].best_ckpt == "dev-clean-best.ckpt"
    assert TASKS["asv"].best_ckpt is None and TASKS["er"].folds == tuple(f"fold{i}" for i in range(1, 6))
    assert TASKS["er"].prediction_path("/x", "fold3") == Path("/x/test_fold3_predict.txt")
    with pytest.raises(TaskConfigError, match="fold"):
        TASKS["er"].prediction_path("/x")
    assert TASKS["asv"].parse_result("noise\nsv-voxceleb1/test-EER: 0.125\n") == 0.125
    assert TASKS["asr"].parse_result("test-clean wer: 12.5\ntest-clean wer: 11.0") == 11.0
    assert TASKS["pr"].parse_result("dev per: 0.5") is None


# utterances per optimiser step as s3prl batches them: ASR's recipe halves each bucket of 32 (every
# LibriSpeech bucket is over its 2000-sample threshold); the rest is batch size x accumulation
EFFECTIVE_BATCH = {"asr": 32 // 2 * 1, "asv": 10 * 5, "er": 4 * 8, "ic": 32 * 1, "ks": 32 * 1, "pr": 16 * 2,
                   "sid": 8 * 4, "sd": 8 * 4, "sf": 32 * 1}
TRAINED = sorted(t for t in TASKS if TASKS[t].trains)


def test_the_qbe_config_is_superbs_dtw_setting():
    full = task_registry.load_task_config("qbe")
    assert full["runner"] == {} and full["downstream_expert"]["feature_normalization"] is True
    assert full["downstream_expert"]["dtwrc"] == {"dist_method": "cosine_exp", "minmax_norm": True,
                                                  "step_pattern": "asymmetric", "subsequence": True}
    assert task_registry.load_task_config("qbe", "ci")["downstream_expert"]["datarc"]["num_workers"] == 0


@pytest.mark.parametrize("task", TRAINED)
def test_configs_follow_superb_and_lighthubert_settings(task):
    spec = TASKS[task]
    full, ci = task_registry.load_task_config(task), task_registry.load_task_config(task, "ci")
    runner = full["runner"]
    batch = task_registry._get_dotted(full, spec.batch_key) // (2 if spec.bucket_halves else 1)
    assert batch * runner["gradient_accumulate_steps"] == spec.effective_batch == EFFECTIVE_BATCH[task]
    assert full["optimizer"]["lr"] == spec.lr
    assert runner["total_steps"] >= 30000 and ci["runner"]["total_steps"] <= 40
    section = ci["downstream_expert"].get("loaderrc") or ci["downstream_expert"].get("datarc") or \
        ci["downstream_expert"]["corpus"]
    assert section["num_workers"] == 0
    for key in spec.assets:
        assert (spec.config_dir / task_registry._get_dotted(full, key)).is_file()


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


# what the mini scale may change: steps, evaluation and saving points, batch, learning rate (its value and its
# schedule over the steps), training crops, in-process loading
MINI_MAY_CHANGE = re.compile(r"^(runner\.(total_steps|log_step|eval_step|save_step|max_keep|"
                             r"gradient_accumulate_steps)|optimizer\.lr|scheduler\.\w+|"
                             r"downstream_expert\.(datarc|corpus|loaderrc)\."
                             r"(num_workers|batch_size|train_batch_size|train_batchsize|eval_batch_size|max_timestep)|"
                             r"downstream_expert\.max_workers)$")  # max_workers: QbE's DTW processes


# the one departure from SUPERB's model, stated in asr/mini.yaml and docs/superb.md: a 256-wide BiLSTM, because
# SUPERB's 1,024-wide one takes 10-25 s per update on 2 CPU cores
MINI_MODEL_EXCEPTIONS = {"asr": {"downstream_expert.modelrc.project_dim": 256,
                                 "downstream_expert.modelrc.RNNs.dim": [256, 256]},
                         "sf": {"downstream_expert.model.project_dim": 256,  # the same, stated in sf/mini.yaml
                                "downstream_expert.model.RNNs.dim": [256, 256]},
                         "sd": {"downstream_expert.modelrc.hidden_size": 256}}  # stated in sd/mini.yaml


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_mini_scale_keeps_superbs_model_and_changes_only_what_it_may(task):
    full = dict(_leaves(task_registry.load_task_config(task)))
    mini = dict(_leaves(task_registry.load_task_config(task, "mini")))
    added = set(mini) - set(full)
    assert set(full) <= set(mini) and all(re.match(r"^scheduler\.", k) for k in added), \
        f"the mini scale drops no key and adds none but a learning-rate schedule: {sorted(added)}"
    exceptions = MINI_MODEL_EXCEPTIONS.get(task, {})
    assert all(mini[k] == v for k, v in exceptions.items())
    changed = sorted(k for k in mini if mini[k] != full.get(k) and k not in exceptions)
    assert changed and all(MINI_MAY_CHANGE.match(k) for k in changed), changed
    override = yaml.safe_load(TASKS[task].override_path("mini").read_text())
    assert set(changed) <= {k for k, _ in _leaves(override)}, "nothing changes but what mini.yaml names"
    assert all(mini[k] == v for k, v in _leaves(override)), "every value of mini.yaml is applied"
    assert "#" in TASKS[task].override_path("mini").read_text(), "each override states why"


def test_a_task_without_the_scales_file_says_so(tmp_path, monkeypatch):
    for name in ("config.yaml", "ci.yaml"):
        (tmp_path / "ks").mkdir(exist_ok=True)
        (tmp_path / "ks" / name).write_bytes((TASKS["ks"].config_dir / name).read_bytes())
    monkeypatch.setattr(task_registry, "_config_root", lambda: tmp_path)
    assert task_registry.load_task_config("ks", "ci")["runner"]["total_steps"] < 1000
    with pytest.raises(task_registry.TaskConfigError, match=r"ks has no 'mini' scale: .*mini\.yaml is missing"):
        task_registry.load_task_config("ks", "mini")


def test_an_unknown_scale_lists_the_scales():
    with pytest.raises(task_registry.TaskConfigError, match=r"unknown scale 'tiny'; use one of 'full' .*'mini' .*'ci'"):
        task_registry.load_task_config("ks", "tiny")
    assert TASKS["ks"].override_path("full") is None


@pytest.mark.parametrize("task", sorted(TASKS))
def test_build_config_points_at_existing_absolute_paths(task, ci_corpus, tmp_path):
    spec = TASKS[task]
    path = build_config(task, ci_corpus["root"], tmp_path / task / "config.yaml", scale="ci", lr=0.01)
    config = yaml.safe_load(path.read_text())
    assert config["optimizer"]["lr"] == 0.01
    section = task_registry._get_dotted(config, spec.data_section)
    values = [section[k] for k in spec.data_keys] + [task_registry._get_dotted(config, k) for k in spec.assets]
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            assert Path(item).is_absolute() and Path(item).exists(), item


def test_build_config_finds_real_dataset_layouts(ci_corpus, tmp_path):
    # the corpus's data set folders have no manifest of their own: this is the real-data path
    root = Path(ci_corpus["root"])
    roots = {"ks": root / "speech_commands", "ic": root / "fluent_speech_commands_dataset",
             "er": root / "IEMOCAP_full_release", "sid": root / "VoxCeleb1", "asv": root / "VoxCeleb1",
             "asr": root / "LibriSpeech", "pr": root / "LibriSpeech", "sf": root / "SNIPS", "sd": root / "Libri2Mix",
             "qbe": root / "quesst14Database"}
    for task, data_root in roots.items():
        config = yaml.safe_load(build_config(task, data_root, tmp_path / task / "c.yaml").read_text())
        section = task_registry._get_dotted(config, TASKS[task].data_section)
        assert section == {**section, **{k: v for k, v in ci_corpus["tasks"][task]["paths"].items()
                                         if k != "lexicon"}}
    # with no meta_data folder and no length tables, build_config writes them next to the config
    bare = tmp_path / "bare"
    for session in (root / "IEMOCAP_full_release").glob("Session*"):
        (bare / "IEMOCAP_full_release").mkdir(parents=True, exist_ok=True)
        (bare / "IEMOCAP_full_release" / session.name).symlink_to(session, target_is_directory=True)
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        (bare / "LibriSpeech").mkdir(exist_ok=True)
        (bare / "LibriSpeech" / split).symlink_to(root / "LibriSpeech" / split, target_is_directory=True)
    er = yaml.safe_load(build_config("er", bare, tmp_path / "out" / "er.yaml", test_fold="fold3").read_text())
    assert er["downstream_expert"]["datarc"]["meta_data"] == str(tmp_path / "out" / "assets" / "er" / "meta_data")
    assert er["downstream_expert"]["datarc"]["test_fold"] == "fold3"
    generated = json.loads((tmp_path / "out/assets/er/meta_data/Session3/test_meta_data.json").read_text())
    shipped = json.loads((root / "IEMOCAP_full_release/meta_data/Session3/test_meta_data.json").read_text())
    assert generated == shipped
    asr = yaml.safe_load(build_config("asr", bare, tmp_path / "out" / "asr.yaml").read_text())
    bucket = Path(asr["downstream_expert"]["datarc"]["bucket_file"])
    assert (bucket / "train-clean-100.csv").read_text() == (root / "LibriSpeech/len_for_bucket/train-clean-100.csv").read_text()
    # real LibriSpeech takes SUPERB's lexicons (cached or downloaded), or the files passed as lexicon=
    lexicon = root / "LibriSpeech" / "lexicon.txt"
    pr = yaml.safe_load(build_config("pr", bare, tmp_path / "out" / "pr.yaml", lexicon=lexicon).read_text())
    assert pr["downstream_expert"]["corpus"]["lexicon"] == [str(lexicon)]


def test_build_config_bad_inputs_name_problem_and_fix(ci_corpus, tmp_path, monkeypatch):
    out = tmp_path / "c.yaml"
    with pytest.raises(TaskConfigError, match=r"unknown task 'se'; choose one of asr, asv, ks, ic, er, pr, sid, sd, "
                                              r"qbe, sf"):
        build_config("se", ci_corpus["root"], out)
    with pytest.raises(TaskConfigError, match=r"data root .*missing does not exist.*make-corpus"):
        build_config("ks", tmp_path / "missing", out)
    with pytest.raises(TaskConfigError, match=r"unknown scale 'tiny'"):
        build_config("ks", ci_corpus["root"], out, scale="tiny")
    with pytest.raises(TaskConfigError, match=r"unknown override 'batch'"):
        build_config("ks", ci_corpus["root"], out, batch=3)
    with pytest.raises(TaskConfigError, match=r"test_fold must be one of fold1, fold2"):
        build_config("er", ci_corpus["root"], out, test_fold="fold9")
    partial = make_corpus(tmp_path / "partial", "ci", tasks="er")
    with pytest.raises(TaskConfigError, match=r"has no ks data .*--tasks ks"):
        build_config("ks", partial["root"], out)
    with pytest.raises(TaskConfigError, match=r"does not hold Fluent Speech Commands.*make-corpus"):
        build_config("ic", tmp_path, out)
    with pytest.raises(TaskConfigError, match=r"does not hold Libri2Mix diarization data dirs"):
        build_config("sd", tmp_path, out)
    with pytest.raises(TaskConfigError, match=r"does not hold the QUESST 2014 database"):
        build_config("qbe", tmp_path, out)
    # SD's loader opens wav.scp entries from s3prl's working directory: relative ones are refused
    for split in ("train", "dev", "test"):
        (tmp_path / "mix" / split).mkdir(parents=True)
        (tmp_path / "mix" / split / "segments").write_text("u1 r1 0.0 1.0\n")
        (tmp_path / "mix" / split / "wav.scp").write_text(f"r1 /abs/{split}/r1.wav\n")
    (tmp_path / "mix" / "dev" / "wav.scp").write_text("r1 wav/r1.wav\n")
    with pytest.raises(TaskConfigError, match=r"dev/wav.scp:1 names 'wav/r1.wav', a relative path"):
        build_config("sd", tmp_path / "mix", out)
    (tmp_path / "vox" / "dev" / "wav").mkdir(parents=True)
    with pytest.raises(TaskConfigError, match=r"no identification split list .*iden_split.txt.*meta_data=PATH"):
        build_config("sid", tmp_path / "vox", out)
    libri = tmp_path / "libri" / "train-clean-100" / "1" / "2"
    libri.mkdir(parents=True)
    (libri / "1-2.trans.txt").write_text("1-2-0000 HELLO ZQXWVBNM\n")
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_OFFLINE", "1")
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(TaskConfigError, match=r"g2p lexicons; librispeech-lexicon-200k-g2p.txt is not in the cache "
                                              r"and offline mode is set.*lexicon=\[PATH_200K, PATH_ALLOTHERS\]"):
        build_config("pr", tmp_path / "libri", out)


# ----------------------------------------------------------------------------------------------------
# recipe patches


def _pauses_wav(path: Path) -> Path:
    """Stereo 22.05 kHz: lead-in silence, tones with a short pause (kept) and a long near-silent one (cut)."""
    import numpy as np
    import soundfile

    def tone(freq, n, amp=0.3):
        return amp * np.sin(2 * np.pi * freq * np.arange(n) / 16000)

    x = np.concatenate([np.zeros(8000), tone(220, 16000), np.zeros(800), tone(330, 8000), 1e-4 * tone(50, 4000),
                        tone(440, 8000, 0.05), np.zeros(6000)])
    soundfile.write(str(path), np.stack([x, 0.5 * x[::-1]], axis=1).astype(np.float32), 22050, subtype="PCM_16")
    return path


def test_sox_fallback_reproduces_libsox_lengths(tmp_path):
    from s3prl.downstream.speech_commands.dataset import EFFECTS as KS_EFFECTS
    from s3prl.downstream.sv_voxceleb1.dataset import EFFECTS as ASV_EFFECTS

    from lighthubert_s3prl.upstream.recipe_patches import apply_effects_file_fallback

    wav = _pauses_wav(tmp_path / "pauses.wav")
    # lengths libsox 14.4.2 (Debian 12) gives for this file through torchaudio 2.8's apply_effects_file
    for effects, expected in ((ASV_EFFECTS, 28464), (KS_EFFECTS, 36862)):
        audio, rate = apply_effects_file_fallback(wav, effects)
        assert (tuple(audio.shape), rate) == ((1, expected), 16000)
    with pytest.raises(NotImplementedError, match="libsox-dev"):
        apply_effects_file_fallback(wav, [["reverb", "50"]])


def test_sox_fallback_equals_libsox_where_installed(ci_corpus, tmp_path):
    from lighthubert_s3prl.upstream import recipe_patches

    if not recipe_patches.sox_available():
        pytest.skip("libsox not installed (apt-get install libsox-dev); golden lengths are checked instead")
    from s3prl.downstream.speech_commands.dataset import EFFECTS as KS_EFFECTS
    from s3prl.downstream.sv_voxceleb1.dataset import EFFECTS as ASV_EFFECTS
    from torchaudio.sox_effects import apply_effects_file

    root = Path(ci_corpus["root"])
    files = sorted(root.glob("VoxCeleb1/*/wav/*/*/*.wav"))[::4] + sorted(root.glob("speech_commands/*/*/*.wav"))[::20]
    for path in files + [_pauses_wav(tmp_path / "pauses.wav")]:
        for effects in (ASV_EFFECTS, KS_EFFECTS):
            ours, _ = recipe_patches.apply_effects_file_fallback(path, effects)
            theirs, _ = apply_effects_file(str(path), effects)
            assert ours.shape == theirs.shape, path
            assert float((ours - theirs).abs().max()) < 1e-4, path


def test_libriphone_stand_in(ci_corpus, tmp_path):
    from s3prl.downstream.ctc.text import load_text_encoder

    from lighthubert_s3prl.upstream.recipe_patches import LibriPhoneDataset

    paths = ci_corpus["tasks"]["pr"]["paths"]
    tokenizer = load_text_encoder("word", str(TASKS["pr"].config_dir / "phoneme.txt"))
    data = LibriPhoneDataset(["train-clean-100"], tokenizer, 8, paths["path"], [paths["lexicon"]])
    assert len(data) == 60
    lengths = [len(t) for t in data.text]
    assert lengths == sorted(lengths, reverse=True) and all(t[-1] == tokenizer.eos_idx for t in data.text)
    assert len(data[0]) == 8 and data[59] == data[52]  # buckets stay inside the data set
    first_path, first_tokens = data[0][0]
    assert tokenizer.decode(first_tokens) and first_path.suffix == ".flac"
    short = tmp_path / "short.txt"
    short.write_text("\n".join(line for line in Path(paths["lexicon"]).read_text().splitlines()
                               if not line.startswith("THE\t")))
    with pytest.raises(KeyError, match=r"\['THE'\] are in no lexicon file"):
        LibriPhoneDataset(["train-clean-100"], tokenizer, 1, paths["path"], [str(short)])


def test_apply_is_idempotent_and_scoped(tmp_path):
    # in a fresh process: apply() changes process-wide state that the rest of this session must not see
    code = r"""
import builtins, importlib, sys, torch
from lighthubert_s3prl.upstream import recipe_patches as rp
rp.apply(); rp.apply()
from s3prl.utility import helper
from s3prl import run_downstream
helper.hack_isinstance(); run_downstream.hack_isinstance(); first = builtins.isinstance
helper.hack_isinstance()
assert builtins.isinstance is first, "isinstance wrapped twice"
assert importlib.import_module("s3prl.downstream.ctc.corpus.libriphone").LibriPhoneDataset is rp.LibriPhoneDataset
rp.patch_downstream("sv_voxceleb1"); rp.patch_downstream("sv_voxceleb1")
from s3prl.downstream.sv_voxceleb1 import expert
assert getattr(expert.DownstreamExpert.forward, "_lighthubert_s3prl_patch", False)
before = torch.Tensor.cuda
with rp._cuda_calls_go_to(torch.device("cpu")):
    assert torch.ones(2).cuda().device.type == "cpu"
assert torch.Tensor.cuda is before and "cuda" not in torch.Tensor.__dict__
print("OK")
"""
    env = dict(os.environ, LIGHTHUBERT_S3PRL_CACHE=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------
# every recipe, end to end, through s3prl's runner
#
# The printed score must be the one its prediction file earns: the ids in the file are exactly the test
# set's and the metric, recomputed here from the file and the corpus's own test labels (folder names,
# CSV and JSON lists, transcripts + lexicon, the trial list), equals the printed one.


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Where the ROC curve, linear between its points, meets miss rate = false-alarm rate."""
    positives, negatives = sum(labels), len(labels) - sum(labels)
    points = [(0.0, 0.0)]
    for threshold in sorted(set(scores), reverse=True):
        accepted = [label for label, score in zip(labels, scores) if score >= threshold]
        points.append(((len(accepted) - sum(accepted)) / negatives, sum(accepted) / positives))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        g0, g1 = 1 - x0 - y0, 1 - x1 - y1  # miss rate minus false-alarm rate at each end
        if g0 >= 0 >= g1:
            return x0 if g0 == g1 else x0 + (x1 - x0) * g0 / (g0 - g1)
    raise AssertionError("the ROC curve never crosses the equal error line")


def _transcripts(libri: Path) -> Dict[str, List[str]]:
    return {utt: words for trans in (libri / "test-clean").rglob("*.trans.txt")
            for utt, *words in (line.split() for line in trans.read_text().splitlines())}


def _test_truth(task: str, paths: Dict[str, str], fold: Optional[str]) -> Dict[str, Any]:
    """Test item id, as the recipe names it -> its reference, read from the corpus's files."""
    if task == "ks":  # the test set's class folders
        test_root = Path(paths["speech_commands_test_root"])
        return {f"{p.parent.name}-{p.name}": p.parent.name for p in test_root.glob("*/*.wav")}
    if task == "ic":
        with open(Path(paths["file_path"]) / "data" / "test_data.csv", newline="") as f:
            return {Path(r["path"]).stem: (r["action"], r["object"], r["location"]) for r in csv.DictReader(f)}
    if task == "er":  # leave-one-session-out: fold N tests session N
        session = fold.replace("fold", "Session")  # type: ignore[union-attr]
        meta = json.loads((Path(paths["meta_data"]) / session / "test_meta_data.json").read_text())
        return {Path(i["path"]).stem: i["label"] for i in meta["meta_data"]}
    if task == "sid":  # iden_split.txt: 3 = test; the speaker is the id folder
        lines = [line.split() for line in Path(paths["meta_data"]).read_text().splitlines()]
        return {rel[:-4].replace("/", "-"): rel.split("/")[0] for split, rel in lines if split == "3"}
    if task == "asv":  # the trial list, each pair named like s3prl's "<spk-video-utt>_<spk-video-utt>"
        lines = [line.split() for line in Path(paths["test_meta_data"]).read_text().splitlines()]
        return {f"{a[:-4].replace('/', '-')}_{b[:-4].replace('/', '-')}": int(label) for label, a, b in lines}
    words = _transcripts(Path(paths["libri_root" if task == "asr" else "path"]))
    if task == "asr":
        return words
    lexicon = dict(line.split("\t") for line in Path(paths["lexicon"]).read_text().splitlines())
    return {utt: [ph for w in ws for ph in lexicon[w].split()] for utt, ws in words.items()}


def _recompute_metric(task: str, prediction: Path, truth: Dict[str, Any]) -> float:
    """The task's metric from the prediction file against ``truth``; the file must name every test
    item exactly once."""
    lines = prediction.read_text().splitlines()
    if task == "ic":
        rows = [line.split(",") for line in lines]
        predicted = {r[0]: tuple(r[1:]) for r in rows}
    else:
        rows = [line.split(" ", 1) for line in lines]
        predicted = {r[0]: (r[1] if len(r) > 1 else "") for r in rows}
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == set(truth), (sorted(set(ids) ^ set(truth))[:5], len(ids))
    if task == "asv":
        return _equal_error_rate([truth[i] for i in ids], [float(predicted[i]) for i in ids])
    if task in ("asr", "pr"):
        errors = sum(_edit_distance(predicted[i].split(), truth[i]) for i in ids)
        return errors / sum(len(truth[i]) for i in ids) * (100 if task == "asr" else 1)
    return sum(predicted[i] == truth[i] for i in ids) / len(ids)


# SD, QbE and SF are scored by the runner (DER grid, best layer, F1 with CER): tests/test_superb_pipeline.py runs
# them through s3prl, and test_diarization, test_qbe and test_sf check their scoring and data
@pytest.mark.parametrize("task", sorted(t for t in TASKS if t not in ("sd", "qbe", "sf")))
def test_recipe_trains_and_evaluates_on_cpu(task, ci_corpus, recipe_cache, tmp_path):
    spec = TASKS[task]
    config = build_config(task, ci_corpus["root"], tmp_path / "config.yaml", scale="ci")
    expdir = tmp_path / "exp"
    split = spec.evaluate_splits[0]
    # KS reads audio through libsox where it is installed; ASV always through our fallback
    sox_choice = {"LIGHTHUBERT_S3PRL_SOX": "python"} if task == "asv" else {}
    start = time.monotonic()
    out = run_s3prl([
        ["-m", "train", *UPSTREAM, "-d", spec.downstream, "-c", str(config), "-p", str(expdir), "--device", "cpu"],
        ["-m", "evaluate", "-t", split, "-e", f"BEST_OR_LAST:{expdir}:{spec.best_ckpt or ''}", "--device", "cpu"],
    ], tmp_path, recipe_cache, **sox_choice)
    elapsed = time.monotonic() - start
    if spec.best_ckpt:  # written by the first dev evaluation, even when the score stays at its bound
        assert (expdir / spec.best_ckpt).is_file()
    evaluated = out.split("@@@ run_downstream evaluate")[1]
    score = spec.parse_result(evaluated, split)
    assert score is not None, evaluated[-2000:]
    fold = yaml.safe_load(config.read_text())["downstream_expert"]["datarc"]["test_fold"] if spec.folds else None
    prediction = spec.prediction_path(expdir, fold)
    assert prediction.is_file() and prediction.read_text().strip(), prediction
    # accuracy and EER are fractions, PER a fraction that insertions can push past 1, WER in percent
    assert 0 <= score <= 1 if task in ("ks", "ic", "er", "sid", "asv") else score >= 0
    truth = _test_truth(task, ci_corpus["tasks"][task]["paths"], fold)
    assert _recompute_metric(task, prediction, truth) == pytest.approx(score, rel=1e-6, abs=1e-9)
    print(f"{task}: {spec.metric}={score:.4f} train+evaluate {elapsed:.1f} s")
    # caches went to our directory, not into site-packages
    import s3prl

    package = Path(s3prl.__file__).parent / "downstream"
    assert not (package / "sv_voxceleb1" / ".wav_lengths").exists()
    assert not (package / "voxceleb1" / ".cache").exists()
    if task == "asv":
        assert list(recipe_cache.glob("sv_voxceleb1/*/Voxceleb1_length.pt"))
    if task == "sid":
        assert list(recipe_cache.glob("voxceleb1/*/test.pkl"))


# Measured on the ci corpus (2-core VM, torch 1 thread): test accuracy 0.68 after 400 steps (~20 s of
# training), against a chance level of 1/12 = 0.083 for the 12 balanced-weight KS classes. s3prl's
# ``fbank`` normalises each utterance's mean away, which leaves mean pooling nothing to classify, so
# this check uses ``fbank_no_cmvn`` and a one-hidden-layer frame-wise pre-net in UtteranceLevel.
KS_CHANCE = 1 / 12
KS_MEASURED_TEST_ACC = 0.68


def test_learning_check_ks_far_above_chance(ci_corpus, recipe_cache, tmp_path):
    config = build_config("ks", ci_corpus["root"], tmp_path / "config.yaml", scale="ci", lr=1e-3, total_steps=400, **{
        "runner.eval_step": 400, "runner.save_step": 400, "downstream_expert.datarc.batch_size": 16,
        "downstream_expert.modelrc.UtteranceLevel": {
            "pooling": "MeanPooling", "pre_net": {"select": "FrameLevel", "FrameLevel": {"hiddens": [256]}}}})
    expdir = tmp_path / "exp"
    out = run_s3prl([["-m", "train", "-u", "fbank_no_cmvn", "-d", "speech_commands", "-c", str(config),
                      "-p", str(expdir), "--device", "cpu"]], tmp_path, recipe_cache)
    accuracy = TASKS["ks"].parse_result(out, "test")
    print(f"ks learning check: test acc {accuracy:.3f} (chance {KS_CHANCE:.3f}, measured {KS_MEASURED_TEST_ACC})")
    assert accuracy >= 3 * KS_CHANCE
