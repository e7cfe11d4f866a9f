"""The ``search`` command on a tiny untrained supernet (no training run needed): what it writes and prints,
the MAC-budget route, every error it explains, its config assembly, and the proxy score.

Expected values are computed here without the search module: parameter and MAC counts from the tiny model's
dimensions, the largest subnet under a budget by enumeration, and the proxy loss by running the models
directly on the held-out audio.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import pytest
import torch
import torch.nn.functional as F
import yaml

from lighthubert_s3prl.model.checkpoint import (
    build_supernet,
    load_checkpoint,
    save_checkpoint,
    tiny_model_config,
)
from lighthubert_s3prl.model.config import ConfigError, SubnetConfig
from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
from lighthubert_s3prl.training import search
from lighthubert_s3prl.training.config import load_config, resolve_space
from lighthubert_s3prl.training.data import Batch, collate, synthetic_utterance
from lighthubert_s3prl.training.models import SPACE_DEF_KEY, export_model

from .test_search import conv_frames, independent_layer_parameters, independent_macs
from .test_training_fixtures import TINY_SPACE, PatternTeacher, pattern, teacher_ckpt  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CNN = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2
SPACE = resolve_space(TINY_SPACE)
# held-out audio: two generated utterances of 0.5 s, one batch (no cropping: crop_seconds is the length)
DATA = ["--data", "synthetic", "--batches", "1", "-o", "data.batch_size=2", "-o", "data.crop_seconds=0.5",
        "-o", "data.synthetic.seconds=0.5", "-o", "data.synthetic.valid_utterances=2"]


def tiny_parameters(s: SubnetConfig) -> int:
    """The tiny supernet's subnet: 64-channel CNN (bias-free convs, GroupNorm after the first), its LayerNorm,
    mask_emb at the full 128, post_extract_proj (64 -> E), the positional conv (4 groups, kernel 16, bias),
    the encoder LayerNorm, then the layers."""
    E = s.embed_dim
    cnn = 64 * 10 + 4 * (64 * 64 * 3) + 2 * (64 * 64 * 2) + 2 * 64
    shared = cnn + 2 * 64 + 128 + (64 * E + E) + (E * (E // 4) * 16 + E) + 2 * E
    return shared + sum(independent_layer_parameters(E, h, f) for h, f in zip(s.heads_num, s.ffn_embed))


def tiny_macs(s: SubnetConfig, seconds: float) -> int:
    return independent_macs(s, seconds, TINY_CNN, conv_pos=16, groups=4)


def largest_reachable(budget: int) -> int:
    """The most parameters any subnet of the tiny space has within ``budget``, by enumerating totals."""
    best = 0
    for E in SPACE.embed_dim:
        per_layer = {independent_layer_parameters(E, h, int(r * E)) for h in SPACE.heads_num for r in SPACE.ffn_ratio}
        shared = tiny_parameters(SubnetConfig(E, 0, (), ()))
        totals: Set[int] = {shared}
        for depth in range(1, max(SPACE.layer_num) + 1):
            totals = {t + p for t in totals for p in per_layer if t + p <= budget}
            if depth in SPACE.layer_num and totals:
                best = max(best, max(totals))
    return best


def normalised(wav: torch.Tensor) -> torch.Tensor:
    return (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-5)


def held_out_wavs() -> List[torch.Tensor]:
    """The held-out set of ``--data synthetic`` with two held-out utterances, 0 and 1 (generator seed shifted by
    7919); both are in the one batch, whatever order the speaker-balanced draw puts them in."""
    return [synthetic_utterance(i, 0.5, seed=7919) for i in (0, 1)]


def teacher_proxy_loss(ckpt: Path, teacher: Path, subnet: SubnetConfig) -> float:
    """Mean |prediction - target| over every frame: the supernet's head at ``subnet`` against the mean of the
    teacher's last 8 FFN outputs, each normalised per channel over the utterance (the default target, data2vec's),
    both run on per-utterance normalised audio."""
    x = torch.stack([normalised(w) for w in held_out_wavs()])

    def instance_norm(h: torch.Tensor) -> torch.Tensor:  # (B, T, C), no padding here
        mean = h.mean(1, keepdim=True)
        return (h - mean) / torch.sqrt(((h - mean) ** 2).mean(1, keepdim=True) + 1e-5)

    with torch.no_grad():
        layers = build_supernet(load_checkpoint(teacher)).eval()(x).layer_results[-8:]
        target = torch.stack([instance_norm(h) for h in layers]).mean(0)
        pred = build_supernet(load_checkpoint(ckpt)).eval()(x, subnet=subnet, predict=True).predictions[11]
    return float((pred - target).abs().mean())


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny supernet written as stage 2 writes it: the tiny space recorded in the checkpoint."""
    model = LightHuBERTSupernet(tiny_model_config()).reset_parameters(5)
    path = tmp_path_factory.mktemp("search_cli") / "model.pt"
    return export_model(model, path, "hubert_pruner", SPACE.default, SPACE, {"stage": "stage2"})


