"""The s3prl upstream: padding, featurizer, hub entries and options."""
from typing import Any, Callable, Dict, Set, Tuple

import pytest
import torch

from lighthubert_s3prl.model.checkpoint import CheckpointError
from lighthubert_s3prl.model.config import ConfigError, get_preset
from lighthubert_s3prl.upstream import hubconf
from lighthubert_s3prl.upstream.expert import UpstreamExpert

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


@pytest.mark.parametrize("implementation", ["compact", "supernet"])
@pytest.mark.parametrize("subnet,states,width", [
    ({"embed_dim": 64, "layer_num": 10, "heads_num": 1, "ffn_embed": 200}, 11, 64),  # CNN features + 10 layers
    (None, 13, 128),  # the tiny checkpoint's own subnet: all 12 layers of the 128-wide supernet
])
def test_hidden_state_count_and_shapes(tiny_ckpt, implementation, subnet, states, width):
    up = UpstreamExpert(str(tiny_ckpt), subnet=subnet, implementation=implementation).eval()
    with torch.no_grad():
        hs = up(make_wavs([16000, 8000]))["hidden_states"]
    assert len(hs) == states
    # the tiny CNN (kernel/stride 10/5, then 3/2 four times, then 2/2 twice) turns 16000 samples into
    # 3199, 1599, 799, 399, 199, 99, 49 frames and 8000 into 1599, 799, 399, 199, 99, 49, 24
    assert all(h.shape == (2, 49, width) for h in hs)
    assert up.get_downsample_rates("hidden_states") == 320
    # exact padding: the second utterance's 24 frames carry features, its padded frames are zero
    for h in hs:
        assert torch.all(h[1, 24:] == 0) and bool(torch.all(h[1, :24].abs().sum(-1) > 0))


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


def activation_dtypes(model: torch.nn.Module, run: Callable[[], Any]) -> Tuple[Set[torch.dtype], int]:
    """The floating dtypes every submodule of ``model`` took in and gave out while ``run()`` ran (forward hooks,
    so the CNN, positional conv, attention and each encoder layer are seen inside), and how many calls."""
    seen: Set[torch.dtype] = set()
    calls = 0

    def record(module: torch.nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        nonlocal calls
        calls += 1
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        seen.update(t.dtype for t in (*inputs, *outputs) if isinstance(t, torch.Tensor) and t.is_floating_point())

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen, calls


@pytest.mark.filterwarnings("ignore:dtype .* on CPU:RuntimeWarning")  # the slow-dtype warning; not tested here
@pytest.mark.parametrize("dtype,expected,via_file,implementation", [
    ("bf16", torch.bfloat16, False, "compact"), ("bfloat16", torch.bfloat16, True, "supernet"),
    ("float16", torch.float16, False, "compact"),
])
def test_reduced_precision_dtype_is_what_the_model_computes_in(tiny_ckpt, tmp_path, implementation, dtype,
                                                              expected, via_file):
    """The dtype option changes the dtype of every activation inside the model, not only the weights or the
    output; hidden states come back as float32 and stay close to the float32 run, but not identical to it."""
    wavs = make_wavs([16000, 7000])
    subnet = {"embed_dim": 96, "layer_num": 10, "heads_num": 2, "ffn_embed": 288}
    ref = UpstreamExpert(str(tiny_ckpt), subnet=subnet, implementation=implementation).eval()
    want: Dict[str, Any] = {}
    ref_dtypes, _ = activation_dtypes(ref.model, lambda: want.update(ref(wavs)))
    assert ref_dtypes == {torch.float32}
    if via_file:
        options = tmp_path / "options.yaml"
        options.write_text(f"subnet: {subnet}\nimplementation: {implementation}\ndtype: {dtype}\n")
        low = UpstreamExpert(str(tiny_ckpt), model_config=str(options)).eval()
    else:
        low = UpstreamExpert(str(tiny_ckpt), subnet=subnet, implementation=implementation, dtype=dtype).eval()
    outputs: Dict[str, Any] = {}
    seen, calls = activation_dtypes(low.model, lambda: outputs.update(low(wavs)))
    assert calls >= 2 * subnet["layer_num"] and seen == {expected}
    got, ref_states = outputs["hidden_states"], want["hidden_states"]
    assert len(got) == len(ref_states) == 11 and all(h.dtype == torch.float32 for h in got)
    rel = float((got[-1] - ref_states[-1]).norm() / ref_states[-1].norm())
    # bf16 keeps 8 significant bits (relative rounding 2^-9), fp16 11 bits: the last layer differs by about
    # that much times a small factor, and by far more than float32 rounding (~1e-7)
    assert 1e-4 < rel < 0.05, rel


def test_the_cache_folder_follows_our_variable_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIGHTHUBERT_S3PRL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hubconf.cache_dir() == tmp_path / "home" / ".cache" / "lighthubert_s3prl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hubconf.cache_dir() == tmp_path / "xdg" / "lighthubert_s3prl"
    monkeypatch.setenv("LIGHTHUBERT_S3PRL_CACHE", str(tmp_path / "ours"))
    assert hubconf.cache_dir() == tmp_path / "ours"


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

    from lighthubert_s3prl.upstream.run_downstream import _normalise_distributed_args, register

    names = register()
    assert set(names) >= {"lighthubert_small", "lighthubert_base", "lighthubert_stage1", "lighthubert_local",
                          "lighthubert_subnet"}
    assert hub.lighthubert_small is hubconf.lighthubert_small
    assert _normalise_distributed_args(["--local-rank=1", "-m", "train"]) == ["--local_rank", "1", "-m", "train"]


def test_empty_batch_is_a_clear_error(tiny_ckpt):
    up = UpstreamExpert(str(tiny_ckpt)).eval()
    with pytest.raises(ValueError, match="got an empty list of waveforms"):
        up([])
