"""``export`` (compact checkpoints, hidden-set folder), ``profile`` (MACs, RTF) and the benchmark smoke run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lighthubert_s3prl import hubconf
from lighthubert_s3prl.checkpoint import load_checkpoint, tiny_model_config
from lighthubert_s3prl.compact import CompactLightHuBERT
from lighthubert_s3prl.config import ModelConfig, SubnetConfig, count_parameters, get_preset, resolve_subnet
from lighthubert_s3prl.expert import UpstreamExpert
from lighthubert_s3prl.export import ExportError, export_compact, main as export_main, write_hidden_set_folder
from lighthubert_s3prl.profile import analytic_macs, macs_breakdown, main as profile_main
from lighthubert_s3prl.superb.package import HIDDEN_TASKS, validate_hidden_folder
from lighthubert_s3prl.supernet import LightHuBERTSupernet

from .conftest import make_wavs
from .numerics import assert_hidden_states_close, longest_reduction

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --------------------------------------------------------------------------------------------------- export
def test_export_cli_writes_a_loadable_compact_checkpoint(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "tiny_compact.pt"
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text("subnet:\n  embed_dim: 96\n  layer_num: 10\n  heads_num: 2\n  ffn_embed: [200, 300, 200, 300, "
                      "200, 300, 200, 300, 200, 300]\n")
    assert export_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "subnet:      embed_dim=96 layers=10 heads=2 ffn=200,300" in printed
    assert "parameters:" in printed and "output file:" in printed and "of the source" in printed
    loaded = load_checkpoint(out)
    assert loaded.kind == "compact" and loaded.default_subnet.embed_dim == 96
    # both the s3prl upstream entry and the supernet path agree on valid frames
    wavs = make_wavs([9000, 6000])
    with torch.no_grad():
        got = hubconf.lighthubert_local(ckpt=str(out)).eval()(wavs)["hidden_states"]
        want = UpstreamExpert(str(tiny_ckpt), subnet=str(subnet), implementation="supernet").eval()(wavs)["hidden_states"]
    assert len(got) == 11
    assert_hidden_states_close(got, want, longest_reduction(load_checkpoint(tiny_ckpt).model_cfg, loaded.default_subnet))


def test_export_real_small_is_under_30_percent_of_the_official_file(small_ckpt, tmp_path):
    result = export_compact(small_ckpt, "small", tmp_path / "small.pt")
    assert result.subnet == get_preset("small") and result.parameters == 26_873_600
    assert result.output_bytes / result.source_bytes <= 0.30
    half = export_compact(small_ckpt, "small", tmp_path / "small_bf16.pt", dtype="bfloat16")
    assert half.output_bytes / result.output_bytes < 0.55
    model = CompactLightHuBERT.from_checkpoint(load_checkpoint(half.output))
    assert model.dtype == torch.float32  # stored bf16, computed fp32 unless asked


@pytest.mark.parametrize("spec,depth", [("random:small:2", 10), ("budget:small:30e6", None), ("base-min", 12)])
def test_export_subnet_specs(small_ckpt, tmp_path, spec, depth):
    result = export_compact(small_ckpt, spec, tmp_path / "out.pt")
    assert result.subnet == resolve_subnet(spec)
    if depth:
        assert result.subnet.layer_num == depth
    if spec.startswith("budget:"):
        assert count_parameters(result.subnet) <= 30e6
    assert load_checkpoint(tmp_path / "out.pt").default_subnet == result.subnet


def test_export_errors_are_clear(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "o.pt"

    def run(*args):
        code = export_main(list(args))
        return code, capsys.readouterr().err

    code, err = run("--ckpt", str(tmp_path / "missing.pt"), "-o", str(out))
    assert code == 2 and "error: checkpoint" in err and "missing.pt does not exist" in err
    code, err = run("--ckpt", str(tiny_ckpt), "--subnet", "smallish", "-o", str(out))
    assert code == 2 and "unknown subnet preset 'smallish'; allowed values" in err
    code, err = run("--ckpt", str(tiny_ckpt), "--subnet", "small", "-o", str(out))
    assert code == 2 and "subnet does not fit checkpoint" in err and "'embed_dim'=384 is not allowed" in err
    code, err = run("--ckpt", str(tiny_ckpt), "--subnet", "random:small", "-o", str(out))
    assert code == 2 and "must look like 'random:SPACE:SEED'" in err
    out.write_text("keep me")
    code, err = run("--ckpt", str(tiny_ckpt), "-o", str(out))
    assert code == 2 and f"output {out} already exists; pass --force to overwrite it" in err
    assert out.read_text() == "keep me"
    assert run("--ckpt", str(tiny_ckpt), "-o", str(out), "--force")[0] == 0
    code, err = run("--ckpt", str(tiny_ckpt), "-o", str(tmp_path))
    assert code == 2 and "is a directory; give a file name" in err
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt", str(tiny_ckpt), "-o", str(out), "--dtype", "int8"])
    assert exit_info.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="dtype 'int4' is not supported; allowed values: float32, float16, bfloat16"):
        export_compact(tiny_ckpt, None, tmp_path / "x.pt", dtype="int4")
    with pytest.raises(SystemExit):
        export_main(["--help"])
    assert "--hidden-set" in capsys.readouterr().out


def test_hidden_set_folder_passes_validate(small_ckpt, tmp_path, capsys):
    folder = write_hidden_set_folder(small_ckpt, "small", tmp_path / "submission")
    assert sorted(p.name for p in folder.iterdir()) == [".gitattributes", "README.md", "expert.py", "lighthubert_s3prl",
                                                         "model.pt", "requirements.txt"]
    # self-contained: the inference code travels with the weights, so evaluators need only torch (the oldest
    # the bundled code runs on, not this machine's)
    assert (folder / "requirements.txt").read_text().split() == ["torch>=2.1", "pyyaml"]
    assert "26,873,600" in (folder / "README.md").read_text()
    # the template's `cli.py validate` checks, with the installed lighthubert_s3prl unimportable: only the
    # bundled copy can serve the expert
    report = validate_hidden_folder(folder)
    assert set(report["tasks"]) == set(HIDDEN_TASKS)
    assert all(t == {"layers": 13, "shape": [3, 184, 384], "rate": 320} for t in report["tasks"].values())
    # the expert also finds model.pt next to itself when run from elsewhere
    code = f"import sys; sys.path.insert(0, {str(folder)!r}); from expert import UpstreamExpert; UpstreamExpert()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(ExportError, match=r"already holds \['expert.py', 'model.pt', 'requirements.txt', 'README.md', "
                                          r"'.gitattributes', 'lighthubert_s3prl'\]; pass --force"):
        write_hidden_set_folder(small_ckpt, "small", folder)
    # the CLI form
    assert export_main(["--ckpt", str(small_ckpt), "--subnet", "small-min", "--hidden-set", str(folder), "--force"]) == 0
    assert "hidden-set folder:" in capsys.readouterr().out
    assert load_checkpoint(folder / "model.pt").default_subnet == get_preset("small-min")


# --------------------------------------------------------------------------------------------------- profile
def _counted_macs(model, seconds):
    wav = torch.randn(int(round(seconds * 16000)))
    # the math SDPA backend decomposes attention into matmuls the FLOP counter sees
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.forward_utterances([wav])
    return counter.get_total_flops() // 2  # FLOPs = 2 x MACs


@pytest.mark.parametrize("spec", ["small", "random:small:0", "random:small:2"])
def test_analytic_macs_match_the_flop_counter_real_shapes(spec):
    subnet = resolve_subnet(spec)
    model = CompactLightHuBERT(ModelConfig(), subnet).eval()
    with torch.no_grad():
        model.encoder.pos_conv[0].weight.normal_(0, 0.02)
    for seconds in (1.0, 1.005):  # odd (49) and even (50) frame counts
        counted = _counted_macs(model, seconds)
        analytic = analytic_macs(subnet, ModelConfig(), seconds)
        assert abs(counted - analytic) <= 2e-4 * analytic, (seconds, counted, analytic)


def test_analytic_macs_match_the_flop_counter_tiny_random():
    import random

    cfg = tiny_model_config()
    rng = random.Random(5)
    for layer_num in (10, 11, 12):
        E = rng.choice([32, 64, 128])
        subnet = SubnetConfig(E, layer_num, tuple(rng.randint(1, 2) for _ in range(layer_num)),
                              tuple(rng.randint(1, 4 * E) for _ in range(layer_num)))
        model = CompactLightHuBERT.from_supernet(LightHuBERTSupernet(cfg).reset_parameters(0), subnet).eval()
        for seconds in (0.5, 2.3):
            # the compact CNN also computes its first layer's statistics with a k x k Gram matrix (100 MACs a
            # frame): nothing next to 768-wide models, but up to ~0.5% of a 64-channel tiny one
            analytic = analytic_macs(subnet, cfg, seconds)
            assert abs(_counted_macs(model, seconds) - analytic) <= 1e-2 * analytic


def test_macs_breakdown_shape():
    parts = macs_breakdown(get_preset("small"), ModelConfig(), 10.0)
    assert set(parts) == {"cnn", "projection", "pos_conv", "attention_proj", "attention_scores", "ffn"}
    per_second = sum(parts.values()) / 10
    assert 3.5e9 < per_second < 4.2e9  # the CNN alone is ~2.4 GMACs per second of audio
    # attention scores grow with the square of the length, the rest linearly
    p20 = macs_breakdown(get_preset("small"), ModelConfig(), 20.0)
    assert p20["attention_scores"] > 3.9 * parts["attention_scores"]
    assert abs(p20["ffn"] / parts["ffn"] - 2) < 0.01
    assert analytic_macs(get_preset("small"), ModelConfig(), 0.01) == 0  # shorter than one frame


def test_profile_cli(tiny_ckpt, tmp_path, capsys):
    subnet_file = tmp_path / "subnet.yaml"
    subnet_file.write_text("subnet:\n  embed_dim: 64\n  layer_num: 10\n  heads_num: 1\n  ffn_embed: 128\n")
    assert profile_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet_file), "--seconds", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "GMACs per second of audio" in out and "real-time factor:" in out
    assert "attention_scores" in out and "(grows with sequence length)" in out


def test_profile_cli_default_random_standard_model(capsys):
    assert profile_main(["--subnet", "small", "--seconds", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "random weights (standard 768-wide supernet" in out
    assert "parameters:  26,873,600 (26.87M)" in out and "real-time factor:" in out


def test_profile_errors_are_clear(tiny_ckpt, tmp_path, capsys):
    def run(*args):
        code = profile_main(list(args))
        return code, capsys.readouterr().err

    code, err = run("--ckpt", str(tmp_path / "nope.pt"), "--no-timing")
    assert code == 2 and "nope.pt does not exist" in err
    code, err = run("--subnet", "medium", "--no-timing")
    assert code == 2 and "unknown subnet preset 'medium'" in err
    code, err = run("--seconds", "0", "--no-timing")
    assert code == 2 and "--seconds must be positive" in err
    code, err = run("--ckpt", str(tiny_ckpt), "--subnet", "base", "--no-timing")
    assert code == 2 and "subnet does not fit checkpoint" in err
    if not torch.cuda.is_available():
        code, err = run("--device", "cuda", "--seconds", "1")
        assert code == 2 and "no CUDA GPU is available" in err
    with pytest.raises(SystemExit):
        profile_main(["--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize("schedule", ["alone", "interleaved"])
def test_benchmark_quick_smoke(small_ckpt, tmp_path, schedule):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_upstream.py"), "--quick", "--threads", "1",
           "--checkpoint-dir", str(small_ckpt.parent), "--workdir", str(tmp_path / "work"), "--json", str(out),
           "--schedule", schedule]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s3prl built-in" in proc.stdout and "ours compact" in proc.stdout and "targets" in proc.stdout
    data = json.loads(out.read_text())
    small = data["results"]["small"]
    assert small["files"]["checkpoint_given"] is True  # the given file was used, not a new one
    assert small["compact_file_ratio"] <= 0.30
    for peer in ("s3prl", "supernet", "compact"):
        entry = small["peers"][peer]
        assert entry["batch_s"] > 0 and entry["load_s"] > 0 and entry["peak_mb"] > 0
    assert small["peers"]["compact"]["speedup_vs_s3prl"] > 0
    # the three implementations compute the same thing (last hidden states sent back by each peer's process)
    assert set(small["max_abs_diff"]) == {"supernet_vs_s3prl_longest", "compact_vs_s3prl_longest", "compact_vs_supernet_all"}
    assert all(v < 1e-3 for v in small["max_abs_diff"].values()), small["max_abs_diff"]
    assert data["meta"]["threads"] == 1 and len(data["meta"]["batch_seconds"]) == 2
    assert data["meta"]["schedule"] == schedule
    assert not list((tmp_path / "work").glob("*_last_hidden.pt"))  # hand-over files are cleaned up


def test_benchmark_rejects_bad_arguments(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_upstream.py"), "--subnets", "small,tiny",
           "--json", str(tmp_path / "b.json")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unknown subnet preset 'tiny'" in proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_cnn_benchmark_smoke():
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_cnn.py"), "--seconds", "0.7", "--repeats", "1",
           "--threads", "1", "--chunks", "7,16"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("plain", "folded", "folded, chunks of 7", "folded, chunks of 16"):
        assert f"  {name} " in proc.stdout
    bad = subprocess.run(cmd[:2] + ["--chunks", "a,b"], env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "give whole numbers of frames" in bad.stderr