def _run(argv: List[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert search.main(argv) == 0
    return out.getvalue()


PARAMS_BUDGET = 1_600_000


@pytest.fixture(scope="module")
def params_run(tmp_path_factory, stage2_ckpt, teacher_ckpt) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("search_out") / "subnet.yaml"
    printed = _run(["--ckpt", str(stage2_ckpt), "--teacher", str(teacher_ckpt), "--max-params", "1.6e6",
                    "--population", "3", "--generations", "1", "--out", str(out)] + DATA)
    return {"out": out, "printed": printed, "report": json.loads(out.with_suffix(".search.json").read_text())}


# ---------------------------------------------------------------------------------------------------
def test_search_report_under_a_parameter_budget(params_run, stage2_ckpt):
    """The report names the checkpoint, the space it recorded, the budget, and every candidate scored:
    3 first, then 3 - max(2, 3 // 2) = 1 child; the baseline is the largest subnet within the budget."""
    report = params_run["report"]
    assert report["checkpoint"] == str(stage2_ckpt)
    assert report["space"] == {
        "name": "tiny", "embed_dim": [64, 96, 128], "heads_num": [1, 2], "ffn_ratio": [2.0, 3.0, 4.0],
        "layer_num": [10, 11, 12],
        "default": {"atten_dim": [128] * 12, "embed_dim": 96, "ffn_embed": [288] * 12, "heads_num": [2] * 12,
                    "layer_num": 12, "slide_wsz": ["global"] * 12}}
    assert report["budget"] == {"kind": "params", "limit": PARAMS_BUDGET, "seconds": 1.0}
    history = report["history"]
    assert len(history) == 4
    best, baseline = (SubnetConfig.from_dict(report[k]["subnet"]) for k in ("best", "baseline"))
    assert SPACE.contains(best) and SPACE.contains(baseline)
    assert report["best"]["cost"] == report["best"]["params"] == tiny_parameters(best) <= PARAMS_BUDGET
    assert report["baseline"]["cost"] == tiny_parameters(baseline) == largest_reachable(PARAMS_BUDGET)
    assert history[0] == {"subnet": baseline.describe(), "cost": tiny_parameters(baseline),
                          "score": report["baseline"]["score"]}
    winner = min(history, key=lambda h: (h["score"], h["cost"]))
    assert winner["subnet"] == best.describe() and winner["score"] == report["best"]["score"]
    assert all(h["cost"] <= PARAMS_BUDGET for h in history)


def test_search_writes_the_winner_for_dash_g(params_run, stage2_ckpt):
    report = params_run["report"]
    best = SubnetConfig.from_dict(report["best"]["subnet"])
    written = yaml.safe_load(params_run["out"].read_text())
    assert written == {
        "subnet": report["best"]["subnet"], "params": tiny_parameters(best), "search_space": "tiny",
        "note": f"searched on {stage2_ckpt} under --max-params=1,600,000; proxy loss {report['best']['score']:.5f} "
                f"(budget's largest subnet: {report['baseline']['score']:.5f})"}
    assert load_checkpoint(stage2_ckpt).subnet(str(params_run["out"])) == best


def test_search_prints_a_summary(params_run):
    report, out = params_run["report"], params_run["out"]
    best, baseline = (SubnetConfig.from_dict(report[k]["subnet"]) for k in ("best", "baseline"))
    assert params_run["printed"] == (
        f"best subnet (params {tiny_parameters(best):,} <= 1,600,000): {best.describe()}\n"
        f"proxy loss {report['best']['score']:.5f} vs {report['baseline']['score']:.5f} for the budget's largest "
        f"subnet ({baseline.describe()}); 4 candidates scored; written to {out}\n")


def test_search_scores_the_teachers_targets_on_held_out_audio(params_run, stage2_ckpt, teacher_ckpt):
    """The proxy of the baseline is the L1 distillation loss on the first held-out batch, computed here."""
    report = params_run["report"]
    baseline = SubnetConfig.from_dict(report["baseline"]["subnet"])
    assert report["baseline"]["score"] == pytest.approx(teacher_proxy_loss(stage2_ckpt, teacher_ckpt, baseline),
                                                        rel=1e-5)


def test_search_under_a_mac_budget(tmp_path, tiny_ckpt, teacher_ckpt, capsys):
    """--max-macs over --seconds of audio, with teacher, data and space from a training YAML; the config's own
    stage and validation schedule do not get in the way."""
    default = SPACE.default
    limit = tiny_macs(default, 0.5)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "stage1", "teacher": {"ckpt": str(teacher_ckpt)}, "space": TINY_SPACE,
        "data": {"train": "synthetic", "valid": "synthetic", "batch_size": 2, "crop_seconds": 0.5,
                 "synthetic": {"seconds": 0.5}},
        "train": {"eval_every": 5}}))
    out = tmp_path / "macs.yaml"
    assert search.main(["--ckpt", str(tiny_ckpt), "--config", str(config), "--max-macs", str(limit),
                        "--seconds", "0.5", "--algorithm", "random", "--population", "2", "--generations", "1",
                        "--batches", "1", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "macs.search.json").read_text())
    assert report["budget"] == {"kind": "macs", "limit": limit, "seconds": 0.5}
    best, baseline = (SubnetConfig.from_dict(report[k]["subnet"]) for k in ("best", "baseline"))
    uniform = [SubnetConfig.uniform(E, h, int(r * E), d) for E in SPACE.embed_dim for h in SPACE.heads_num
               for r in SPACE.ffn_ratio for d in SPACE.layer_num]
    assert baseline == max((s for s in uniform if tiny_macs(s, 0.5) <= limit), key=lambda s: tiny_macs(s, 0.5))
    assert report["baseline"]["cost"] == tiny_macs(baseline, 0.5)
    assert report["best"]["cost"] == tiny_macs(best, 0.5) <= limit
    assert report["best"]["params"] == tiny_parameters(best)
    assert len(report["history"]) == 2 * (1 + 1)  # random: population x (generations + 1)
    assert all(h["cost"] <= limit for h in report["history"])
    written = yaml.safe_load(out.read_text())
    assert written["params"] == tiny_parameters(best) and written["search_space"] == "tiny"
    assert written["note"].startswith(f"searched on {tiny_ckpt} under --max-macs={limit:,}; proxy loss ")
    assert capsys.readouterr().out.startswith(f"best subnet (macs {tiny_macs(best, 0.5):,} <= {limit:,}): ")


