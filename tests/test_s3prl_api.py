"""s3prl's Python API (``S3PRLUpstream``, ``Featurizer``) builds our upstream once the package is imported.

Each case runs in a fresh interpreter: whether s3prl's hub holds our entries depends on what was imported
before, in which order, and that is exactly what is under test. The hidden states are compared with our
``UpstreamExpert`` built directly, and the featurizer's output with a weighted sum computed here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the subnet asked for through extra_conf: 64 wide, 10 layers, uniform 1 head and FFN 192 (not the checkpoint's own)
SUBNET = {"embed_dim": 64, "layer_num": 10, "heads_num": 1, "ffn_embed": 192}

_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    order, ckpt, subnet = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if order == "s3prl_first":
        from s3prl.nn import S3PRLUpstream, Featurizer
        import lighthubert_s3prl
    else:
        import lighthubert_s3prl
        from s3prl.nn import S3PRLUpstream, Featurizer
    import s3prl.hub as hub
    report = {"entry_module": hub.lighthubert_local.__module__}
    if order == "opted_out":
        report["names"] = lighthubert_s3prl.register()
        report["again"] = lighthubert_s3prl.register()
        report["entry_module_after_register"] = hub.lighthubert_local.__module__
    from lighthubert_s3prl.upstream.expert import UpstreamExpert

    gen = torch.Generator().manual_seed(0)
    lengths = [16000, 11000, 7321]
    wavs = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    upstream = S3PRLUpstream("lighthubert_local", path_or_url=ckpt, extra_conf={"subnet": subnet}).eval()
    report["expert"] = type(upstream.upstream).__module__ + "." + type(upstream.upstream).__name__
    featurizer = Featurizer(upstream)
    with torch.no_grad():
        featurizer.weights.copy_(torch.linspace(-1.0, 2.0, featurizer.weights.numel()))
        states, state_lengths = upstream(padded, torch.tensor(lengths))
        mixed, _ = featurizer(states, state_lengths)
        direct = UpstreamExpert(ckpt, subnet=subnet).eval()([w.clone() for w in wavs])["hidden_states"]
        weights = torch.softmax(featurizer.weights, 0)
        expected_mix = sum(w * h for w, h in zip(weights, direct))
    frames = [int(n) for n in (torch.tensor(lengths) - 400) // 320 + 1]
    report["layers"] = [len(states), len(direct)]
    report["widths"] = sorted({h.shape[-1] for h in states})
    report["state_diff"] = max(float((a[i, :n] - b[i, :n]).abs().max())
                               for a, b in zip(states, direct) for i, n in enumerate(frames))
    report["mix_diff"] = max(float((mixed[i, :n] - expected_mix[i, :n]).abs().max()) for i, n in enumerate(frames))
    report["mix_scale"] = float(expected_mix.abs().max())
    print("REPORT " + json.dumps(report))
""")


def _run(order: str, ckpt: Path, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LIGHTHUBERT_S3PRL_NO_AUTO_REGISTER"}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, order, str(ckpt), json.dumps(SUBNET)], env=env,
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.parametrize("order", ["package_first", "s3prl_first"])
def test_s3prl_upstream_and_featurizer_run_our_expert_after_import(order, tiny_ckpt):
    report = _run(order, tiny_ckpt, {})
    assert report["entry_module"] == "lighthubert_s3prl.upstream.hubconf"
    assert report["expert"] == "lighthubert_s3prl.upstream.expert.UpstreamExpert"
    assert report["layers"] == [11, 11] and report["widths"] == [SUBNET["embed_dim"]]
    assert report["state_diff"] <= 1e-5
    assert report["mix_diff"] <= 1e-5 * max(1.0, report["mix_scale"])


def test_opting_out_leaves_s3prl_alone_until_register_is_called(tiny_ckpt):
    report = _run("opted_out", tiny_ckpt, {"LIGHTHUBERT_S3PRL_NO_AUTO_REGISTER": "1"})
    assert report["entry_module"].startswith("s3prl.upstream.lighthubert")  # s3prl's own, untouched
    assert report["names"] == report["again"]  # idempotent
    assert {"lighthubert_small", "lighthubert_base", "lighthubert_local", "lighthubert_subnet"} <= set(report["names"])
    assert report["entry_module_after_register"] == "lighthubert_s3prl.upstream.hubconf"
    assert report["expert"] == "lighthubert_s3prl.upstream.expert.UpstreamExpert"
    assert report["state_diff"] <= 1e-5


def test_register_into_a_given_module_sets_every_entry_once():
    import types

    from lighthubert_s3prl import register
    from lighthubert_s3prl.upstream import hubconf

    hub = types.ModuleType("fake_hub")
    names = register(hub)
    assert names == list(hubconf.ENTRIES)
    assert all(getattr(hub, name) is hubconf.ENTRIES[name] for name in names)
    assert register(hub) == names
