"""The compact (dense) model against the supernet it is cut from.

Real 768-wide shapes (the seeded ``lighthubert_small.pt``) for the presets and a few random subnets; the
tiny architecture for many random subnets. fp32 must agree within float32 rounding (``tests/numerics.py``
derives the tolerance from the activations' magnitude, the reduction length and the depth, so it holds on
any CPU); bf16 within a stated relative error of the last hidden state.
"""
import gc
import random
import weakref

import pytest
import torch

from lighthubert_s3prl.model.checkpoint import CheckpointError, build_supernet, load_checkpoint, save_checkpoint, tiny_model_config
from lighthubert_s3prl.model.compact import (
    CompactLightHuBERT,
    build_compact,
    compact_payload,
    slice_state_dict,
    slice_supernet_state,
)
from lighthubert_s3prl.model.config import ConfigError, SubnetConfig, count_parameters, get_preset, resolve_subnet
from lighthubert_s3prl.model.fast_cnn import FoldedConvFeatureExtractor
from lighthubert_s3prl.model.modules import ConvFeatureExtractor, conv_output_lengths
from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
from lighthubert_s3prl.upstream.expert import prepare_batch

from .conftest import make_wavs
from .numerics import assert_float32_close, assert_hidden_states_close, longest_reduction

PRESETS = ["small", "base", "stage1", "small-max", "small-min", "base-max", "base-min"]
# seeds of the small space giving depths 11 and 10 (random:small:0 -> 11 layers, random:small:2 -> 10)
REAL_RANDOM = ["random:small:0", "random:small:2", "random:base:4"]
LENGTHS = [16000, 11111, 6000]  # a padded batch with odd and even frame counts
BF16_MAX_REL_ERR = 0.03  # ||h_bf16 - h_fp32|| / ||h_fp32|| of the last hidden state, valid frames


pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]


def _valid(hs, mask):
    """Zero the padded frames so only valid frames are compared."""
    return [h if mask is None else h.masked_fill(mask[..., None], 0.0) for h in hs]


@pytest.fixture(scope="module")
def real_ckpt(small_ckpt):
    return load_checkpoint(small_ckpt)


@pytest.fixture(scope="module")
def real_supernet(real_ckpt):
    return build_supernet(real_ckpt).eval()


@pytest.fixture(scope="module")
def real_batch():
    wavs = make_wavs(LENGTHS, seed=11)
    padded, mask = prepare_batch(wavs)
    return [torch.nn.functional.layer_norm(w, w.shape) for w in wavs], padded, mask


def test_real_random_specs_cover_depths_10_and_11():
    assert {resolve_subnet(s).layer_num for s in REAL_RANDOM} >= {10, 11}


@pytest.mark.parametrize("spec", PRESETS + REAL_RANDOM)
def test_compact_matches_supernet_real_shapes(spec, real_supernet, real_ckpt, real_batch):
    subnet = resolve_subnet(spec)
    wavs, padded, mask = real_batch
    compact = CompactLightHuBERT.from_checkpoint(real_ckpt, subnet)
    with torch.no_grad():
        sliced = real_supernet(padded, mask, subnet=subnet)
        dense = compact(padded, mask)
        alone = compact.forward_utterances(wavs)
    assert len(sliced.hidden_states) == len(dense.hidden_states) == len(alone.hidden_states) == 1 + subnet.layer_num
    assert torch.equal(alone.padding_mask, sliced.padding_mask)
    assert all(h.shape == (3, 49, subnet.embed_dim) for h in sliced.hidden_states + dense.hidden_states + alone.hidden_states)
    K = longest_reduction(real_ckpt.model_cfg, subnet)
    # the batched dense forward mirrors the supernet's, padded frames included
    assert_hidden_states_close(dense.hidden_states, sliced.hidden_states, K, msg=f"{spec} forward")
    # utterance by utterance: the same on every valid frame, zero on padded ones
    assert_hidden_states_close(_valid(alone.hidden_states, alone.padding_mask),
                               _valid(sliced.hidden_states, sliced.padding_mask), K, msg=f"{spec} forward_utterances")
    assert torch.all(alone.hidden_states[-1][2, 18:] == 0)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
@pytest.mark.parametrize("chunk_frames", [0, 1, 7, 16, 1000])
def test_chunked_folded_cnn_equals_the_plain_cnn(mode, chunk_frames):
    """Folding and chunking change no feature: padded batches, own-frame statistics, ragged last chunks."""
    cfg = tiny_model_config(extractor_mode=mode)
    supernet = LightHuBERTSupernet(cfg).reset_parameters(3).eval()
    fast = CompactLightHuBERT.from_supernet(supernet).feature_extractor
    assert isinstance(fast, FoldedConvFeatureExtractor)
    fast.chunk_frames = chunk_frames
    padded, mask = prepare_batch(make_wavs([16000, 11111, 6000, 719], seed=5))
    lengths = (~mask).sum(-1)
    frames = conv_output_lengths(lengths, cfg.conv_layers)
    K = longest_reduction(cfg)  # the CNN alone
    with torch.no_grad():
        for lens in (None, lengths):
            want = ConvFeatureExtractor.forward(fast, padded, lens)
            got = fast(padded, lens)
            assert got.shape == want.shape == (4, cfg.conv_layers[-1][0], 49)
            for b, n in enumerate(frames.tolist()):  # padded frames depend on the chunking only in exact mode
                limit = 49 if lens is None else n
                assert_float32_close(got[b, :, :limit], want[b, :, :limit], K)
            for b in range(4):  # one utterance alone, as forward_utterances runs it
                n = int(lengths[b])
                assert_float32_close(fast(padded[b:b + 1, :n]), ConvFeatureExtractor.forward(fast, padded[b:b + 1, :n]), K)