# --------------------------------------------------------------------------------------------------- errors
def _args(*extra: str, budget: tuple = ("--max-params", "1e6")) -> List[str]:
    return ["--ckpt", "/no/such/model.pt", "--out", "/no/such/out.yaml", *budget, *extra]


def _yaml(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("argv,message", [
    (lambda tmp: _args(budget=()), "give exactly one budget: --max-params N or --max-macs N"),
    (lambda tmp: _args(budget=("--max-params", "1e6", "--max-macs", "1e9")),
     "give exactly one budget: --max-params N or --max-macs N"),
    (lambda tmp: _args("--config", str(tmp / "missing.yaml")),
     "does not exist; pass a training YAML"),
    (lambda tmp: _args("--config", _yaml(tmp, "- a\n- b\n")), "must hold a mapping of sections"),
    (lambda tmp: _args("--config", _yaml(tmp, {"stage": "ekd", "teachers": [{"name": "fbank"}]})),
     "search scores subnets with the stage-1/2 distillation loss; give a stage-1/2 config, not an EKD one"),
    (lambda tmp: _args("--data", "synthetic"),
     "search needs a teacher: pass --teacher NAME_OR_CKPT or --config with a teacher"),
    (lambda tmp: _args("--config", _yaml(tmp, ""), "--data", "synthetic"), "search needs a teacher"),
    (lambda tmp: _args("--teacher", "fbank"),
     "search needs held-out audio: pass --data DIR (or 'synthetic') or set data.valid in the config"),
    (lambda tmp: _args("--config", _yaml(tmp, {"teacher": {"name": "fbank"}, "data": {"train": "synthetic"}})),
     "search needs held-out audio"),
])
def test_search_explains_bad_arguments(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        search.main(argv(tmp_path))


def test_missing_config_is_named(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"--config {missing!r} does not exist; pass a training YAML")):
        search.main(_args("--config", missing))
    bad = _yaml(tmp_path, "- a\n")
    with pytest.raises(ConfigError, match=re.escape(f"--config {bad} must hold a mapping of sections")):
        search.main(_args("--config", bad))


def test_budget_too_small_fails_before_the_teacher_loads(tmp_path, stage2_ckpt):
    smallest = tiny_parameters(SPACE.min_subnet())
    with pytest.raises(ConfigError, match=re.escape(
            f"budget too small: the smallest subnet of space 'tiny' (embed_dim=64 layers=10 heads=1 ffn=128) has "
            f"{smallest:,} parameters, above --max-params=1,000; raise --max-params to at least {smallest:,}")):
        search.main(["--ckpt", str(stage2_ckpt), "--teacher", str(tmp_path / "no_teacher.pt"), "--max-params",
                     "1000", "--out", str(tmp_path / "s.yaml")] + DATA)


def test_compact_checkpoint_is_refused(tmp_path):
    from lighthubert_s3prl.model.compact import CompactLightHuBERT, compact_payload

    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(1)
    compact = CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 128, 10))
    path = save_checkpoint(tmp_path / "compact.pt", compact_payload(compact, "x.pt"))
    with pytest.raises(ConfigError, match=re.escape(
            f"{path} is a compact export of one subnet; search needs the supernet checkpoint")):
        search.main(["--ckpt", str(path), "--teacher", "fbank", "--max-params", "1e6", "--out",
                     str(tmp_path / "s.yaml")] + DATA)


