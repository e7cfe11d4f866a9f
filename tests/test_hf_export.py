"""Export of a uniform subnet as a Hugging Face HubertModel.

The reference is this package's compact model (itself tested against the supernet), fed waveforms
normalised as in training (``F.layer_norm`` over each waveform). HF's models are loaded back from the
written directory, as a user would, in eval mode.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from lighthubert_s3prl.model import hf_export
from lighthubert_s3prl.model.config import ModelConfig, SubnetConfig, resolve_subnet
from lighthubert_s3prl.model.export import ExportError, build_compact_for
from lighthubert_s3prl.model.hf_export import check_hf_compatible, export_hf, hf_hidden_states

from .conftest import make_wavs

transformers = pytest.importorskip("transformers")

TOL = 1e-4
INSTALL_HINT = "pip install 'lighthubert-s3prl[hf]'"
ONNX_HINT = "lighthubert-s3prl export --format onnx"


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def normalise(wav: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(wav, wav.shape)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def padded_batch(wavs):
    lengths = torch.tensor([len(w) for w in wavs])
    padded = torch.nn.utils.rnn.pad_sequence([normalise(w) for w in wavs], batch_first=True)
    return padded, (torch.arange(padded.size(1))[None, :] < lengths[:, None]).long()


@pytest.fixture(scope="module")
def small_export(small_ckpt, tmp_path_factory):
    return export_hf(small_ckpt, "small", tmp_path_factory.mktemp("hf") / "small")


@pytest.fixture(scope="module")
def small_pair(small_export, small_ckpt):
    hf = transformers.HubertModel.from_pretrained(small_export.output).eval()
    return hf, build_compact_for(small_ckpt, "small").eval()


# -- what is written ----------------------------------------------------------------------------------
def test_small_export_writes_a_hubert_of_the_released_small_shape(small_export, small_pair, small_ckpt):
    out = small_export.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left beside it
    cfg = json.loads((out / "config.json").read_text())
    expected = dict(model_type="hubert", hidden_size=384, num_attention_heads=6, intermediate_size=1536,
                    num_hidden_layers=12, feat_extract_norm="group", conv_bias=False, layer_norm_eps=1e-5,
                    conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, do_stable_layer_norm=False,
                    feat_proj_layer_norm=True, hidden_act="gelu", feat_extract_activation="gelu",
                    attention_dropout=0.0)
    assert {k: cfg.get(k) for k in expected} == expected

    hf, ours = small_pair
    # the raw checkpoint, sliced by hand: weight norm over each kernel tap on the full tensor, then [:E, :E/16]
    raw = torch.load(small_ckpt, map_location="cpu", weights_only=True)["model"]
    g, v = raw["encoder.pos_conv.0.weight_g"], raw["encoder.pos_conv.0.weight_v"]
    expected_pos = (g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt())[:384, :24]
    assert max_diff(hf.encoder.pos_conv_embed.conv.weight.detach(), expected_pos) <= 1e-6
    assert torch.equal(hf.masked_spec_embed.detach(), raw["mask_emb"][:384])

    fe = transformers.AutoFeatureExtractor.from_pretrained(out)
    assert type(fe).__name__ == "Wav2Vec2FeatureExtractor"
    assert (fe.sampling_rate, fe.do_normalize, fe.return_attention_mask) == (16000, True, False)
    summary = small_export.summary()
    assert "embed_dim=384 layers=12 heads=6 ffn=1536" in summary and str(out) in summary
    assert small_export.parameters == sum(p.numel() for p in hf.parameters())


# -- parity ---------------------------------------------------------------------------------------------
def pos_conv_then_norm(ours, h0: torch.Tensor) -> torch.Tensor:
    """HF's hidden state 0 computed by hand from ours: LN(h0 + GELU(conv(h0)) without the last frame)."""
    state, cfg = ours.state_dict(), ours.cfg
    y = F.conv1d(h0.transpose(1, 2), state["encoder.pos_conv.0.weight"], state["encoder.pos_conv.0.bias"],
                 padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)[..., :-1]
    x = h0 + F.gelu(y).transpose(1, 2)
    return F.layer_norm(x, x.shape[-1:], state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"], 1e-5)


@pytest.mark.numerics
@torch.no_grad()
def test_small_subnet_hidden_states_match_ours(small_pair):
    hf, ours = small_pair
    for wav in make_wavs([16000, 12345], seed=7):
        x = normalise(wav)[None]
        want = ours(x).hidden_states
        got = hf(x, output_hidden_states=True).hidden_states
        assert len(got) == len(want) == 13
        assert max(max_diff(a, b) for a, b in zip(got[1:], want[1:])) <= TOL
        assert max_diff(got[0], pos_conv_then_norm(ours, want[0])) <= TOL
        assert max_diff(got[0], want[0]) > 0.1  # the documented difference of definition is real
        mine = hf_hidden_states(hf, x)
        assert len(mine) == 13 and max(max_diff(a, b) for a, b in zip(mine, want)) <= TOL


@pytest.mark.numerics
@torch.no_grad()
def test_group_norm_padded_batch_matches_through_the_helper_only(small_pair):
    hf, ours = small_pair
    wavs = make_wavs([12000, 7001, 4000], seed=3)
    alone = ours.forward_utterances([normalise(w) for w in wavs])
    want, valid = alone.hidden_states, ~alone.padding_mask  # padded frames of ours are 0
    assert valid.sum(-1).tolist() == [37, 21, 12]
    padded, mask = padded_batch(wavs)
    got = hf_hidden_states(hf, padded, mask)
    assert max(max_diff(a, b) for a, b in zip(got, want)) <= TOL
    # HubertModel's own batched forward normalises the first conv over the padding as well (module notes);
    # should this start to hold, those notes and the helper's per-utterance path are out of date
    batched = hf(padded, attention_mask=mask, output_hidden_states=True).hidden_states
    assert (batched[-1] - want[-1])[valid].abs().max() > 1e-2


@pytest.mark.numerics
@torch.no_grad()
def test_hf_feature_extractor_input_gives_our_hidden_states(small_export, small_pair):
    hf, ours = small_pair
    fe = transformers.AutoFeatureExtractor.from_pretrained(small_export.output)
    wav = make_wavs([16000], seed=11)[0]
    input_values = fe(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_values
    # eps 1e-7 against layer_norm's 1e-5 rescales the input by ~2e-4 at this level, which the CNN's norm undoes
    assert 1e-6 < max_diff(input_values, normalise(wav)[None]) < 1e-3
    got = hf_hidden_states(hf, input_values)
    assert max(max_diff(a, b) for a, b in zip(got, ours(normalise(wav)[None]).hidden_states)) <= TOL


@pytest.mark.numerics
@torch.no_grad()
def test_base_subnet_matches(small_ckpt, tmp_path):
    result = export_hf(small_ckpt, "base", tmp_path / "base")
    hf = transformers.HubertModel.from_pretrained(result.output).eval()
    assert (hf.config.hidden_size, hf.config.num_attention_heads, hf.config.intermediate_size) == (640, 10, 2560)
    x = normalise(make_wavs([10000], seed=5)[0])[None]
    want = build_compact_for(small_ckpt, "base")(x).hidden_states
    got = hf_hidden_states(hf, x)
    assert len(got) == 13 and max(max_diff(a, b) for a, b in zip(got, want)) <= TOL


@pytest.mark.numerics
@torch.no_grad()
def test_layer_norm_cnn_padded_batch_matches_with_attention_mask(tiny_ln_ckpt, tmp_path):
    result = export_hf(tiny_ln_ckpt, None, tmp_path / "ln")
    hf = transformers.HubertModel.from_pretrained(result.output).eval()
    assert hf.config.feat_extract_norm == "layer" and result.feat_extract_norm == "layer"
    assert transformers.AutoFeatureExtractor.from_pretrained(result.output).return_attention_mask is True
    ours = build_compact_for(tiny_ln_ckpt).eval()
    wavs = make_wavs([16000, 12345, 5551])
    want = ours.forward_utterances([normalise(w) for w in wavs])
    padded, mask = padded_batch(wavs)
    got = hf(padded, attention_mask=mask, output_hidden_states=True).hidden_states
    valid = ~want.padding_mask
    assert valid.sum(-1).tolist() == [49, 38, 17]
    assert len(got) == len(want.hidden_states) == 13
    assert max((a - b)[valid].abs().max().item() for a, b in zip(got[1:], want.hidden_states[1:])) <= TOL
    assert max(max_diff(a, b) for a, b in zip(hf_hidden_states(hf, padded, mask), want.hidden_states)) <= TOL


# -- refusals -------------------------------------------------------------------------------------------
def test_non_uniform_subnet_is_refused_naming_its_layers():
    subnet = SubnetConfig(384, 12, (6,) * 11 + (4,), (1536,) * 11 + (1152,))
    with pytest.raises(ExportError) as err:
        check_hf_compatible(ModelConfig(), subnet)
    msg = str(err.value)
    assert "layers 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 have 6 heads (attention width 384) and FFN 1536" in msg
    assert "layer 11 has 4 heads (attention width 256) and FFN 1152" in msg
    assert ONNX_HINT in msg


def test_random_subnet_export_is_refused_and_writes_nothing(small_ckpt, tmp_path):
    spec = "random:small:0"
    subnet = resolve_subnet(spec)
    assert len(set(zip(subnet.heads_num, subnet.ffn_embed))) > 1
    with pytest.raises(ExportError) as err:
        export_hf(small_ckpt, spec, tmp_path / "out")
    msg = str(err.value)
    for i, (h, f) in enumerate(zip(subnet.heads_num, subnet.ffn_embed)):
        assert f"{h} heads (attention width {64 * h}) and FFN {f}" in msg, i
    assert ONNX_HINT in msg
    assert list(tmp_path.iterdir()) == []


def test_attention_narrower_than_embedding_is_refused():
    with pytest.raises(ExportError) as err:
        check_hf_compatible(ModelConfig(), SubnetConfig.uniform(384, 8, 1536, 12))
    msg = str(err.value)
    assert "attention width 512 but embed_dim is 384" in msg and ONNX_HINT in msg


def test_pre_ln_model_is_refused():
    with pytest.raises(ExportError) as err:
        check_hf_compatible(ModelConfig(layer_norm_first=True), SubnetConfig.uniform(384, 6, 1536, 12))
    assert "layer_norm_first=True" in str(err.value) and ONNX_HINT in str(err.value)


def test_missing_transformers_names_the_install_command(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ExportError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        export_hf(tiny_ckpt, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# -- output directory -------------------------------------------------------------------------------------
def test_output_directory_handling(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "hf"
    export_hf(tiny_ckpt, None, out)
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="already exists and is not empty; pass --force"):
        export_hf(tiny_ckpt, None, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written

    (out / "stray.txt").write_text("x")
    export_hf(tiny_ckpt, None, out, force=True)  # replaces the earlier export as a whole
    assert sorted(p.name for p in out.iterdir()) == sorted(written)

    def broken(cfg):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf_export, "feature_extractor_for", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_hf(tiny_ckpt, None, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # the earlier export is intact
    monkeypatch.undo()

    real_replace = os.replace

    def rename_fails(src, dst):  # the last step, moving the new export into place, fails
        if str(src).endswith(".tmp"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(hf_export.os, "replace", rename_fails)
    with pytest.raises(OSError, match="rename failed"):
        export_hf(tiny_ckpt, None, out, force=True)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporaries left

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="does not look like an earlier export"):
        export_hf(tiny_ckpt, None, other, force=True)
    assert (other / "keep.txt").read_text() == "mine"

    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="is a file"):
        export_hf(tiny_ckpt, None, tmp_path / "file")

    empty = tmp_path / "empty"
    empty.mkdir()
    export_hf(tiny_ckpt, None, empty)
    assert (empty / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "hf", "notes"]  # no temporaries left