def test_supernet_trains_through_the_plain_cnn_and_infers_through_the_folded_one():
    cfg = tiny_model_config()
    supernet = LightHuBERTSupernet(cfg).reset_parameters(4)
    cnn = supernet.feature_extractor
    wav = make_wavs([16000], seed=6)[0][None]
    plain = ConvFeatureExtractor.forward(cnn, wav)
    out = cnn(wav)  # training mode, gradients on: the reference CNN itself, bit for bit
    assert torch.equal(out, plain)
    out.sum().backward()
    assert cnn.conv_layers[0][2].weight.grad is not None  # the GroupNorm is trained as a module of its own
    with torch.no_grad():
        folded = cnn(wav)
    assert not torch.equal(folded, plain)  # a different computation ...
    assert_float32_close(folded, plain, longest_reduction(cfg))  # ... of the same features


def _tiny_random_subnet(rng: random.Random, cfg, layer_num: int) -> SubnetConfig:
    E = rng.choice([32, 64, 96, 128])
    heads = [rng.randint(1, cfg.encoder_attention_heads) for _ in range(layer_num)]
    ffn = [rng.randint(1, cfg.ffn_chunks * E) for _ in range(layer_num)]  # any width, not just chunk multiples
    return SubnetConfig(E, layer_num, tuple(heads), tuple(ffn))


TINY_CASES = [(mode, lnf, seed) for mode, lnf in (("default", False), ("layer_norm", False), ("default", True))
              for seed in range(4)]


@pytest.mark.parametrize("mode,layer_norm_first,seed", TINY_CASES)
def test_compact_matches_supernet_tiny_random_subnets(mode, layer_norm_first, seed):
    cfg = tiny_model_config(extractor_mode=mode, layer_norm_first=layer_norm_first)
    supernet = LightHuBERTSupernet(cfg).reset_parameters(seed).eval()
    rng = random.Random(seed)
    wavs = make_wavs([8000, 5551, 3300], seed=seed)
    padded, mask = prepare_batch(wavs)
    wavs = [torch.nn.functional.layer_norm(w, w.shape) for w in wavs]
    for layer_num in (10, 11, rng.choice([6, 7, 8, 9, 12])):
        subnet = _tiny_random_subnet(rng, cfg, layer_num)
        compact = CompactLightHuBERT.from_supernet(supernet, subnet)
        K = longest_reduction(cfg, subnet)
        with torch.no_grad():
            for padding_mode in ("exact", "reference"):
                want = supernet(padded, mask, subnet=subnet, padding_mode=padding_mode).hidden_states
                got = compact(padded, mask, padding_mode=padding_mode).hidden_states
                assert_hidden_states_close(got, want, K, msg=f"{subnet} {padding_mode}")
            sliced = supernet(padded, mask, subnet=subnet)
            alone = compact.forward_utterances(wavs)
        assert len(alone.hidden_states) == 1 + layer_num
        assert_hidden_states_close(alone.hidden_states, _valid(sliced.hidden_states, sliced.padding_mask), K,
                                   msg=f"{subnet} forward_utterances")


def test_slicing_from_state_dict_equals_slicing_the_module(real_supernet, real_ckpt):
    for spec in ("small", "random:small:2"):
        subnet = resolve_subnet(spec)
        a = slice_state_dict(real_supernet, subnet)
        b = slice_supernet_state(real_ckpt.state_dict, real_ckpt.model_cfg, subnet)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
            assert b[k].is_contiguous()


def test_compact_does_not_keep_the_supernet_alive():
    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(0)
    compact = CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 200, 10))
    # no compact weight shares storage with the supernet (a view would pin the full tensor)
    storages = {p.untyped_storage().data_ptr() for p in supernet.parameters()}
    assert not storages & {p.untyped_storage().data_ptr() for p in compact.parameters()}
    assert all(p.is_contiguous() for p in compact.parameters())
    ref = weakref.ref(supernet)
    del supernet
    gc.collect()
    assert ref() is None