def test_space_must_fit_the_checkpoint(tmp_path, tiny_ckpt, stage2_ckpt):
    """The official-format tiny file records the 'small' space (up to 512 wide) for a 128-wide model."""
    common = ["--teacher", "fbank", "--max-params", "1e6", "--out", str(tmp_path / "s.yaml")] + DATA
    with pytest.raises(ConfigError, match=re.escape(
            f"space 'small' does not fit {tiny_ckpt}: subnet field 'embed_dim'=512 is not allowed; allowed values: "
            f"1..128; pass the space it was trained with")):
        search.main(["--ckpt", str(tiny_ckpt)] + common)
    with pytest.raises(ConfigError, match=re.escape(f"space 'base' does not fit {stage2_ckpt}: ")):
        search.main(["--ckpt", str(stage2_ckpt), "--space", "base"] + common)


def test_space_of_checkpoint_prefers_the_recorded_definition():
    recorded = {"name": "rec", "embed_dim": [64], "heads_num": [1], "ffn_ratio": [2.0], "layer_num": [10]}
    released = resolve_space("small")
    loaded = types.SimpleNamespace(raw_cfg={"model": {SPACE_DEF_KEY: recorded}}, search_space=released, path="m.pt")
    space = search.space_of_checkpoint(loaded)
    assert (space.name, space.embed_dim, space.layer_num) == ("rec", (64,), (10,))
    loaded.raw_cfg = {"model": {SPACE_DEF_KEY: "not a mapping"}}
    assert search.space_of_checkpoint(loaded) == released
    loaded.raw_cfg, loaded.search_space = {}, None
    with pytest.raises(ConfigError, match=re.escape(
            "m.pt records no search space; pass --space small|base or a config with a space")):
        search.space_of_checkpoint(loaded)


# --------------------------------------------------------------------------------------------------- config
def _config(*argv: str):
    return search._search_config(search.build_parser().parse_args(["--ckpt", "m.pt", "--out", "o.yaml", *argv]))


