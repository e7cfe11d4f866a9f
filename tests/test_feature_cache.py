"""The upstream's feature cache: reused hidden states equal freshly computed ones bit for bit, only unseen
utterances reach the model, and the cache stays out of the way whenever it could be wrong.

The expected hidden states come from an expert without a cache, each utterance in a batch of its own; the
model calls are counted by wrapping ``forward_utterances`` and recording the waveforms it is given.
"""
from __future__ import annotations

import logging

import pytest
import torch

from lighthubert_s3prl.model.config import ConfigError
from lighthubert_s3prl.upstream import feature_cache
from lighthubert_s3prl.upstream.expert import UpstreamExpert
from lighthubert_s3prl.upstream.feature_cache import ENV_CACHE_MB, FeatureCache, waveform_key
from tests.conftest import make_wavs

LENGTHS = [16000, 12345, 8000, 5551, 16000]


@pytest.fixture(scope="module")
def utterances():
    wavs = make_wavs(LENGTHS, seed=5)
    # the last one has the first one's length and other samples: a key on the length alone would mix them up
    wavs[4] = torch.flip(wavs[0], [0])
    return wavs


@pytest.fixture(scope="module")
def alone(tiny_ckpt, utterances, one_thread):
    """Every utterance's hidden states computed in a batch of its own, without a cache."""
    plain = UpstreamExpert(tiny_ckpt, feature_cache_mb=0).eval()
    with torch.no_grad():
        return [[h[0] for h in plain([w])["hidden_states"]] for w in utterances]


def counting(expert: UpstreamExpert) -> list:
    """Record the lengths of the waveforms each model call receives."""
    calls: list = []
    original = expert.model.forward_utterances

    def wrapper(wavs):
        calls.append([len(w) for w in wavs])
        return original(wavs)

    expert.model.forward_utterances = wrapper
    return calls


def assert_batch_matches(hidden, alone, order):
    T = max(alone[i][0].shape[0] for i in order)
    assert len(hidden) == len(alone[0])
    for layer, batch in enumerate(hidden):
        assert batch.shape == (len(order), T, alone[0][layer].shape[-1])
        for row, i in enumerate(order):
            n = alone[i][layer].shape[0]
            assert torch.equal(batch[row, :n], alone[i][layer])
            assert not batch[row, n:].any(), "padded frames must be zero, as without the cache"


def test_cached_states_equal_fresh_ones_and_only_unseen_utterances_are_computed(tiny_ckpt, utterances, alone):
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=64).eval()
    calls = counting(expert)
    with torch.no_grad():
        first = expert([utterances[i] for i in (0, 2)])["hidden_states"]
        mixed = expert([utterances[i] for i in (3, 0, 4, 2, 1)])["hidden_states"]
        again = expert([utterances[i] for i in (4, 1, 3)])
    assert calls == [[LENGTHS[0], LENGTHS[2]], [LENGTHS[3], LENGTHS[4], LENGTHS[1]]]
    assert_batch_matches(first, alone, (0, 2))
    assert_batch_matches(mixed, alone, (3, 0, 4, 2, 1))
    assert_batch_matches(again["hidden_states"], alone, (4, 1, 3))
    assert torch.equal(again["last_hidden_state"], again["hidden_states"][-1])
    cache = expert.feature_cache
    assert (cache.hits, cache.misses, len(cache)) == (2 + 3, 2 + 3, 5)
    frames = sum(a[0].shape[0] for a in alone)
    assert cache.bytes_held == frames * len(alone[0]) * alone[0][0].shape[-1] * 4


def test_changing_a_returned_batch_leaves_the_cache_intact(tiny_ckpt, utterances, alone):
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=64).eval()
    with torch.no_grad():
        for h in expert([utterances[1]])["hidden_states"]:
            h.add_(1.0)
        assert_batch_matches(expert([utterances[1]])["hidden_states"], alone, (1,))


