"""``export`` (compact checkpoints, hidden-set folder), ``profile`` (MACs, RTF) and the benchmark smoke run."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lighthubert_s3prl.commands import profile as profile_module
from lighthubert_s3prl.commands.export import main as export_main
from lighthubert_s3prl.commands.profile import main as profile_main, measure_rtf
from lighthubert_s3prl.model.checkpoint import load_checkpoint, tiny_model_config
from lighthubert_s3prl.model.compact import CompactLightHuBERT
from lighthubert_s3prl.model.config import ModelConfig, SubnetConfig, count_parameters, get_preset, resolve_subnet
from lighthubert_s3prl.model.cost import analytic_macs, macs_breakdown
from lighthubert_s3prl.model.export import ExportError, export_compact
from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
from lighthubert_s3prl.superb.package import HIDDEN_TASKS, validate_hidden_folder
from lighthubert_s3prl.upstream import hubconf
from lighthubert_s3prl.upstream.expert import UpstreamExpert
from lighthubert_s3prl.upstream.hidden_set import write_hidden_set_folder

from .conftest import make_wavs
from .numerics import assert_hidden_states_close, longest_reduction
from .test_expert import activation_dtypes

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


def assert_stored_numbers_and_size(path: Path, numbers: int, dtype: torch.dtype) -> None:
    """The file holds exactly ``numbers`` values, all of ``dtype`` (read with torch alone, not our loader), and
    its size is those values' bytes plus the archive's own overhead: per tensor a zip local header, alignment
    padding to 64 bytes, a central-directory entry and its pickle record (about 320 bytes measured), plus the
    cfg and the end records."""
    stored = torch.load(path, weights_only=True)["model"]
    assert {t.dtype for t in stored.values()} == {dtype}
    assert sum(t.numel() for t in stored.values()) == numbers
    overhead = path.stat().st_size - numbers * dtype.itemsize
    assert 0 < overhead < 512 * len(stored) + 16 * 1024, overhead


def test_export_real_small_is_under_30_percent_of_the_official_file(small_ckpt, tmp_path):
    result = export_compact(small_ckpt, "small", tmp_path / "small.pt")
    assert result.subnet == get_preset("small") and result.parameters == 26_873_600
    assert result.output_bytes / result.source_bytes <= 0.30
    # the parameter count keeps mask_emb at the supernet's 768 (as the authors count it); the file stores 384
    assert_stored_numbers_and_size(result.output, 26_873_600 - (768 - 384), torch.float32)
    half = export_compact(small_ckpt, "small", tmp_path / "small_bf16.pt", dtype="bfloat16")
    assert_stored_numbers_and_size(half.output, 26_873_600 - (768 - 384), torch.bfloat16)
    model = CompactLightHuBERT.from_checkpoint(load_checkpoint(half.output))
    assert model.dtype == torch.float32  # stored bf16, computed fp32 unless asked


# The 96-wide, 10-layer subnet of the tiny supernet (64-channel CNN, 128 wide) the export tests use, counted by
# hand: CNN convs 64*10 + 4*(64*64*3) + 2*(64*64*2) and its GroupNorm 2*64; CNN LayerNorm 2*64; mask_emb 128;
# post_extract_proj 64*96 + 96; positional conv 96*(96/4)*16 + 96; encoder LayerNorm 2*96. Per layer (2 heads,
# 128 wide attention): q/k/v 3*(96*128 + 128), out 128*96 + 96, two LayerNorms 4*96, and fc1 + fc2 at F =
# 200 (96*200 + 200 + 200*96 + 96) or 300 (96*300 + 300 + 300*96 + 96), five layers each.
TINY_EXPORT_SUBNET = "subnet:\n  embed_dim: 96\n  layer_num: 10\n  heads_num: 2\n  ffn_embed: [200, 300, 200, 300, " \
                     "200, 300, 200, 300, 200, 300]\n"
TINY_EXPORT_PARAMETERS = (
    (64 * 10 + 4 * (64 * 64 * 3) + 2 * (64 * 64 * 2) + 2 * 64) + 2 * 64 + 128 + (64 * 96 + 96)
    + (96 * 24 * 16 + 96) + 2 * 96
    + 10 * (3 * (96 * 128 + 128) + (128 * 96 + 96) + 4 * 96)
    + 5 * (96 * 200 + 200 + 200 * 96 + 96) + 5 * (96 * 300 + 300 + 300 * 96 + 96)
)


@pytest.mark.filterwarnings("ignore:dtype .* on CPU:RuntimeWarning")
def test_export_dtype_is_what_is_stored_and_the_upstream_dtype_what_is_computed(tiny_ckpt, tmp_path, capsys):
    """``export --dtype`` sets the storage dtype (values rounded from the float32 export, bytes halved); a
    bf16 file computes in float32 unless the upstream's ``dtype`` asks for bf16, and then every activation is."""
    subnet = tmp_path / "subnet.yaml"
    subnet.write_text(TINY_EXPORT_SUBNET)
    stored: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        out = tmp_path / f"{name}.pt"
        assert export_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet), "-o", str(out), "--dtype", name]) == 0
        assert f"parameters:  {TINY_EXPORT_PARAMETERS:,} " in capsys.readouterr().out
        assert_stored_numbers_and_size(out, TINY_EXPORT_PARAMETERS - (128 - 96), dtype)  # mask_emb: 96 of 128
        stored[name] = torch.load(out, weights_only=True)["model"]
    assert stored["bfloat16"].keys() == stored["float32"].keys()
    assert all(torch.equal(stored["bfloat16"][k], stored["float32"][k].to(torch.bfloat16)) for k in stored["float32"])
    wavs = make_wavs([8000])
    for asked, expected in ((None, torch.float32), ("bfloat16", torch.bfloat16)):
        up = UpstreamExpert(str(tmp_path / "bfloat16.pt"), dtype=asked).eval()
        seen, calls = activation_dtypes(up.model, lambda: up(wavs))
        assert calls >= 10 and seen == {expected}, (asked, seen)


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