def test_search_config_from_flags(tmp_path):
    cfg, explicit_space = _config("--teacher", "fbank", "--data", "synthetic", "-o", "target.layers=last:4")
    assert cfg.stage == "stage2" and cfg.student.init == "m.pt" and not explicit_space
    assert [(t.name, t.ckpt) for t in cfg.teachers] == [("fbank", None)]
    assert cfg.data.valid == cfg.data.train == "synthetic"
    assert cfg.target.layers == "last:4" and cfg.train.eval_every == 0
    # a teacher checkpoint: named *.pt (existing or not), or any existing file
    teachers = _config("--teacher", "gone/t.pt", "--data", "d")[0].teachers
    assert [(t.name, t.ckpt) for t in teachers] == [(None, "gone/t.pt")]
    other = tmp_path / "teacher.bin"
    other.write_bytes(b"")
    teachers = _config("--teacher", str(other), "--data", "d")[0].teachers
    assert [(t.name, t.ckpt) for t in teachers] == [(None, str(other))]


def test_search_config_from_a_training_yaml(tmp_path):
    """The config's sections are kept, except: --teacher replaces its teachers, --data its held-out audio,
    the student starts from --ckpt, the stage is stage 2 and validation during training is off."""
    path = _yaml(tmp_path, {
        "stage": "stage1", "teachers": [{"name": "mfcc"}], "space": TINY_SPACE,
        "student": {"model": "tiny", "init": "runs/stage1/model.pt"},
        "data": {"train": "/audio/train", "valid": "/audio/valid", "batch_size": 3}, "train": {"eval_every": 7}})
    cfg, explicit_space = _config("--config", path, "--teacher", "fbank", "-o", "train.eval_every=9")
    assert explicit_space and cfg.stage == "stage2" and cfg.train.eval_every == 0
    assert [t.name for t in cfg.teachers] == ["fbank"]
    assert (cfg.data.train, cfg.data.valid, cfg.data.batch_size) == ("/audio/train", "/audio/valid", 3)
    assert (cfg.student.init, cfg.student.model) == ("m.pt", "tiny")
    cfg, _ = _config("--config", path, "--data", "/audio/other")
    assert [t.name for t in cfg.teachers] == ["mfcc"]
    assert (cfg.data.train, cfg.data.valid) == ("/audio/train", "/audio/other")


