"""EKD students started from a HuBERT teacher (DistilHuBERT's initialisation): the copied part of the student
computes what the teacher's s3prl model computes, layer for layer, on the same waveform."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
import torch

from lighthubert_s3prl.model.config import ConfigError
from lighthubert_s3prl.training.config import load_config
from lighthubert_s3prl.training.data import synthetic_utterance
from lighthubert_s3prl.training.distill import build_task

from .test_training_fixtures import teacher_ckpt, tiny_config, write_tiny_hubert  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hubert_file(tmp_path_factory) -> Path:
    return write_tiny_hubert(tmp_path_factory.mktemp("hubert") / "tiny_hubert.pt", layers=3)


def _ekd(tmp_path: Path, hubert: Path, init: str, student_type: str = "distiller", **extra):
    student = {"type": student_type, "init": init, "layers": 2}
    cfg = tiny_config("ekd", tmp_path, hubert, teacher=None, student=student, target={"source": "hidden_states"},
                      teachers=[{"name": "hubert_local", "ckpt": str(hubert), "layers": [1, 2]}], **extra)
    return build_task(load_config(cfg), torch.device("cpu"))


def _s3prl_hidden_states(hubert: Path, wav: torch.Tensor) -> List[torch.Tensor]:
    """The teacher as s3prl runs it (its own expert and model code), on the raw waveform, in LightHuBERT's
    layout: s3prl's HuBERT expert hooks the input of layer 0 as its first hidden state (after the positional
    conv and LayerNorm), LightHuBERT reports the projected CNN features there (docs of the model, "hidden
    states"), so that one is taken from s3prl's modules directly."""
    from s3prl.upstream.hubert.expert import UpstreamExpert

    expert = UpstreamExpert(str(hubert)).eval()
    model = expert.model
    with torch.no_grad():
        projected = model.post_extract_proj(model.layer_norm(model.feature_extractor(wav[None]).transpose(1, 2)))
        return [projected] + list(expert([wav])["hidden_states"][1:])


def _student_hidden_states(model, wav: torch.Tensor) -> List[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(wav[None], None, padding_mode="exact").hidden_states


@pytest.mark.parametrize("init", ["teacher:0", "teacher:hubert_local", "FILE"])
def test_a_distiller_student_starts_as_the_teachers_first_layers(tmp_path, hubert_file, init):
    task = _ekd(tmp_path, hubert_file, str(hubert_file) if init == "FILE" else init)
    student = task.student
    assert (student.cfg.encoder_layers, student.cfg.encoder_embed_dim) == (2, 64)
    wav = synthetic_utterance(3, 1.3)
    want = _s3prl_hidden_states(hubert_file, wav)
    got = _student_hidden_states(student, wav)
    assert len(got) == 3 and len(want) == 4  # the student keeps the CNN + 2 of the teacher's 3 layers
    for layer, (a, b) in enumerate(zip(got, want[:3])):
        assert a.shape == b.shape and torch.allclose(a, b, atol=2e-5), (layer, float((a - b).abs().max()))


def test_a_supernet_student_starts_as_the_whole_teacher(tmp_path, hubert_file):
    task = _ekd(tmp_path, hubert_file, "teacher:0", student_type="supernet")
    assert task.subnet.layer_num == 3 and task.subnet.embed_dim == 64
    wav = synthetic_utterance(4, 0.9)
    for a, b in zip(_student_hidden_states(task.student, wav), _s3prl_hidden_states(hubert_file, wav)):
        assert torch.allclose(a, b, atol=2e-5), float((a - b).abs().max())


def test_student_init_from_a_teacher_names_what_is_wrong(tmp_path, hubert_file, teacher_ckpt):
    with pytest.raises(ConfigError, match=r"student.init=teacher:3 names no teacher; use teacher:N \(N < 1\)"):
        _ekd(tmp_path, hubert_file, "teacher:3")
    cfg = tiny_config("ekd", tmp_path, teacher_ckpt, teacher=None, student={"type": "distiller", "init": "teacher:0"},
                      target={"source": "hidden_states"}, teachers=[{"ckpt": str(teacher_ckpt), "layers": [1]}])
    with pytest.raises(ConfigError, match="is a LightHuBERT model; give its checkpoint file as student.init"):
        build_task(load_config(cfg), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"student.init=teacher:0 \(a teacher's weights\) is for stage 'ekd'"):
        load_config(tiny_config("stage1", tmp_path, teacher_ckpt, student={"init": "teacher:0"}))
    bad = tmp_path / "not_a_model.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(ConfigError, match="neither a LightHuBERT checkpoint nor an s3prl HuBERT checkpoint"):
        _ekd(tmp_path, hubert_file, str(bad))


@pytest.mark.parametrize("student_type", ["distiller", "supernet"])
def test_a_student_started_from_a_lighthubert_checkpoint_computes_as_it(tmp_path, teacher_ckpt, student_type):
    """student.init as a LightHuBERT checkpoint: a distiller keeps its CNN and first two layers, a supernet
    student the whole model at the checkpoint's own subnet."""
    from lighthubert_s3prl.model.checkpoint import build_supernet, load_checkpoint

    cfg = tiny_config("ekd", tmp_path, teacher_ckpt, teacher=None, target={"source": "hidden_states"},
                      student={"type": student_type, "init": str(teacher_ckpt), "layers": 2},
                      teachers=[{"ckpt": str(teacher_ckpt), "layers": [1, 2]}])
    task = build_task(load_config(cfg), torch.device("cpu"))
    loaded = load_checkpoint(teacher_ckpt)
    reference = build_supernet(loaded).eval()
    wav = synthetic_utterance(5, 0.8)
    with torch.no_grad():
        want = reference(wav[None], None, subnet=loaded.default_subnet, padding_mode="exact").hidden_states
    got = _student_hidden_states(task.student, wav)
    assert len(got) == (3 if student_type == "distiller" else len(want))
    for layer, (a, b) in enumerate(zip(got, want)):
        assert torch.allclose(a, b, atol=1e-5), (layer, float((a - b).abs().max()))