def test_compact_parameter_count_matches_the_formula():
    for name in PRESETS:
        subnet = get_preset(name)
        with torch.device("meta"):
            model = CompactLightHuBERT(LightHuBERTSupernet().cfg, subnet)
        stored = sum(p.numel() for p in model.parameters())
        # the formula counts mask_emb at its full 768 (as the authors do); the compact model keeps E of it
        assert stored == count_parameters(subnet) - (768 - subnet.embed_dim), name


def test_bf16_close_to_fp32_real_shapes(real_ckpt, real_batch):
    wavs = real_batch[0]
    compact = CompactLightHuBERT.from_checkpoint(real_ckpt, get_preset("small"))
    with torch.no_grad():
        ref = compact.forward_utterances(wavs)
        low = compact.to(torch.bfloat16).forward_utterances(wavs)
    assert low.hidden_states[-1].dtype == torch.bfloat16
    mask = ref.padding_mask[..., None]
    a = ref.hidden_states[-1].masked_fill(mask, 0)
    b = low.hidden_states[-1].float().masked_fill(mask, 0)
    rel = float((b - a).norm() / a.norm())
    assert rel < BF16_MAX_REL_ERR, rel


def test_fp16_on_cpu_warns_once_and_runs():
    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(0)
    compact = CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 128, 10)).eval()
    compact.to(torch.float16)
    wavs = make_wavs([4000, 3000])
    with pytest.warns(RuntimeWarning, match="dtype float16 on CPU.*Use dtype float32"):
        with torch.no_grad():
            out = compact.forward_utterances(wavs)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            compact.forward_utterances(wavs)  # warned once per model


def test_compact_checkpoint_round_trip(tmp_path):
    cfg = tiny_model_config()
    supernet = LightHuBERTSupernet(cfg).reset_parameters(1)
    subnet = SubnetConfig(96, 11, (1, 2) * 5 + (2,), tuple(range(100, 210, 10)))
    compact = CompactLightHuBERT.from_supernet(supernet, subnet).eval()
    wavs = make_wavs([6000, 4321])
    with torch.no_grad():
        want = compact.forward_utterances(wavs).hidden_states
    for storage, tol in ((None, 0.0), (torch.bfloat16, None)):
        path = save_checkpoint(tmp_path / f"c_{storage}.pt", compact_payload(compact, "x.pt", dtype=storage))
        raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
        loaded = load_checkpoint(path)
        assert loaded.kind == "compact" and loaded.default_subnet == subnet
        model = build_compact(loaded)
        assert model.dtype == torch.float32 and not model.training
        if storage is None:
            with torch.no_grad():
                got = model.forward_utterances(wavs).hidden_states
            for w, g in zip(want, got):
                assert torch.equal(w, g)
        else:
            assert raw["storage_dtype"] == "bfloat16"
            assert all(t.dtype == torch.bfloat16 for t in raw["model"].values())
            ref = compact.state_dict()
            for k, v in model.state_dict().items():
                assert torch.equal(v, ref[k].to(torch.bfloat16).float()), k


def test_broken_compact_checkpoints_are_refused_with_a_reason(tmp_path):
    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(0)
    compact = CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 128, 10))
    payload = compact_payload(compact)
    save_checkpoint(tmp_path / "v.pt", {**payload, "version": 99})
    with pytest.raises(CheckpointError, match="compact format version 99 is not supported.*export it again"):
        load_checkpoint(tmp_path / "v.pt")
    bad = dict(payload["model"])
    bad["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    save_checkpoint(tmp_path / "s.pt", {**payload, "model": bad})
    with pytest.raises(CheckpointError, match=r"weights do not match its subnet .*encoder\.layers\.0\.fc1\.weight"):
        load_checkpoint(tmp_path / "s.pt")
    save_checkpoint(tmp_path / "c.pt", {**payload, "subnet": {"embed_dim": 64}})
    with pytest.raises(CheckpointError, match="broken compact checkpoint config"):
        load_checkpoint(tmp_path / "c.pt")


def test_compact_refuses_other_subnets_and_bad_input():
    supernet = LightHuBERTSupernet(tiny_model_config()).reset_parameters(0)
    compact = CompactLightHuBERT.from_supernet(supernet, SubnetConfig.uniform(64, 1, 128, 10)).eval()
    with pytest.raises(ConfigError, match="this compact model holds only the subnet embed_dim=64 .* load the supernet"):
        compact(torch.zeros(1, 4000), subnet=SubnetConfig.uniform(32, 1, 64, 10))
    with pytest.raises(ValueError, match="needs at least one waveform"):
        compact.forward_utterances([])
    with pytest.raises(ValueError, match=r"waveform 0 has shape \(1, 4000\); expected a 1-D tensor"):
        compact.forward_utterances([torch.zeros(1, 4000)])
    with pytest.raises(ValueError, match=r"shorter than the CNN's receptive field \(400 samples\)"):
        compact.forward_utterances([torch.zeros(300)])
    with torch.no_grad():
        out = compact.forward_utterances([torch.randn(4000), torch.randn(300)])  # one too short: all padding
    assert out.padding_mask[1].all() and torch.all(out.hidden_states[-1][1] == 0)