@pytest.mark.parametrize("mode", ["training", "gradients"])
def test_the_cache_is_bypassed_while_the_upstream_could_be_learning(mode, tiny_ckpt, utterances):
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=64)
    expert.train(mode == "training")
    calls = counting(expert)
    batch = [utterances[0], utterances[3]]
    with torch.set_grad_enabled(mode == "gradients"):
        expert(batch)
        expert(batch)
    assert calls == [[LENGTHS[0], LENGTHS[3]]] * 2
    assert len(expert.feature_cache) == 0 and expert.feature_cache.hits == expert.feature_cache.misses == 0


def test_fine_tuning_steps_between_evaluations_empty_the_cache(tiny_ckpt, utterances):
    """s3prl's -f evaluates the upstream frozen between optimiser steps: the next evaluation must see new weights."""
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=64)
    batch = [utterances[0], utterances[3]]
    expert.eval()
    with torch.no_grad():
        before = expert(batch)["hidden_states"]
    expert.train()
    loss = sum(h.pow(2).mean() for h in expert(batch)["hidden_states"])
    loss.backward()
    torch.optim.SGD(expert.parameters(), lr=0.5).step()
    expert.eval()
    fresh = UpstreamExpert(tiny_ckpt, feature_cache_mb=0).eval()
    fresh.load_state_dict(expert.state_dict())
    with torch.no_grad():
        after = expert(batch)["hidden_states"]
        expected = fresh(batch)["hidden_states"]
        again = expert(batch)["hidden_states"]  # unchanged weights: served from the cache again
    assert not torch.allclose(after[-1], before[-1])
    for got, want in zip(after, expected):
        assert torch.equal(got, want)
    assert expert.feature_cache.invalidations == 1 and expert.feature_cache.hits == 2
    assert all(torch.equal(a, b) for a, b in zip(again, after))


def test_a_frozen_cnn_gets_no_gradient_and_the_rest_does(tiny_ckpt, utterances):
    expert = UpstreamExpert(tiny_ckpt, freeze_cnn=True).train()
    sum(h.pow(2).mean() for h in expert([utterances[0]])["hidden_states"]).backward()
    cnn = {id(p) for p in expert.model.feature_extractor.parameters()}
    assert cnn and all(p.grad is None and not p.requires_grad for p in expert.model.feature_extractor.parameters())
    others = [p for p in expert.model.parameters() if id(p) not in cnn]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in others)
    assert expert.model.post_extract_proj.weight.grad is not None


def test_reference_padding_never_uses_the_cache(tiny_ckpt, utterances):
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=64, padding_mode="reference").eval()
    with torch.no_grad():
        expert(utterances[:2])
        expert(utterances[:2])
    assert len(expert.feature_cache) == 0 and expert.feature_cache.misses == 0


def test_a_full_cache_keeps_what_it_holds_and_computes_the_rest(tiny_ckpt, utterances, alone, caplog):
    one_second = sum(h.numel() * 4 for h in alone[0])  # utterance 0 (16,000 samples) alone
    expert = UpstreamExpert(tiny_ckpt, feature_cache_mb=(one_second + 10) / 2**20).eval()
    calls = counting(expert)
    caplog.set_level(logging.WARNING, logger=feature_cache.__name__)
    with torch.no_grad():
        expert([utterances[0], utterances[4]])  # the second does not fit
        hidden = expert([utterances[4], utterances[0]])["hidden_states"]
        expert([utterances[4]])
    assert calls == [[16000, 16000], [16000], [16000]]
    assert_batch_matches(hidden, alone, (4, 0))
    assert len(expert.feature_cache) == 1 and expert.feature_cache.bytes_held == one_second
    warnings = [r.getMessage() for r in caplog.records if r.name == feature_cache.__name__]
    assert len(warnings) == 1 and "feature cache full" in warnings[0] and "feature_cache_mb" in warnings[0]


def test_keys_tell_samples_shapes_and_dtypes_apart():
    wav = torch.linspace(-1, 1, 400)
    assert waveform_key(wav) == waveform_key(wav.clone())
    assert waveform_key(wav) != waveform_key(torch.flip(wav, [0]))
    assert waveform_key(wav) != waveform_key(wav.double())
    assert waveform_key(wav) != waveform_key(wav.reshape(20, 20))
    nudged = wav.clone()
    nudged[200] = torch.nextafter(nudged[200], torch.tensor(2.0))
    assert waveform_key(wav) != waveform_key(nudged)


