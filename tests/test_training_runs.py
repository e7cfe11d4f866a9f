"""Short real training runs on tiny models: the loss falls, resume is exact, outputs load as upstreams,
the search beats its baseline, and a standard-width export loads in s3prl's own LightHuBERT upstream."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import torch
import yaml

from lighthubert_s3prl.model.checkpoint import load_checkpoint
from lighthubert_s3prl.model.config import SEARCH_SPACES, ConfigError, SubnetConfig, count_parameters, largest_subnet_under_budget
from lighthubert_s3prl.training.config import TrainingConfig, load_config, resolve_space
from lighthubert_s3prl.training.data import Batch, synthetic_utterance
from lighthubert_s3prl.training.trainer import Trainer, train

from .test_training_fixtures import (  # noqa: F401 (fixtures)
    TINY_SPACE,
    drop_ratio,
    teacher_b_ckpt,
    teacher_ckpt,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _wavs():
    return [synthetic_utterance(100, 1.0), synthetic_utterance(101, 0.7)]


def _assert_same_weights(a_path: Path, b_path: Path) -> None:
    """Two exported models hold bit-identical tensors under the same names."""
    a = torch.load(a_path, weights_only=True)["model"]
    b = torch.load(b_path, weights_only=True)["model"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, teacher_ckpt):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage1")
    cfg = load_config(tiny_config("stage1", out, teacher_ckpt, train={"tensorboard": True, "log_every": 5}))
    return train(cfg)


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory, stage1_run, teacher_ckpt):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage2")
    cfg = load_config(tiny_config("stage2", out, teacher_ckpt, student={"init": str(stage1_run.model_path)},
                                  space=TINY_SPACE, data={"valid": "synthetic"}, train={"eval_every": 30}))
    return train(cfg)


# ---------------------------------------------------------------------------------------------------
def test_stage1_loss_falls_and_exports_student_hubert(stage1_run):
    losses = stage1_run.losses
    assert len(losses) == 30 and drop_ratio(losses) < 0.5, losses
    loaded = load_checkpoint(stage1_run.model_path)
    assert loaded.kind == "student_hubert" and loaded.default_subnet == SubnetConfig.uniform(128, 2, 512, 12)
    assert "layer_pred_heads.11.weight" in loaded.state_dict  # the distillation head travels with the model
    assert list((stage1_run.output_dir / "tb").glob("events.*"))
    log = [json.loads(line) for line in (stage1_run.output_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31)) and log[0]["lr"] > 0


def test_stage2_loss_falls_and_exports_hubert_pruner(stage2_run):
    from lighthubert_s3prl.upstream.hubconf import lighthubert_local

    assert drop_ratio(stage2_run.losses) < 0.7, stage2_run.losses
    raw = torch.load(stage2_run.model_path, weights_only=True)["cfg"]["model"]
    assert raw["_name"] == "hubert_pruner" and raw["search_space"] == "tiny"
    assert resolve_space(raw["search_space_def"]) == resolve_space(TINY_SPACE)  # key: search_space_def
    upstream = lighthubert_local(str(stage2_run.model_path))
    assert upstream.subnet == resolve_space(TINY_SPACE).default
    out = upstream(_wavs())
    assert len(out["hidden_states"]) == 13 and out["hidden_states"][0].shape == (2, 49, 96)
    log = [json.loads(line) for line in (stage2_run.output_dir / "log.jsonl").read_text().splitlines()]
    assert {"valid_loss_default", "valid_loss_max", "valid_loss_min"} <= set(log[-1])


@pytest.mark.parametrize("aggregation,head_dim", [("average", 128), ("concat", 256)])
def test_ekd_loss_falls_and_loads_as_distiller(tmp_path, teacher_ckpt, teacher_b_ckpt, aggregation, head_dim):
    from lighthubert_s3prl.upstream.hubconf import lighthubert_local
    from lighthubert_s3prl.upstream.distiller import distiller_local

    cfg = tiny_config("ekd", tmp_path, teacher_ckpt, teacher=None,
                      teachers=[{"ckpt": str(teacher_ckpt), "layers": [4, 8, 12]},
                                {"ckpt": str(teacher_b_ckpt), "layers": [4, 8, 12]}],
                      target={"source": "hidden_states", "per_layer_norm": "layer"}, ekd={"aggregation": aggregation},
                      student={"type": "distiller", "init": str(teacher_ckpt), "layers": 2})
    result = train(load_config(cfg))
    # L1 - log sigmoid(cos) cannot go below -log sigmoid(1) = 0.31, so the total falls less than its parts
    assert drop_ratio(result.losses) < 0.9, result.losses
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"head0_l1", "head1_cos", "head2_l1"} <= set(log[-1])  # three prediction heads, one per layer pair
    mean = lambda rows, key: sum(r[f"head{j}_{key}"] for r in rows for j in range(3)) / (3 * len(rows))  # noqa: E731
    assert mean(log[-5:], "l1") < 0.85 * mean(log[:5], "l1")
    assert mean(log[-5:], "cos") > mean(log[:5], "cos") + 0.25
    upstream = distiller_local(str(result.model_path))
    out = upstream(_wavs())
    assert len(out["hidden_states"]) == 3  # CNN projection + 2 layers
    assert [h.shape[-1] for h in out["pred_heads"]] == [head_dim] * 3
    assert torch.equal(out["paper"], out["hidden_states"][-1])
    assert len(lighthubert_local(str(result.model_path))(_wavs())["hidden_states"]) == 3
    _refused_by_stock_s3prl(result.model_path)


def _refused_by_stock_s3prl(path: Path) -> None:
    """s3prl's own LightHuBERT upstream would run any student_hubert file as the 768-wide 12-layer model: a
    student it cannot run as trained is written as our ekd_student kind, which it refuses."""
    from s3prl.upstream.lighthubert.expert import UpstreamExpert as S3prlExpert

    assert load_checkpoint(path).kind == "ekd_student"
    with pytest.raises(AssertionError):
        S3prlExpert(str(path))


def test_only_the_standard_largest_model_is_written_for_stock_s3prl():
    from lighthubert_s3prl.model.checkpoint import stock_s3prl_runs_as_trained, tiny_model_config
    from lighthubert_s3prl.model.config import ModelConfig

    standard, small = ModelConfig(), SEARCH_SPACES["small"].default
    assert stock_s3prl_runs_as_trained(standard, SubnetConfig.uniform(768, 12, 3072, 12))
    assert not stock_s3prl_runs_as_trained(standard, small)  # would run as 768 wide
    assert not stock_s3prl_runs_as_trained(standard, SubnetConfig.uniform(768, 12, 3072, 11))
    two_layers = ModelConfig(encoder_layers=2, layer_pred_num="0,0")
    assert not stock_s3prl_runs_as_trained(two_layers, SubnetConfig.uniform(768, 12, 3072, 2))
    assert not stock_s3prl_runs_as_trained(tiny_model_config(), SubnetConfig.uniform(128, 2, 512, 12))


def test_ekd_separate_heads_with_s3prl_teachers_and_subnet_student(tmp_path, stage1_run, teacher_ckpt):
    """fbank (10 ms, 240 wide) + mfcc (39 wide) as separate heads; the student is a LightHuBERT subnet."""
    from lighthubert_s3prl.upstream.hubconf import lighthubert_local

    subnet = {"embed_dim": 64, "heads_num": 1, "ffn_ratio": 2.0, "layer_num": 10}
    cfg = tiny_config("ekd", tmp_path, teacher_ckpt, teacher=None,
                      teachers=[{"name": "fbank", "layers": [0]}, {"name": "mfcc", "layers": [0]}],
                      target={"source": "hidden_states", "per_layer_norm": "instance"}, ekd={"aggregation": "separate"},
                      student={"type": "supernet", "init": str(stage1_run.model_path), "subnet": subnet},
                      train={"steps": 4})
    result = train(load_config(cfg))
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    upstream = lighthubert_local(str(result.model_path))
    assert upstream.subnet == SubnetConfig.from_dict(subnet)
    assert len(upstream(_wavs())["hidden_states"]) == 11
    _refused_by_stock_s3prl(result.model_path)


# ---------------------------------------------------------------------------------------------------
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, stage1_run, teacher_ckpt):
    """Stage 2 with a sandwich (3 subnets a step), gradient accumulation and dropout: k steps, stop, resume to N."""
    def cfg(out, **train_opts):
        return load_config(tiny_config(
            "stage2", out, teacher_ckpt, student={"init": str(stage1_run.model_path)}, space=TINY_SPACE,
            sampling={"strategy": "sandwich", "random_subnets": 1}, optim={"lr": 2e-3, "warmup_steps": 2},
            data={"batch_size": 2, "synthetic": {"utterances": 6, "seconds": 1.2}},  # 3 batches per epoch
            train={"steps": 6, "accumulate": 2, **train_opts}))

    straight = train(cfg(tmp_path / "straight"))
    first = train(cfg(tmp_path / "resumed", stop_after=3))
    assert first.interrupted and first.step == 3
    second = train(cfg(tmp_path / "resumed"))  # resume=auto picks up state/last.pt
    assert second.step == 6 and not second.interrupted
    assert first.losses + second.losses == straight.losses  # bit-identical, epochs crossed mid-run
    _assert_same_weights(straight.model_path, second.model_path)
    sa = torch.load(tmp_path / "straight/state/last.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed/state/last.pt", weights_only=True)
    assert (sa["epoch"], sa["batch_in_epoch"]) == (sb["epoch"], sb["batch_in_epoch"]) == (3, 3)  # 12 batches = 4 epochs of 3
    assert sa["optimizer"]["state"][0]["step"] == sb["optimizer"]["state"][0]["step"] == 6


def test_sigterm_stops_after_the_update_with_a_resumable_state(tmp_path, teacher_ckpt):
    """SIGTERM during update 2 of 4: that update completes and is saved, the caller's handler is back afterwards,
    and resuming runs updates 3 and 4 to the losses and weights of a run that was never stopped."""
    def cfg(out: Path) -> TrainingConfig:
        return load_config(tiny_config("stage1", out, teacher_ckpt, data={"batch_size": 2}, train={"steps": 4}))

    straight = train(cfg(tmp_path / "straight"))
    trainer = Trainer(cfg(tmp_path / "stopped"))
    step = trainer._train_step

    def step_then_signal(batches: Iterator[Batch]) -> Dict[str, float]:
        record = step(batches)
        if trainer.step == 1:  # the loop counts this update after it returns: the signal lands inside update 2
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    trainer._train_step = step_then_signal
    reached_caller: List[int] = []

    def callers_handler(signum: int, _frame: object) -> None:
        reached_caller.append(signum)

    before = signal.signal(signal.SIGTERM, callers_handler)
    try:
        stopped = trainer.fit()
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert after is callers_handler and not reached_caller  # the trainer caught it, then put the caller's back
    assert stopped.interrupted and stopped.step == 2 and len(stopped.losses) == 2
    state = torch.load(tmp_path / "stopped/state/last.pt", weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["state"][0]["step"] == 2  # two completed updates, both saved
    log = [json.loads(line)["step"] for line in (tmp_path / "stopped/log.jsonl").read_text().splitlines()]
    assert log == [1, 2]
    resumed = train(cfg(tmp_path / "stopped"))
    assert resumed.step == 4 and not resumed.interrupted
    assert stopped.losses + resumed.losses == straight.losses  # updates 3 and 4 are those of the straight run
    _assert_same_weights(straight.model_path, resumed.model_path)


def test_resume_errors(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="train.resume='.*nope.pt' does not exist"):
        Trainer(load_config(tiny_config("stage1", tmp_path, teacher_ckpt, train={"resume": str(tmp_path / "nope.pt")})))
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
        Trainer(load_config(tiny_config("stage1", tmp_path, teacher_ckpt, train={"amp": "fp16"})))
    with pytest.raises(ConfigError, match="data.train='/no/such/dir' does not exist"):
        Trainer(load_config(tiny_config("stage1", tmp_path, teacher_ckpt, data={"train": "/no/such/dir"})))
    with pytest.raises(ConfigError, match="teacher fbank exposes no FFN outputs .* Set target.source=hidden_states"):
        Trainer(load_config(tiny_config("stage1", tmp_path, teacher_ckpt, teacher={"name": "fbank"})))


def test_cli_reports_config_errors(tmp_path, capsys):
    from lighthubert_s3prl.commands.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "synthetic"}, "teacher": "fbank"}))
    assert main(["train", "stage1", str(path), "-o", "train.stepz=3"]) == 2
    assert "unknown config key 'train.stepz'; did you mean 'train.steps'?" in capsys.readouterr().err
    assert main(["train", "stage1", str(path), "--print-config"]) == 0
    assert "mask:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
def test_search_finds_a_subnet_within_budget_no_worse_than_the_default(tmp_path, stage2_run, teacher_ckpt):
    from lighthubert_s3prl.model.checkpoint import tiny_model_config
    from lighthubert_s3prl.upstream.expert import UpstreamExpert
    from lighthubert_s3prl.training import search

    budget = 1_600_000
    out = tmp_path / "subnet.yaml"
    args = ["--ckpt", str(stage2_run.model_path), "--teacher", str(teacher_ckpt), "--data", "synthetic",
            "--max-params", str(budget), "--population", "6", "--generations", "2", "--batches", "1",
            "-o", "target.source=layer_results", "-o", "target.layers=last:8", "--out", str(out)]
    assert search.main(args) == 0
    report = json.loads(out.with_suffix(".search.json").read_text())
    best = SubnetConfig.from_dict(report["best"]["subnet"])
    baseline = SubnetConfig.from_dict(report["baseline"]["subnet"])
    assert count_parameters(best, tiny_model_config()) <= budget
    assert resolve_space(TINY_SPACE).contains(best)
    assert baseline == largest_subnet_under_budget(resolve_space(TINY_SPACE), budget, tiny_model_config())
    assert report["best"]["score"] <= report["baseline"]["score"]
    # the written YAML is what the upstream's -g takes
    upstream = UpstreamExpert(str(stage2_run.model_path), model_config=str(out))
    assert upstream.subnet == best
    with pytest.raises(ConfigError, match="budget too small"):
        search.main(args[:-2] + ["--max-params", "1000", "--out", str(out)])
    with pytest.raises(ConfigError, match="search needs held-out audio"):
        search.main(["--ckpt", str(stage2_run.model_path), "--teacher", "fbank", "--max-params", "1e6", "--out", str(out)])


def test_standard_width_export_loads_in_s3prl_builtin_upstream(tmp_path):
    """The stage-2 writer on the real 768-wide supernet: s3prl's own expert and ours agree on the small subnet."""
    from s3prl.upstream.lighthubert.expert import UpstreamExpert as S3prlExpert

    from lighthubert_s3prl.model.config import ModelConfig
    from lighthubert_s3prl.upstream.hubconf import lighthubert_local
    from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
    from lighthubert_s3prl.training.models import export_model, init_weights

    model = init_weights(LightHuBERTSupernet(ModelConfig()), seed=0)
    space = SEARCH_SPACES["small"]
    path = export_model(model, tmp_path / "model.pt", "hubert_pruner", space.default, space, {"stage": "stage2"})
    del model
    wavs = [synthetic_utterance(7, 0.5)]
    ours = lighthubert_local(str(path)).eval()
    assert ours.subnet == space.default
    with torch.no_grad():
        mine = ours(wavs)["hidden_states"]
    del ours
    reference = S3prlExpert(str(path)).eval()
    with torch.no_grad():
        theirs = reference(wavs)["hidden_states"]
    assert len(theirs) == len(mine) == 13
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape == (1, 24, 384)
        assert torch.allclose(a, b, atol=1e-3)


def test_shipped_tiny_configs_run(tmp_path):
    """configs/train/*_tiny*.yaml as shipped (fbank-family teachers, generated audio), two updates each."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "train"
    common = ["train.steps=2", "train.eval_every=2", "train.tensorboard=false", "train.progress=false"]
    s1 = train(load_config(folder / "stage1_tiny.yaml", common + [f"train.output_dir={tmp_path / 's1'}"]))
    s2 = train(load_config(folder / "stage2_tiny.yaml", common + [f"train.output_dir={tmp_path / 's2'}",
                                                                  f"student.init={s1.model_path}"]))
    runs = [s1, s2]
    for name in ("ekd_tiny_average", "ekd_tiny_concat"):
        runs.append(train(load_config(folder / f"{name}.yaml", common + [f"train.output_dir={tmp_path / name}"])))
    for run in runs:
        assert run.step == 2 and run.model_path.is_file()
        last = json.loads((run.output_dir / "log.jsonl").read_text().splitlines()[-1])
        assert any(k.startswith("valid_loss") for k in last)