def test_parser_defaults():
    parser = search.build_parser()
    assert parser.prog == "lighthubert-s3prl search"
    assert vars(parser.parse_args(["--ckpt", "m.pt", "--out", "s.yaml"])) == {
        "ckpt": "m.pt", "config": None, "teacher": None, "data": None, "space": None, "max_params": None,
        "max_macs": None, "seconds": 1.0, "algorithm": "evolutionary", "population": 16, "generations": 6,
        "mutation_prob": 0.3, "utterances": 256, "batches": None, "masked": False, "seed": 0, "device": "cpu",
        "override": [], "out": "s.yaml"}
    args = parser.parse_args(["--ckpt", "m.pt", "--out", "s.yaml", "--max-params", "30e6", "--max-macs", "2e9",
                              "--population", "4", "--batches", "2", "--mutation-prob", "0.1", "--algorithm",
                              "random", "-o", "a=1", "--override", "b=2"])
    assert (args.max_params, args.max_macs, args.population, args.batches) == (30e6, 2e9, 4, 2)
    assert (args.mutation_prob, args.algorithm, args.override) == (0.1, "random", ["a=1", "b=2"])
    for bad in (["--out", "s.yaml"], ["--ckpt", "m.pt"], ["--ckpt", "m", "--out", "s", "--algorithm", "grid"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_main_reads_the_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lighthubert-s3prl-search", "--ckpt", "m.pt", "--out", "o.yaml"])
    with pytest.raises(ConfigError, match="give exactly one budget"):
        search.main()
    with pytest.raises(SystemExit):
        search.main([])  # an empty list is the command line, not a request to read sys.argv


# --------------------------------------------------------------------------------------------------- proxy
PATTERN_MODEL = tiny_model_config(teacher_embed_dim=16, layer_pred_num="0,0,0,0,0,0,0,0,0,1,0,1")


@pytest.fixture
def pattern_teacher(monkeypatch) -> None:
    """The proxy's teacher is ``PatternTeacher(name)``, whose outputs are known formulas."""
    def build(cfg, device):
        teacher = PatternTeacher(str(cfg.name)).to(device)
        teacher.probe(device)
        return teacher

    monkeypatch.setattr(search, "build_teacher", build)


def _proxy_config(teacher: str = "pattern_a"):
    return load_config({"data": {"train": "synthetic"}, "teacher": {"name": teacher},
                        "target": {"layers": [1, 3], "per_layer_norm": "none"},
                        "loss": {"type": "l1_cos", "cos_weight": 0.5}, "student": {"init": "unused.pt"}}, [], "stage2")


def pattern_proxy_loss(model: LightHuBERTSupernet, batch: Batch, subnet: SubnetConfig,
                       instance_norm: bool = False, mask: Optional[torch.Tensor] = None) -> float:
    """L1 - 0.5 log sigmoid(cos) over each utterance's valid frames: the last layer's head (layer 11) on
    per-utterance normalised audio against the mean of pattern_a's FFN outputs 1 and 3, cut to the
    student's frames (with ``instance_norm``, each layer normalised per channel over the utterance's own
    frames first; with ``mask``, those frames of the input masked and only they scored)."""
    lengths = batch.lengths.tolist()
    x = torch.zeros_like(batch.wav)
    for i, n in enumerate(lengths):
        x[i, :n] = normalised(batch.wav[i, :n])
    padding = batch.padding_mask if len(set(lengths)) > 1 else None
    frames = conv_frames(batch.wav.size(1), TINY_CNN)[-1]
    with torch.no_grad():
        pred = model(x, padding, subnet=subnet, predict=True, mask_indices=mask).predictions[11]
    teacher_frames = batch.wav.size(1) // 320
    student_lengths = [conv_frames(n, TINY_CNN)[-1] for n in lengths]
    layers = [pattern(0, "layer_results", i, len(lengths), teacher_frames, 16)[:, :frames] for i in (1, 3)]
    if instance_norm:
        for x in layers:
            for i, n in enumerate(student_lengths):
                own = x[i, :n]
                x[i, :n] = (own - own.mean(0)) / torch.sqrt(own.var(0, unbiased=False) + 1e-5)
    target = (layers[0] + layers[1]) / 2
    valid = torch.arange(frames)[None, :] < torch.tensor(student_lengths)[:, None]
    if mask is not None:
        valid = valid & mask
    p, t = pred[valid], target[valid]
    return float((p - t).abs().mean() - 0.5 * F.logsigmoid(F.cosine_similarity(p, t, dim=-1)).mean())


def test_proxy_is_the_mean_distillation_loss_over_batches(pattern_teacher):
    padded = collate([synthetic_utterance(0, 0.5), synthetic_utterance(1, 0.4)])
    even = collate([synthetic_utterance(2, 0.45), synthetic_utterance(3, 0.45)])
    subnets = [SPACE.default, SubnetConfig(64, 10, (1, 2) * 5, (128, 192, 256, 128, 192) * 2)]
    proxy = search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3), _proxy_config(),
                                  [padded, even], torch.device("cpu"))
    assert proxy.calls == 0
    scores = [proxy(s) for s in subnets]
    assert proxy(subnets[0]) == scores[0]  # deterministic: eval mode, cached targets
    assert proxy.calls == 3
    reference = LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3).eval()
    for s, score in zip(subnets, scores):
        per_batch = [pattern_proxy_loss(reference, b, s) for b in (padded, even)]
        assert score == pytest.approx(sum(per_batch) / 2, rel=1e-5)
    assert scores[0] != pytest.approx(scores[1], rel=1e-3)
    singles = [search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3), _proxy_config(), [b],
                                     torch.device("cpu"))(subnets[0]) for b in (padded, even)]
    assert scores[0] == pytest.approx(sum(singles) / 2, rel=1e-6)


