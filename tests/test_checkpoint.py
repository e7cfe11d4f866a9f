"""Checkpoint loading: kinds, layouts, and every error path with its message."""
import io
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import pytest
import torch

from lighthubert_s3prl.model.checkpoint import (
    IGNORED_KEYS,
    CheckpointError,
    build_supernet,
    load_checkpoint,
    save_checkpoint,
    supernet_payload,
    tiny_model_config,
    write_random_checkpoint,
)
from lighthubert_s3prl.model.config import SubnetConfig, get_preset
from lighthubert_s3prl.model.supernet import LightHuBERTSupernet
from lighthubert_s3prl.upstream.expert import prepare_batch

from .conftest import make_wavs
from .numerics import assert_hidden_states_close, longest_reduction


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


def test_our_checkpoint_loads_in_s3prls_reference(tmp_path):
    """Files we write are in the released format: s3prl's own model takes them strictly (key for key, shape
    for shape) and computes what the model that wrote them computes. The comparison is with the in-memory
    model, not with our loader: a key mix-up made on saving and undone by our own loading would cancel out."""
    from s3prl.upstream.lighthubert.lighthubert.lighthubert import LightHuBERT, LightHuBERTConfig

    cfg = tiny_model_config()
    written = LightHuBERTSupernet(cfg).reset_parameters(11).eval()
    path = save_checkpoint(tmp_path / "ours.pt", supernet_payload(written, "hubert_pruner", "small"))
    data = torch.load(path, weights_only=True)
    ref_cfg = LightHuBERTConfig(data["cfg"]["model"])
    ref_cfg.supernet_type = "small"  # as s3prl's expert picks it from cfg['model']['pruner_supernet']
    reference = LightHuBERT(ref_cfg).eval()
    # strict: a missing, extra or renamed key, or a wrong shape, raises (s3prl's expert loads non-strictly)
    reference.load_state_dict({k: v for k, v in data["model"].items() if k not in IGNORED_KEYS}, strict=True)
    subnet = SubnetConfig(96, 11, (1, 2) * 5 + (2,), (192, 384, 288) * 3 + (96, 384))  # mixed per-layer sizes
    reference.set_sample_config(subnet.to_dict())
    wavs = make_wavs([16000, 9000], seed=5)
    padded, padding_mask = prepare_batch(wavs)
    with torch.no_grad():
        expected = reference.extract_features(padded, padding_mask=padding_mask, ret_hs=True)[0]
        got = written(padded, padding_mask, subnet=subnet, padding_mode="reference").hidden_states
    assert len(expected) == len(got) == 12
    assert_hidden_states_close(got, expected, longest_reduction(cfg, subnet))


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


def _central_directory(blob: bytes) -> Iterator[Tuple[int, str]]:
    """(offset, name) of each central-directory entry of a zip archive, read with the zip spec's layout."""
    offset = zipfile.ZipFile(io.BytesIO(blob)).start_dir
    while blob[offset:offset + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", blob[offset + 28:offset + 34])
        yield offset, blob[offset + 46:offset + 46 + name_len].decode()
        offset += 46 + name_len + extra_len + comment_len


def _data_offset(blob: bytes, info: zipfile.ZipInfo) -> int:
    """Where a record's bytes start: after its local header (30 bytes), name and extra field."""
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _flip(blob: bytes, offset: int, mask: int = 0xFF) -> bytes:
    damaged = bytearray(blob)
    damaged[offset] ^= mask
    return bytes(damaged)


def _damage(blob: bytes, where: str) -> bytes:
    """``blob`` with one realistic kind of damage, placed by reading the archive independently of the library."""
    infos = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    pickle_record = next(i for i in infos if i.filename.endswith("/data.pkl"))
    largest = max(infos, key=lambda i: i.file_size)  # a tensor's bytes
    largest_entry = next(o for o, name in _central_directory(blob) if name == largest.filename)
    damage: Dict[str, Callable[[], bytes]] = {
        # torch.load reads the flipped bytes below without complaint: it never checks the zip's CRC-32s
        "tensor data": lambda: _flip(blob, _data_offset(blob, largest) + largest.file_size // 2),
        "pickle record": lambda: _flip(blob, _data_offset(blob, pickle_record) + pickle_record.file_size // 2, 0x01),
        "record header": lambda: _flip(blob, largest.header_offset + 1),  # its local header's signature
        "stored checksum": lambda: _flip(blob, largest_entry + 16),  # the CRC-32 in the central directory
        # the DOS folder attribute in the central directory: torch's zip reader then returns zeros for the
        # tensor, and no CRC covers that field
        "folder attribute": lambda: _flip(blob, largest_entry + 38, 0x10),
        "end record": lambda: _flip(blob, len(blob) - 22),  # the end-of-central-directory signature
        "last byte cut": lambda: blob[:-1],
        "half cut": lambda: blob[: len(blob) // 2],
        "zeroed block": lambda: blob[: len(blob) // 3] + bytes(4096) + blob[len(blob) // 3 + 4096:],
    }
    return damage[where]()


DAMAGE = ["tensor data", "pickle record", "record header", "stored checksum", "folder attribute", "end record",
          "last byte cut", "half cut", "zeroed block"]


@pytest.mark.parametrize("where", DAMAGE)
def test_truncated_and_corrupted(tiny_ckpt, tmp_path, where):
    """Every damaged file is refused with an error that names the file and the fix; none loads silently."""
    blob = Path(tiny_ckpt).read_bytes()
    damaged = _damage(blob, where)
    assert damaged != blob
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(damaged)
    with pytest.raises(CheckpointError,
                       match=rf"^{re.escape(str(bad))} is truncated or corrupted .*; download or write it again$"):
        load_checkpoint(bad)


def test_undamaged_archive_loads_exactly(tiny_ckpt, tmp_path):
    """The integrity check refuses damage only: an intact copy loads with every tensor bit for bit."""
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(tiny_ckpt).read_bytes())
    loaded = load_checkpoint(copy).state_dict
    raw = torch.load(tiny_ckpt, weights_only=True)["model"]
    assert loaded.keys() == raw.keys() and all(torch.equal(loaded[k], raw[k]) for k in raw)


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
