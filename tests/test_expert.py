"""The s3prl upstream: padding, featurizer, hub entries and options."""

import pytest
import torch

from lighthubert_s3prl import hubconf
from lighthubert_s3prl.checkpoint import CheckpointError
from lighthubert_s3prl.config import ConfigError, get_preset
from lighthubert_s3prl.expert import UpstreamExpert

from .conftest import make_wavs
from .numerics import assert_hidden_states_close, longest_reduction


@pytest.mark.numerics
@pytest.mark.parametrize("ckpt_fixture", ["tiny_ckpt", "tiny_ln_ckpt"])
@pytest.mark.parametrize("implementation", ["compact", "supernet"])
def test_padding_invariance(ckpt_fixture, implementation, request):
    """Each utterance in a padded batch gets exactly what it gets alone, on its valid frames."""
    ckpt = request.getfixturevalue(ckpt_fixture)
    up = UpstreamExpert(str(ckpt), implementation=implementation).eval()
    wavs = make_wavs([16000, 12345, 8000, 5551, 3300], seed=3)
    K = longest_reduction(up.model.cfg, up.subnet)
    with torch.no_grad():
        batch = up(wavs)["hidden_states"]
        for i, w in enumerate(wavs):
            alone = up([w])["hidden_states"]
            T = alone[0].size(1)
            assert batch[0].size(1) >= T
            assert_hidden_states_close([b[i, :T] for b in batch], [a[0] for a in alone], K, msg=f"utt {i}")


def test_reference_padding_mode_depends_on_the_batch(tiny_ckpt):
    """Why 'exact' is our default: the original frame mask and GroupNorm see the padding."""
    up = UpstreamExpert(str(tiny_ckpt), padding_mode="reference").eval()
    wavs = make_wavs([16000, 5551], seed=3)
    with torch.no_grad():
        batch = up(wavs)["hidden_states"][-1]
        alone = up([wavs[1]])["hidden_states"][-1]
    T = alone.size(1)
    assert (batch[1, :T] - alone[0]).abs().max() > 1e-3


def test_hidden_state_count_and_shapes(tiny_ckpt):
    for spec, depth in (("random:small:0", None), (None, 12)):
        up = UpstreamExpert(str(tiny_ckpt), subnet={"embed_dim": 64, "layer_num": 10, "heads_num": 1, "ffn_embed": 200}
                            if spec else None).eval()
        depth = up.subnet.layer_num
        with torch.no_grad():
            hs = up(make_wavs([16000, 8000]))["hidden_states"]
        assert len(hs) == 1 + depth
        assert all(h.shape == (2, 49, up.subnet.embed_dim) for h in hs)
        assert up.get_downsample_rates("hidden_states") == 320
        # padded frames of the first hidden state are zero, as in the original
        assert torch.all(hs[0][1, 25:] == 0)


def test_s3prl_featurizer_consumes_our_hidden_states(tiny_ckpt):
    from s3prl.upstream.interfaces import Featurizer

    up = UpstreamExpert(str(tiny_ckpt)).eval()
    featurizer = Featurizer(up, "hidden_states", upstream_device="cpu")
    assert featurizer.weights.numel() == 13 and featurizer.output_dim == 128
    assert featurizer.downsample_rate == 320
    wavs = make_wavs([16000, 9000])
    with torch.no_grad():
        feats = featurizer(wavs, up(wavs))
    assert [f.shape for f in feats] == [(49, 128), (28, 128)]  # round(len / 320), never padded
    # the new-style API too
    from s3prl.nn import Featurizer as NewFeaturizer

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = up
            self.num_layers = 13
            self.hidden_sizes = [128] * 13
            self.downsample_rates = [320] * 13

    new = NewFeaturizer(Wrapped())
    hs = up(wavs)["hidden_states"]
    out, lens = new(hs, [torch.tensor([49, 28])] * 13)
    assert out.shape == (2, 49, 128)


