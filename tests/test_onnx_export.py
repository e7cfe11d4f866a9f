"""ONNX export of any subnet: ONNX Runtime must give what our s3prl upstream gives, on any batch shape.

The reference is ``UpstreamExpert`` (each utterance normalised and run alone through the compact model, in
PyTorch); the frame counts are worked out here from the CNN's kernel and stride list. The exported graphs
are traced on 2 utterances of 6000 and 4321 samples; the batches below have other sizes and lengths, so a
shape frozen into the graph by tracing shows up as a wrong frame count or a runtime error.
"""
from __future__ import annotations

import sys

import onnx
import pytest
import torch

from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint
from lighthubert_s3prl.model.export import ExportError
from lighthubert_s3prl.model.onnx_export import INSTALL_HINT, OnnxRuntimeUpstream, UpstreamGraph, export_onnx
from lighthubert_s3prl.upstream.expert import UpstreamExpert

from .conftest import make_wavs

ATOL = 1e-4
UNEQUAL = [16000, 12345, 8000, 5551]  # 4 utterances of unequal lengths
OTHER_SHAPE = [400, 27001, 3333]  # another batch size and a longer padded length; 400 samples make 1 frame


def recorded_unlike_training(wavs):
    """Other gains and DC offsets: the CNN's first norm all but hides them, except through its epsilon on
    quiet input and through the offset's sum over the kernel, so a graph that normalises waveforms wrongly
    (or not at all) is off by far more than on the unit-scale waveforms of make_wavs."""
    return [gain * w + offset for w, gain, offset in zip(wavs, [0.01, 3.0, 0.002, 0.5], [0.05, -1.0, 0.0, 0.2])]


def frames_for(samples: int) -> int:
    """Output frames of the released CNN: (kernel, stride) = (10, 5), then (3, 2) x 4, then (2, 2) x 2."""
    n = samples
    for kernel, stride in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - kernel) // stride + 1
    return max(n, 0)


@pytest.fixture(scope="module")
def exported(small_ckpt, tmp_path_factory):
    """ONNX files of the released small subnet and of a non-uniform 10-layer one, beside their references."""
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for spec in ("small", "random:small:3"):  # random:small:3: E=512, 10 layers, heads 4-8, FFN 1536-2048
        path = out / f"{spec.replace(':', '_')}.onnx"
        result = export_onnx(small_ckpt, spec, path)
        assert result.output == path and path.is_file()
        files[spec] = path
    return files


def check_against_upstream(runner, expert, wavs, atol=ATOL):
    """ORT's hidden states equal the upstream's on valid frames and are 0 on padded ones; returns max |diff|."""
    expected = expert(wavs)["hidden_states"]
    got = runner(wavs)
    hidden = got["hidden_states"]
    assert len(hidden) == expert.subnet.layer_num + 1 == len(expected)
    assert got["frame_lengths"].tolist() == [frames_for(len(w)) for w in wavs]
    T = max(frames_for(len(w)) for w in wavs)
    worst = 0.0
    for i, (h, e) in enumerate(zip(hidden, expected)):
        assert h.shape == (len(wavs), T, expert.subnet.embed_dim), f"hidden state {i}"
        for b, w in enumerate(wavs):
            n = frames_for(len(w))
            diff = float((h[b, :n] - e[b, :n]).abs().max())
            assert diff <= atol, f"hidden state {i}, utterance {b}: max |diff| {diff:.2e}"
            worst = max(worst, diff)
            assert torch.all(h[b, n:] == 0), f"hidden state {i}, utterance {b}: padded frames are not 0"
    return worst