def test_masked_proxy_scores_the_masked_frames_of_masked_input(pattern_teacher):
    """--masked: the input frames of a fixed span mask (mask settings of the config, seeded per batch) replaced
    by the mask embedding, and only those frames scored; the same masks for every subnet."""
    from lighthubert_s3prl.training.masking import sample_span_mask, step_generator

    batches = [collate([synthetic_utterance(0, 0.5), synthetic_utterance(1, 0.4)]),
               collate([synthetic_utterance(2, 0.45), synthetic_utterance(3, 0.45)])]
    cfg = _proxy_config()
    proxy = search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3), cfg, batches,
                                  torch.device("cpu"), masked=True, seed=4)
    reference = LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3).eval()
    losses = []
    for i, b in enumerate(batches):
        lengths = torch.tensor([conv_frames(n, TINY_CNN)[-1] for n in b.lengths.tolist()])
        frames = conv_frames(b.wav.size(1), TINY_CNN)[-1]
        mask = sample_span_mask(lengths, frames, 0.65, 10, 2, step_generator(4, i))
        assert 0 < int(mask.sum()) < int(lengths.sum())
        losses.append(pattern_proxy_loss(reference, b, SPACE.default, mask=mask))
    assert proxy(SPACE.default) == pytest.approx(sum(losses) / 2, rel=1e-5)
    unmasked = search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3), cfg, batches,
                                     torch.device("cpu"))
    assert unmasked(SPACE.default) != pytest.approx(proxy(SPACE.default), rel=1e-3)


def test_proxy_normalises_targets_over_each_utterances_own_frames(pattern_teacher):
    """With per-layer instance norm the padded utterance's statistics come from its valid frames only."""
    padded = collate([synthetic_utterance(0, 0.5), synthetic_utterance(1, 0.3)])
    cfg = load_config({"data": {"train": "synthetic"}, "teacher": {"name": "pattern_a"},
                       "target": {"layers": [1, 3], "per_layer_norm": "instance"},
                       "loss": {"type": "l1_cos", "cos_weight": 0.5}, "student": {"init": "unused.pt"}}, [], "stage2")
    proxy = search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3), cfg, [padded],
                                  torch.device("cpu"))
    reference = LightHuBERTSupernet(PATTERN_MODEL).reset_parameters(3).eval()
    expected = pattern_proxy_loss(reference, padded, SPACE.default, instance_norm=True)
    assert proxy(SPACE.default) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(pattern_proxy_loss(reference, padded, SPACE.default), rel=1e-3)


def test_proxy_refuses_a_teacher_of_another_width(pattern_teacher):
    with pytest.raises(ConfigError, match=re.escape(
            "the supernet predicts 16-wide targets but the teacher's layer_results are 8 wide; use the teacher "
            "and target the supernet was trained with")):
        search.ProxyEvaluator(LightHuBERTSupernet(PATTERN_MODEL), _proxy_config("pattern_c"),
                              [collate([synthetic_utterance(0, 0.5)])], torch.device("cpu"))


def test_a_space_given_by_override_is_the_space_searched():
    """`-o space=base` names the space as surely as a config's `space:` does."""
    cfg, explicit_space = _config("--teacher", "fbank", "--data", "d", "-o", "space=base")
    assert explicit_space and cfg.space == "base"


def test_zero_held_out_batches_is_refused(tmp_path, stage2_ckpt):
    argv = ["--ckpt", str(stage2_ckpt), "--teacher", "fbank", "--max-params", "1e6", "--out", str(tmp_path / "s.yaml"),
            "--data", "synthetic", "--batches", "0"]
    with pytest.raises(ConfigError, match=re.escape("--batches=0: the proxy needs at least one held-out batch")):
        search.main(argv)


def test_a_supernet_without_prediction_heads_is_refused(tmp_path, stage2_ckpt):
    """Without trained heads every prediction is zero: all subnets would tie on the proxy."""
    payload = torch.load(stage2_ckpt, weights_only=False)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("layer_pred_heads.")}
    headless = save_checkpoint(tmp_path / "headless.pt", payload)
    with pytest.raises(ConfigError, match=re.escape(
            f"{headless} holds no distillation prediction heads (layer_pred_heads.*), so the proxy cannot rank "
            "subnets; search the model.pt that 'train stage2' writes")):
        search.main(["--ckpt", str(headless), "--teacher", "fbank", "--max-params", "1.6e6", "--out",
                     str(tmp_path / "s.yaml")] + DATA)