def test_put_counts_bytes_and_refuses_what_does_not_fit():
    cache = FeatureCache(max_bytes=100)
    states = [torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)]  # 48 + 96 bytes
    assert cache.put(b"a", states[:1]) and cache.bytes_held == 48
    assert not cache.put(b"b", states) and cache.bytes_held == 48 and cache.get(b"b") is None
    assert cache.put(b"a", states) and cache.bytes_held == 48, "a key already held is not stored twice"
    assert cache.put(b"c", [torch.zeros(13)]) and cache.bytes_held == 100
    assert (cache.hits, cache.misses) == (0, 1)
    with pytest.raises(ValueError, match="positive size"):
        FeatureCache(0)


def test_size_from_the_environment_and_the_option_that_overrides_it(tiny_ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE_MB, "2")
    assert UpstreamExpert(tiny_ckpt).feature_cache.max_bytes == 2 * 2**20
    assert UpstreamExpert(tiny_ckpt, feature_cache_mb=0).feature_cache is None
    option_file = tmp_path / "upstream.yaml"
    option_file.write_text("feature_cache_mb: 0.5\n")
    assert UpstreamExpert(tiny_ckpt, model_config=option_file).feature_cache.max_bytes == 2**19
    monkeypatch.setenv(ENV_CACHE_MB, "")
    assert UpstreamExpert(tiny_ckpt).feature_cache is None
    monkeypatch.delenv(ENV_CACHE_MB)
    assert UpstreamExpert(tiny_ckpt).feature_cache is None


@pytest.mark.parametrize("value, message", [("lots", "is not a number"), ("-1", "is negative")])
def test_a_bad_size_in_the_environment_names_the_variable(value, message, tiny_ckpt, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_MB, value)
    with pytest.raises(ConfigError, match=rf"{ENV_CACHE_MB}=.*{message}"):
        UpstreamExpert(tiny_ckpt)


@pytest.mark.parametrize("value", [-1, "big"])
def test_a_bad_size_option_is_refused(value, tiny_ckpt):
    with pytest.raises(ConfigError, match="feature_cache_mb=.*size in MB"):
        UpstreamExpert(tiny_ckpt, feature_cache_mb=value)


def _run_env(argv, monkeypatch, tmp_path, ambient=None):
    from lighthubert_s3prl.superb import runner
    from lighthubert_s3prl.superb.launch import Launcher

    if ambient is None:
        monkeypatch.delenv(ENV_CACHE_MB, raising=False)
    else:
        monkeypatch.setenv(ENV_CACHE_MB, ambient)
    opts = runner.options_from_args(runner.build_parser().parse_args(
        ["-u", "fbank", "--tasks", "ks", "--data", str(tmp_path), "--gpus", "0", *argv]))
    return Launcher(opts, opts.exp_root / "configs").env().get(ENV_CACHE_MB)


@pytest.mark.parametrize("argv, ambient, expected", [
    (["--scale", "mini"], None, "2048"),
    (["--scale", "ci"], None, "2048"),
    ([], None, None),  # full scale: real corpora do not fit; off unless asked for
    (["--scale", "mini"], "100", "100"),  # the user's own setting stands
    ([], "100", "100"),
    (["--scale", "mini", "--feature-cache-mb", "0"], "100", "0"),
    (["--feature-cache-mb", "512.5"], None, "512.5"),
])
def test_the_runner_sizes_the_cache_of_its_s3prl_processes(argv, ambient, expected, monkeypatch, tmp_path):
    assert _run_env(argv, monkeypatch, tmp_path, ambient) == expected


def test_the_runner_refuses_a_negative_cache_size(monkeypatch, tmp_path):
    from lighthubert_s3prl.superb.options import RunnerError

    with pytest.raises(RunnerError, match="--feature-cache-mb -1: give a size in MB"):
        _run_env(["--feature-cache-mb", "-1"], monkeypatch, tmp_path)


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_a_freeze_cnn_that_is_not_a_boolean_is_refused(value, tiny_ckpt):
    with pytest.raises(ConfigError, match=r"freeze_cnn=.*; give true or false"):
        UpstreamExpert(tiny_ckpt, freeze_cnn=value)
