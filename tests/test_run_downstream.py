"""s3prl's own run_downstream through our launcher: -u names work without editing s3prl."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .launch_small_example import example_config



LAUNCHER = Path(__file__).with_name("launch_small_example.py")


def _launch(args, cwd):
    cmd = [sys.executable, str(LAUNCHER), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.parametrize("entry", ["lighthubert_local", "lighthubert_subnet"])
def test_example_downstream_trains_and_evaluates(entry, tiny_ckpt, tmp_path):
    expdir = tmp_path / "exp"
    config = example_config(tmp_path / "example.yaml", steps=4)
    args = ["-m", "train", "-u", entry, "-k", str(tiny_ckpt), "-d", "example", "-c", str(config),
            "-p", str(expdir), "--device", "cpu"]
    if entry == "lighthubert_subnet":
        subnet = tmp_path / "subnet.yaml"
        subnet.write_text("subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_ratio: 2.0}\n")
        args += ["-g", str(subnet)]
    _launch(args, tmp_path)
    ckpts = sorted(expdir.glob("states-*.ckpt"))
    assert [c.name for c in ckpts] == ["states-2.ckpt", "states-4.ckpt"]
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert state["Step"] == 4 and state["Args"].upstream == entry
    # the featurizer learned a weight per hidden state: 1 + layer_num of the chosen subnet
    n_layers = 10 if entry == "lighthubert_subnet" else 12
    assert state["Featurizer"]["weights"].numel() == 1 + n_layers
    # -e needs argparse.Namespace unpickling, which torch>=2.6 refuses by default; the launcher allows it
    _launch(["-m", "evaluate", "-e", str(ckpts[-1]), "-t", "dev", "--device", "cpu"], tmp_path)


def test_fine_tuning_flag_reaches_s3prl_and_the_upstream_is_trained(tiny_ckpt, tmp_path):
    """``-f`` is s3prl's own flag: through the launcher it trains the upstream, saved under 'Upstream'."""
    from lighthubert_s3prl.upstream.expert import UpstreamExpert

    expdir = tmp_path / "exp"
    config = example_config(tmp_path / "example.yaml", steps=2)
    _launch(["-m", "train", "-u", "lighthubert_local", "-k", str(tiny_ckpt), "-d", "example", "-c", str(config),
             "-p", str(expdir), "--device", "cpu", "-f"], tmp_path)
    state = torch.load(expdir / "states-2.ckpt", map_location="cpu", weights_only=False)
    assert state["Args"].upstream_trainable is True
    initial = UpstreamExpert(str(tiny_ckpt)).state_dict()
    saved = state["Upstream"]
    assert set(saved) == set(initial)
    moved = [k for k in initial if not initial[k].equal(saved[k])]
    assert "model.feature_extractor.conv_layers.0.0.weight" in moved and "model.encoder.layers.11.fc2.weight" in moved
