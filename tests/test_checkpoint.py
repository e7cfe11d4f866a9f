"""Checkpoint loading: kinds, layouts, and every error path with its message."""
import os
from pathlib import Path

import pytest
import torch

from lighthubert_s3prl.checkpoint import (
    CheckpointError,
    build_supernet,
    load_checkpoint,
    save_checkpoint,
    supernet_payload,
    tiny_model_config,
    write_random_checkpoint,
)
from lighthubert_s3prl.config import get_preset
from lighthubert_s3prl.supernet import LightHuBERTSupernet


def test_released_layout_keys(small_ckpt):
    data = torch.load(small_ckpt, weights_only=True)
    sd = data["model"]
    assert data["cfg"]["model"]["_name"] == "hubert_pruner"
    assert data["cfg"]["model"]["pruner_supernet"].lower().endswith("small.yaml")
    assert sd["feature_extractor.conv_layers.0.0.weight"].shape == (512, 1, 10)
    assert sd["feature_extractor.conv_layers.0.2.weight"].shape == (512,)
    assert sd["encoder.pos_conv.0.weight_g"].shape == (1, 1, 128)
    assert sd["encoder.pos_conv.0.weight_v"].shape == (768, 48, 128)
    assert sd["encoder.layers.11.fc1.weight"].shape == (3072, 768)
    assert sd["layer_pred_heads.11.weight"].shape == (768, 768)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert {"label_embs_concat", "final_proj.weight", "mask_emb"} <= set(sd)


def test_kinds_pick_their_released_subnet(tmp_path):
    for kind, preset, name in (("small", "small", "hubert_pruner"), ("base", "base", "hubert_pruner"),
                               ("stage1", "stage1", "student_hubert")):
        path = write_random_checkpoint(tmp_path / f"{kind}.pt", kind, seed=0, with_released_extras=False)
        ck = load_checkpoint(path)
        assert ck.kind == name and ck.default_subnet == get_preset(preset)
        path.unlink()


def test_layer_norm_layout_is_recognised(tiny_ln_ckpt):
    sd = torch.load(tiny_ln_ckpt, weights_only=True)["model"]
    assert "feature_extractor.conv_layers.6.2.1.weight" in sd
    ck = load_checkpoint(tiny_ln_ckpt)
    assert ck.model_cfg.extractor_mode == "layer_norm"
    # a cfg that lies about the layout is corrected from the keys
    data = torch.load(tiny_ln_ckpt, weights_only=True)
    data["cfg"]["model"]["extractor_mode"] = "default"
    fixed = tmp = Path(str(tiny_ln_ckpt) + ".lying.pt")
    torch.save(data, tmp)
    assert load_checkpoint(fixed).model_cfg.extractor_mode == "layer_norm"
    tmp.unlink()


def test_our_checkpoint_loads_in_s3prls_reference(tiny_ckpt):
    """Files we write are in the released format: s3prl's own expert loads them (strictly, key for key)."""
    from s3prl.upstream.lighthubert.lighthubert.lighthubert import LightHuBERT, LightHuBERTConfig

    data = torch.load(tiny_ckpt, weights_only=True)
    cfg = LightHuBERTConfig(data["cfg"]["model"])
    ours = {k for k in data["model"] if k not in ("label_embs_concat", "final_proj.weight", "final_proj.bias")}
    # the reference's search spaces are 256+ wide, so compare key sets on the standard layout only
    standard = LightHuBERT(LightHuBERTConfig({**data["cfg"]["model"], **{
        k: v for k, v in LightHuBERTConfig().__dict__.items() if k.startswith(("encoder_", "conv_", "teacher"))}}))
    assert ours == set(standard.state_dict())
    assert cfg.extractor_mode == "default"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist; check the path \(pass it with -k / --ckpt\)"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_not_a_lighthubert_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
    with pytest.raises(CheckpointError, match=r"expected top-level keys 'cfg' and 'model', found \['state_dict'\]"):
        load_checkpoint(p)
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": {}}, p)
    with pytest.raises(CheckpointError, match=r"cfg\['model'\]\['_name'\] is 'hubert', expected one of"):
        load_checkpoint(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(p)
    for junk in (b"hello, I am text", b"x", b"\x80\x02garbage"):
        p.write_bytes(junk)
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(p)


def test_truncated_and_corrupted(tiny_ckpt, tmp_path):
    blob = Path(tiny_ckpt).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted .* download or write it again"):
        load_checkpoint(cut)
    flipped = bytearray(blob)
    flipped[len(blob) // 3: len(blob) // 3 + 4096] = os.urandom(4096)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(flipped))
    try:
        load_checkpoint(bad)
    except CheckpointError as err:  # a damaged archive or record is reported, not crashed on
        assert "corrupted" in str(err) or "mis-shaped" in str(err) or "lacks" in str(err)


def test_missing_and_misshaped_weights(tiny_ckpt, tmp_path):
    data = torch.load(tiny_ckpt, weights_only=True)
    del data["model"]["encoder.layers.3.fc1.weight"]
    p = tmp_path / "missing.pt"
    torch.save(data, p)
    with pytest.raises(CheckpointError, match=r"lacks 1 weight\(s\) the model needs: encoder.layers.3.fc1.weight"):
        load_checkpoint(p)
    data = torch.load(tiny_ckpt, weights_only=True)
    data["model"]["encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 128)
    torch.save(data, p)
    with pytest.raises(CheckpointError, match=r"encoder.layers.0.self_attn.q_proj.weight has shape \(64, 128\), expected \(128, 128\)"):
        load_checkpoint(p)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_code_executing_pickle_is_refused(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    p = tmp_path / "evil.pt"
    torch.save({"cfg": {"model": {"_name": "hubert_pruner"}}, "model": {}, "payload": _Exploit()}, p)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    assert "refusing to load" in str(err.value) and "Nothing in the file was executed" in str(err.value)
    assert "system" in str(err.value)  # names the global it wanted
    assert not Path(MARKER).exists()


def test_conv_layers_string_is_never_evaluated(tiny_ckpt, tmp_path):
    data = torch.load(tiny_ckpt, weights_only=True)
    marker = tmp_path / "evaluated"
    data["cfg"]["model"]["conv_feature_layers"] = f"__import__('os').system('touch {marker}')"
    p = tmp_path / "evalme.pt"
    torch.save(data, p)
    with pytest.raises(CheckpointError, match="conv_feature_layers"):
        load_checkpoint(p)
    assert not marker.exists()


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "ck.pt"

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(target, {"x": Boom()})
    assert not target.exists() and not list(tmp_path.glob(".ck.pt*"))


def test_supernet_round_trip(tmp_path):
    model = LightHuBERTSupernet(tiny_model_config()).reset_parameters(5)
    p = save_checkpoint(tmp_path / "rt.pt", supernet_payload(model, "student_hubert"))
    again = build_supernet(load_checkpoint(p))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