@pytest.mark.numerics
@pytest.mark.parametrize("spec", ["small", "random:small:3"])
def test_onnx_runtime_matches_upstream_on_any_batch_shape(exported, small_ckpt, spec):
    expert = UpstreamExpert(small_ckpt, subnet=spec, cpu_threads="fixed").eval()
    runner = OnnxRuntimeUpstream(exported[spec], intra_op_threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    with torch.inference_mode():
        diffs = [check_against_upstream(runner, expert, make_wavs(UNEQUAL, seed=4)),
                 check_against_upstream(runner, expert, recorded_unlike_training(make_wavs(OTHER_SHAPE, seed=5))),
                 check_against_upstream(runner, expert, make_wavs([9876], seed=6))]
    print(f"{spec}: max |diff| ORT vs upstream {max(diffs):.2e}")


@pytest.mark.numerics
def test_samples_past_each_length_are_ignored(exported):
    """A caller's padding need not be zeros: the graph masks past ``wav_lengths`` before normalising."""
    runner = OnnxRuntimeUpstream(exported["random:small:3"])
    wavs = make_wavs([7000, 4100], seed=7)
    lengths = torch.tensor([7000, 4100])
    clean = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    noisy = clean.clone()
    noisy[1, 4100:] = torch.randn(2900, generator=torch.Generator().manual_seed(8))
    for a, b in zip(runner.run(clean, lengths)[0], runner.run(noisy, lengths)[0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_graph_declares_dynamic_batch_and_samples(exported):
    model = onnx.load(str(exported["random:small:3"]), load_external_data=False)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["wavs", "wav_lengths"]
    assert inputs["wavs"].elem_type == onnx.TensorProto.FLOAT and inputs["wav_lengths"].elem_type == onnx.TensorProto.INT64
    assert all(d.dim_param and not d.dim_value for d in inputs["wavs"].shape.dim)
    assert [o.name for o in model.graph.output] == [f"hidden_state_{i}" for i in range(11)] + ["frame_lengths"]


@pytest.mark.numerics
@pytest.mark.parametrize("overrides", [{"extractor_mode": "layer_norm"}, {"layer_norm_first": True}])
def test_other_architectures(tmp_path, overrides):
    """The CNN's layer_norm mode and pre-LN layers (tiny supernets: only the architecture matters here)."""
    ckpt = write_random_checkpoint(tmp_path / "tiny.pt", "small", seed=9, model_cfg=tiny_model_config(**overrides))
    heads = [2, 1, 2, 2, 1, 2]  # 6 of the 12 layers kept, with non-uniform widths
    spec = {"embed_dim": 128, "heads_num": heads, "atten_dim": [64 * h for h in heads],
            "ffn_embed": [512, 256, 384, 128, 512, 256], "layer_num": 6, "slide_wsz": ["global"] * 6}
    export_onnx(ckpt, spec, tmp_path / "tiny.onnx")
    expert = UpstreamExpert(ckpt, subnet=spec, cpu_threads="fixed").eval()
    with torch.inference_mode():
        check_against_upstream(OnnxRuntimeUpstream(tmp_path / "tiny.onnx"), expert,
                               recorded_unlike_training(make_wavs(OTHER_SHAPE, seed=10)))


def test_export_refuses_a_graph_with_a_frozen_shape(tiny_ckpt, tmp_path, monkeypatch):
    """The export's own check runs the graph on another batch shape before writing anything."""
    traced = UpstreamGraph.forward

    def frozen_batch_size(self, wavs, wav_lengths):
        *hidden, frames = traced(self, wavs, wav_lengths)
        return (*hidden, frames + torch.zeros(int(wavs.size(0)), dtype=frames.dtype))  # int(): a graph constant

    monkeypatch.setattr(UpstreamGraph, "forward", frozen_batch_size)
    with pytest.raises(ExportError, match="another shape than the traced one"):
        export_onnx(tiny_ckpt, None, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_force(tiny_ckpt, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(tiny_ckpt, None, out)
    assert out.read_bytes() == b"keep me"
    result = export_onnx(tiny_ckpt, None, out, force=True, opset=18)
    onnx.checker.check_model(str(out))
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert result.output_bytes == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left behind
    assert "opset 18" in result.summary()
    with pytest.raises(ExportError, match="opset 13 is not supported"):  # attention needs opset 14
        export_onnx(tiny_ckpt, None, out, force=True, opset=13)


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_packages_give_the_install_command(tiny_ckpt, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import` fail as if not installed
    with pytest.raises(ExportError, match=f"{missing} package") as err:
        export_onnx(tiny_ckpt, None, tmp_path / "model.onnx")
    assert INSTALL_HINT in str(err.value) and "pip install 'lighthubert-s3prl[onnx]'" in str(err.value)
    assert not (tmp_path / "model.onnx").exists()
    if missing == "onnxruntime":
        with pytest.raises(ExportError, match="lighthubert-s3prl\\[onnx\\]"):
            OnnxRuntimeUpstream(tmp_path / "model.onnx")