def test_subnet_config_file(tiny_ckpt, tmp_path):
    cfg = tmp_path / "subnet.yaml"
    cfg.write_text("subnet:\n  embed_dim: 96\n  layer_num: 11\n  heads_num: [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]\n"
                   "  ffn_ratio: 3.0\nimplementation: supernet\n")
    up = hubconf.lighthubert_subnet(ckpt=str(tiny_ckpt), model_config=str(cfg))
    assert up.subnet.embed_dim == 96 and up.subnet.layer_num == 11 and up.subnet.ffn_embed == (288,) * 11
    assert up.options.implementation == "supernet"
    bad = tmp_path / "bad.yaml"
    bad.write_text("subnet: small\nspeed: fast\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['speed'\]"):
        hubconf.lighthubert_subnet(ckpt=str(tiny_ckpt), model_config=str(bad))
    too_wide = tmp_path / "wide.yaml"
    too_wide.write_text("subnet: small\n")  # 384 wide does not fit a 128-wide supernet
    with pytest.raises(ConfigError, match=r"subnet does not fit checkpoint .*'embed_dim'=384 is not allowed; allowed values: 1..128"):
        hubconf.lighthubert_subnet(ckpt=str(tiny_ckpt), model_config=str(too_wide))
    with pytest.raises(ConfigError, match="upstream model config .* does not exist"):
        hubconf.lighthubert_subnet(ckpt=str(tiny_ckpt), model_config=str(tmp_path / "absent.yaml"))
    with pytest.raises(CheckpointError, match="lighthubert_subnet needs a subnet config: pass -g subnet.yaml"):
        hubconf.lighthubert_subnet(ckpt=str(tiny_ckpt))
    with pytest.raises(CheckpointError, match="lighthubert_local needs a checkpoint: pass -k"):
        hubconf.lighthubert_local()
    with pytest.raises(ConfigError, match="padding_mode='sloppy'; allowed values"):
        UpstreamExpert(str(tiny_ckpt), padding_mode="sloppy")


@pytest.mark.numerics
def test_compact_and_supernet_upstreams_agree(tiny_ckpt):
    wavs = make_wavs([16000, 7000])
    outs = []
    for impl in ("compact", "supernet"):
        up = UpstreamExpert(str(tiny_ckpt), subnet={"embed_dim": 64, "layer_num": 10, "heads_num": 1,
                                                    "ffn_embed": [128, 256] * 5}, implementation=impl).eval()
        with torch.no_grad():
            outs.append(up(wavs)["hidden_states"])
    assert_hidden_states_close(outs[0], outs[1], longest_reduction(up.model.cfg, up.subnet))


def test_bf16_inference_runs_close(tiny_ckpt):
    wavs = make_wavs([16000, 7000])
    with torch.no_grad():
        ref = UpstreamExpert(str(tiny_ckpt)).eval()(wavs)["hidden_states"][-1]
        low = UpstreamExpert(str(tiny_ckpt), dtype="bf16").eval()(wavs)["hidden_states"][-1]
    assert low.dtype == torch.float32
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_official_entries_offline_say_where_to_put_the_file(tmp_path, monkeypatch, small_ckpt):
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError) as err:
        hubconf.lighthubert_small()
    msg = str(err.value)
    assert f"Put the file at {tmp_path / 'cache' / 'lighthubert_small.pt'}" in msg and "-k /path/to/lighthubert_small.pt" in msg
    # once the file is in the cache folder, the entry finds it and runs the named subnet
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "lighthubert_base.pt").symlink_to(small_ckpt)
    up = hubconf.lighthubert_base()
    assert up.subnet == get_preset("base")
    up = hubconf.lighthubert_stage1(ckpt=str(small_ckpt))  # -k wins, stage1 = the full model
    assert up.subnet == get_preset("stage1") and up.num_parameters == 94_371_584


def test_launcher_registers_names_in_s3prl_hub():
    import s3prl.hub as hub

    from lighthubert_s3prl.run_downstream import _normalise_distributed_args, register

    names = register()
    assert set(names) >= {"lighthubert_small", "lighthubert_base", "lighthubert_stage1", "lighthubert_local",
                          "lighthubert_subnet"}
    assert hub.lighthubert_small is hubconf.lighthubert_small
    assert _normalise_distributed_args(["--local-rank=1", "-m", "train"]) == ["--local_rank", "1", "-m", "train"]


def test_empty_batch_is_a_clear_error(tiny_ckpt):
    up = UpstreamExpert(str(tiny_ckpt)).eval()
    with pytest.raises(ValueError, match="got an empty list of waveforms"):
        up([])