@pytest.mark.parametrize("argv, message", [
    (["--format", "hf"], "give exactly one output"),
    (["OUT", "-o", "OTHER"], "give exactly one output"),
    (["--format", "onnx", "--hidden-set", "DIR"], "cannot be combined with --format onnx"),
    (["--format", "hf", "OUT", "--dtype", "bfloat16"], "--format hf writes float32"),
])
def test_export_command_refuses_contradictory_targets(argv, message, tiny_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt", str(tiny_ckpt), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_export_command_writes_each_format(tiny_ckpt, tmp_path, capsys):
    """The command dispatches to each writer; what each writes is pinned by its own tests."""
    assert export_main(["--ckpt", str(tiny_ckpt), str(tmp_path / "c.pt")]) == 0
    assert load_checkpoint(tmp_path / "c.pt").kind == "compact"
    assert export_main(["--ckpt", str(tiny_ckpt), "--format", "hf", str(tmp_path / "hf")]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert export_main(["--ckpt", str(tiny_ckpt), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert export_main(["--ckpt", str(tiny_ckpt), "--format", "hidden-set", str(tmp_path / "hs")]) == 0
    assert (tmp_path / "hs" / "expert.py").is_file()
    capsys.readouterr()
    layered = {"embed_dim": 128, "layer_num": 12, "heads_num": [2] * 11 + [1], "ffn_embed": 256}
    subnet_file = tmp_path / "layered.json"
    subnet_file.write_text(json.dumps(layered))
    assert export_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet_file), "--format", "hf",
                        str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "layers 0, 1, 2" in err and "layer 11 has 1 head (attention width 64)" in err and "--format onnx" in err
    assert not (tmp_path / "hf2").exists()


@pytest.mark.parametrize("fmt, module, extra", [("hf", "transformers", "hf"), ("onnx", "onnxruntime", "onnx")])
def test_a_missing_extra_names_its_install_line(fmt, module, extra, tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    assert export_main(["--ckpt", str(tiny_ckpt), "--format", fmt, str(tmp_path / "out")]) == 2
    assert f"pip install 'lighthubert-s3prl[{extra}]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- profile
def _counted_macs(model, seconds):
    wav = torch.randn(int(round(seconds * 16000)))
    # the math SDPA backend decomposes attention into matmuls the FLOP counter sees
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(wav[None])  # forward() pads an odd frame count to even, as the analytic count does
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


# The tiny supernet's 64-wide, 10-layer subnet (1 head, FFN 128), counted by hand. The CNN (64 channels;
# kernel/stride 10/5, then 3/2 four times, then 2/2 twice) turns 16000 samples into 3199, 1599, 799, 399, 199,
# 99, 49 frames and 320000 into 63999, 31999, 15999, 7999, 3999, 1999, 999. The grouped positional conv
# (kernel 16, 4 groups, padding 8) gives T + 1 outputs; the encoder pads T to an even S (50 and 1000).
TINY_PROFILE_SUBNET = "subnet:\n  embed_dim: 64\n  layer_num: 10\n  heads_num: 1\n  ffn_embed: 128\n"
HAND_COUNTED_MACS: Dict[float, Dict[str, int]] = {
    1.0: {
        "cnn": 3199 * 64 * 10 + (1599 + 799 + 399 + 199) * 64 * 64 * 3 + (99 + 49) * 64 * 64 * 2,
        "projection": 49 * 64 * 64,
        "pos_conv": 50 * 64 * (64 // 4) * 16,
        "attention_proj": 10 * 4 * 50 * 64 * 64,  # q, k, v and out
        "attention_scores": 10 * 2 * 50 * 50 * 64,  # q.k^T and attention x v
        "ffn": 10 * 2 * 50 * 64 * 128,
    },
    20.0: {
        "cnn": 63999 * 64 * 10 + (31999 + 15999 + 7999 + 3999) * 64 * 64 * 3 + (1999 + 999) * 64 * 64 * 2,
        "projection": 999 * 64 * 64,
        "pos_conv": 1000 * 64 * (64 // 4) * 16,
        "attention_proj": 10 * 4 * 1000 * 64 * 64,
        "attention_scores": 10 * 2 * 1000 * 1000 * 64,
        "ffn": 10 * 2 * 1000 * 64 * 128,
    },
}


@pytest.mark.parametrize("seconds", sorted(HAND_COUNTED_MACS))
def test_macs_breakdown_equals_a_hand_count(seconds):
    subnet = SubnetConfig.uniform(64, 1, 128, 10)
    assert macs_breakdown(subnet, tiny_model_config(), seconds) == HAND_COUNTED_MACS[seconds]


def test_profile_cli_prints_the_hand_counted_macs(tiny_ckpt, tmp_path, capsys):
    subnet_file = tmp_path / "subnet.yaml"
    subnet_file.write_text(TINY_PROFILE_SUBNET)
    assert profile_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet_file), "--seconds", "20", "--no-timing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    parts = HAND_COUNTED_MACS[20.0]
    total = sum(parts.values())
    assert "subnet:      embed_dim=64 layers=10 heads=1 ffn=128" in lines
    assert "audio:       20 s -> 999 frames" in lines
    assert f"MACs:        {total / 1e9:.3f} G for 20 s = {total / 20 / 1e9:.3f} GMACs per second of audio" in lines
    for name, value in parts.items():
        note = "  (grows with sequence length)" if name == "attention_scores" else ""
        assert f"  {name:<17} {value / 1e9:9.3f} G  {value / total:6.1%}{note}" in lines
    assert not any(line.startswith("real-time factor") for line in lines)  # --no-timing times nothing


class ScriptedClock:
    """Stands in for the ``time`` module: each forward the model runs takes the next of ``durations`` seconds."""

    def __init__(self, durations: List[float]) -> None:
        self.now = 0.0
        self._durations: Iterator[float] = iter(durations)

    def perf_counter(self) -> float:
        return self.now

    def forward_ran(self) -> None:
        self.now += next(self._durations)


# one warm-up that must not count, then three runs whose median (0.3 s) is neither their mean nor the last one
DURATIONS = [9.0, 0.2, 0.5, 0.3]


def test_measure_rtf_is_the_median_timed_run_over_the_audio_length(monkeypatch):
    clock = ScriptedClock(DURATIONS)
    monkeypatch.setattr(profile_module, "time", clock)
    lengths: List[int] = []

    class Model:
        def forward_utterances(self, wavs: List[torch.Tensor]) -> None:
            lengths.extend(len(w) for w in wavs)
            clock.forward_ran()

    timing = measure_rtf(Model(), seconds=2.0, repeats=3, warmup=1)
    assert timing == {"seconds_per_run": pytest.approx(0.3), "rtf": pytest.approx(0.15), "runs": 3}
    assert lengths == [32000] * 4  # 2 s at 16 kHz, warm-up included


@pytest.mark.filterwarnings("ignore:dtype .* on CPU:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_profile_cli_times_in_the_asked_dtype(tiny_ckpt, tmp_path, capsys, monkeypatch, dtype):
    """The printed real-time factor is the median run over the audio length, and the timed model computes in
    ``--dtype`` (every activation, seen by forward hooks)."""
    subnet_file = tmp_path / "subnet.yaml"
    subnet_file.write_text(TINY_PROFILE_SUBNET)
    clock = ScriptedClock(DURATIONS)
    monkeypatch.setattr(profile_module, "time", clock)
    timed = measure_rtf
    seen_dtypes: List[Any] = []

    def measure_and_watch(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Dict[str, float]:
        forward = model.forward_utterances

        def forward_on_the_clock(wavs: List[torch.Tensor]) -> Any:
            out = forward(wavs)
            clock.forward_ran()
            return out

        monkeypatch.setattr(model, "forward_utterances", forward_on_the_clock)
        result: Dict[str, float] = {}
        seen_dtypes.append(activation_dtypes(model, lambda: result.update(timed(model, *args, **kwargs))))
        return result

    monkeypatch.setattr(profile_module, "measure_rtf", measure_and_watch)
    assert profile_main(["--ckpt", str(tiny_ckpt), "--subnet", str(subnet_file), "--seconds", "2", "--repeats", "3",
                         "--threads", "1", "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert (f"real-time factor: 0.1500 on cpu ({dtype}, 1 threads; median of 3 runs: 0.300 s per 2 s of audio; "
            f"6.7x faster than real time)") in out
    (seen, calls), = seen_dtypes
    assert calls >= 4 * 10 and seen == {getattr(torch, dtype)}


def test_profile_cli_default_random_standard_model(capsys):
    assert profile_main(["--subnet", "small", "--seconds", "1", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "random weights (standard 768-wide supernet" in out
    assert "parameters:  26,873,600 (26.87M)" in out and "audio:       1 s -> 49 frames" in out


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
def test_benchmark_contention_smoke(small_ckpt, tmp_path):
    """--contention: per level the busy processes ran beside the peers and are gone afterwards; the ratio, our
    FLOP rate and its fraction of the matmul rate follow from the stored times and the analytic cost."""
    from lighthubert_s3prl.model.config import get_preset
    from lighthubert_s3prl.model.cost import analytic_macs

    from .test_machine_load import running

    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_upstream.py"), "--quick", "--threads", "1",
           "--checkpoint-dir", str(small_ckpt.parent), "--workdir", str(tmp_path / "work"), "--json", str(out),
           "--contention", "0,1", "--no-memory"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours vs s3prl" in proc.stdout and "of matmul" in proc.stdout and "targets (CPU under contention)" in proc.stdout
    data = json.loads(out.read_text())
    small = data["contention"]["small"]
    flops = sum(2.0 * analytic_macs(get_preset("small"), seconds=s) for s in data["meta"]["batch_seconds"])
    assert small["batch_gflop"] == pytest.approx(flops / 1e9, rel=1e-3)
    levels = small["levels"]
    assert [row["busy_processes"] for row in levels] == [0, 1]
    assert levels[0]["busy_pids"] == [] and len(levels[1]["busy_pids"]) == 1
    assert not running(levels[1]["busy_pids"][0])
    for row in levels:
        assert row["speedup_vs_s3prl"] == pytest.approx(row["s3prl"]["batch_s"] / row["compact"]["batch_s"])
        assert row["compact_gflops"] == pytest.approx(flops / row["compact"]["batch_s"] / 1e9, rel=1e-3)
        assert row["compact_fraction_of_matmul_rate"] == pytest.approx(row["compact_gflops"] / row["matmul_gflops"])
        assert row["compact_fraction_of_quiet_matmul_rate"] == pytest.approx(row["compact_gflops"] / levels[0]["matmul_gflops"])
    assert set(data["targets"]) == {"small, 0 busy: ours >= 1.5x s3prl", "small, 1 busy: ours >= 1.5x s3prl",
                                    "small, quiet: ours >= 75% of the matmul rate"}
    bad = subprocess.run(cmd[:-3] + ["--contention", "0,-1"], env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "--contention '0,-1'" in bad.stderr


def test_benchmark_interrupted_leaves_no_busy_process(small_ckpt, tmp_path):
    """SIGTERM in the middle of a --contention run: the benchmark exits and its busy process is gone."""
    import signal
    import time

    from .test_machine_load import running, wait_gone

    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_upstream.py"), "--quick", "--threads", "1",
           "--checkpoint-dir", str(small_ckpt.parent), "--workdir", str(tmp_path / "work"),
           "--json", str(tmp_path / "bench.json"), "--contention", "1", "--no-memory"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def busy_children():
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == proc.pid and b"getppid" in cmdline:
                found.append(int(stat.parent.name))
        return found

    deadline, pids = time.monotonic() + 300, []
    while not pids and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = busy_children()
    assert pids and all(running(p) for p in pids), "the benchmark never started its busy process"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert wait_gone(pids) == []


@pytest.mark.parametrize("schedule", ["alone", "interleaved"])
def test_benchmark_quick_smoke(small_ckpt, tmp_path, schedule):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_upstream.py"), "--quick", "--threads", "1",
           "--checkpoint-dir", str(small_ckpt.parent), "--workdir", str(tmp_path / "work"), "--json", str(out),
           "--schedule", schedule] + (["--onnx"] if schedule == "alone" else [])
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s3prl built-in" in proc.stdout and "ours compact" in proc.stdout and "targets" in proc.stdout
    assert ("ONNX Runtime" in proc.stdout) == (schedule == "alone")
    data = json.loads(out.read_text())
    small = data["results"]["small"]
    files = small["files"]
    assert files["checkpoint_given"] is True  # the given file was used, not a new one
    assert files["supernet_bytes"] == small_ckpt.stat().st_size
    assert_stored_numbers_and_size(Path(files["compact"]), 26_873_600 - (768 - 384), torch.float32)
    assert files["compact_bytes"] == Path(files["compact"]).stat().st_size
    assert small["compact_file_ratio"] == pytest.approx(files["compact_bytes"] / files["supernet_bytes"])
    assert small["compact_file_ratio"] <= 0.30
    runs = data["meta"]["repeats"]
    for peer in ("s3prl", "supernet", "compact"):
        entry = small["peers"][peer]
        assert entry["load_s"] > 0 and entry["peak_mb"] > 0
        # the reported time is the median of as many timed runs as asked, the minimum their minimum
        assert len(entry["batch_s_runs"]) == runs and all(t > 0 for t in entry["batch_s_runs"])
        assert entry["batch_s"] == pytest.approx(statistics.median(entry["batch_s_runs"]))
        assert entry["batch_s_min"] == pytest.approx(min(entry["batch_s_runs"]))
        assert entry["speedup_vs_s3prl"] == pytest.approx(small["peers"]["s3prl"]["batch_s"] / entry["batch_s"])
    assert small["peers"]["s3prl"]["speedup_vs_s3prl"] == pytest.approx(1.0)
    assert data["meta"]["audio_seconds"] == pytest.approx(sum(data["meta"]["batch_seconds"]), abs=1e-3)
    # the three implementations compute the same thing (last hidden states sent back by each peer's process)
    expected = {"supernet_vs_s3prl_longest", "compact_vs_s3prl_longest", "compact_vs_supernet_all"}
    if schedule == "alone":  # ONNX Runtime as a fourth peer, timed the same way and checked against ours
        expected |= {"onnx_vs_s3prl_longest", "compact_vs_onnx_all"}
        onnx = small["peers"]["onnx"]
        assert len(onnx["batch_s_runs"]) == runs
        assert onnx["speedup_vs_s3prl"] == pytest.approx(small["peers"]["s3prl"]["batch_s"] / onnx["batch_s"])
        assert files["onnx_bytes"] == Path(files["compact"]).with_suffix(".onnx").stat().st_size
    assert set(small["max_abs_diff"]) == expected
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