# --------------------------------------------------------------------------------------------------- wiring
class Recorder:
    """Stands in for the proxy and the search loop: records what ``main`` hands them."""

    def __init__(self, monkeypatch) -> None:
        self.datasets: List[Dict[str, Any]] = []
        self.batches: List[Batch] = []
        self.search_args: Dict[str, Any] = {}
        build_dataset = search.build_dataset
        real_search = search.search
        recorder = self

        def spy_dataset(spec, data_cfg, key, seed, valid=False):
            recorder.datasets.append({"spec": spec, "key": key, "seed": seed, "valid": valid})
            return build_dataset(spec, data_cfg, key, seed, valid)

        class Proxy:
            def __init__(self, supernet, cfg, batches, device, masked=False, seed=0) -> None:
                recorder.batches = list(batches)
                recorder.masked, recorder.proxy_seed = masked, seed

            def __call__(self, s: SubnetConfig) -> float:
                return float(s.embed_dim + sum(s.ffn_embed) / 1e4)

        def spy_search(space, budget, score, algorithm, population, generations, mutation_prob, seed):
            recorder.search_args = {"algorithm": algorithm, "population": population, "generations": generations,
                                    "mutation_prob": mutation_prob, "seed": seed}
            return real_search(space, budget, score, algorithm, population, generations, mutation_prob, seed)

        monkeypatch.setattr(search, "build_dataset", spy_dataset)
        monkeypatch.setattr(search, "ProxyEvaluator", Proxy)
        monkeypatch.setattr(search, "search", spy_search)


def _wiring_run(tmp_path: Path, stage2_ckpt: Path, *extra: str) -> None:
    """Six held-out utterances in batches of two: three batches are there to take."""
    _run(["--ckpt", str(stage2_ckpt), "--teacher", "fbank", "--max-params", "1.6e6", "--out", str(tmp_path / "s.yaml"),
          "--data", "synthetic", "-o", "data.batch_size=2", "-o", "data.crop_seconds=0.5",
          "-o", "data.synthetic.seconds=0.5", "-o", "data.synthetic.valid_utterances=6", *extra])


def test_main_scores_on_the_held_out_set(monkeypatch, tmp_path, stage2_ckpt):
    """The proxy's audio is data.valid built as held-out audio (valid=True: the generator seed shifted) with the
    training seed: two batches of four different utterances of the held-out generator, drawn by --seed (not the
    first ones in order), and the masking choice and seed handed on."""
    rec = Recorder(monkeypatch)
    _wiring_run(tmp_path, stage2_ckpt, "--batches", "2", "-o", "train.seed=5", "--masked", "--seed", "3")
    assert rec.datasets == [{"spec": "synthetic", "key": "data.valid", "seed": 5, "valid": True}]
    assert [b.wav.shape for b in rec.batches] == [(2, 8000)] * 2
    held_out = [synthetic_utterance(i, 0.5, seed=7919) for i in range(6)]
    picked = [next(i for i, h in enumerate(held_out) if torch.equal(w, h)) for b in rec.batches for w in b.wav]
    assert len(set(picked)) == 4 and picked != [0, 1, 2, 3], picked
    assert (rec.masked, rec.proxy_seed) == (True, 3)


@pytest.mark.parametrize("extra,count", [
    (["--batches", "2"], 2),
    (["--batches", "1", "-o", "data.valid_batches=3"], 1),  # the proxy's own setting, not the trainer's
    (["--utterances", "3"], 2),  # utterances, in whole batches of data.batch_size
    ([], 3),  # the default (256 utterances) is more than there is: every held-out utterance
])
def test_held_out_batch_count(monkeypatch, tmp_path, stage2_ckpt, extra, count):
    rec = Recorder(monkeypatch)
    _wiring_run(tmp_path, stage2_ckpt, *extra)
    assert len(rec.batches) == count


def test_search_settings_reach_the_search(monkeypatch, tmp_path, stage2_ckpt):
    rec = Recorder(monkeypatch)
    _wiring_run(tmp_path, stage2_ckpt, "--batches", "1", "--population", "3", "--generations", "2",
                "--mutation-prob", "0.7", "--seed", "11", "--algorithm", "random")
    assert rec.search_args == {"algorithm": "random", "population": 3, "generations": 2, "mutation_prob": 0.7,
                               "seed": 11}
    report = json.loads((tmp_path / "s.search.json").read_text())
    assert len(report["history"]) == 3 * (2 + 1)  # random search: population x (generations + 1)
    rec = Recorder(monkeypatch)
    _wiring_run(tmp_path, stage2_ckpt, "--batches", "1")
    assert rec.search_args == {"algorithm": "evolutionary", "population": 16, "generations": 6,
                               "mutation_prob": 0.3, "seed": 0}
