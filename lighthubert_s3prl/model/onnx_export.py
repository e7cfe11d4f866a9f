"""Any LightHuBERT subnet as an ONNX graph, and that graph run by ONNX Runtime.

ONNX Runtime serves a model without PyTorch or this package, so the graph does everything our s3prl upstream
(``-u lighthubert_local``) does between raw audio and hidden states, and an ONNX Runtime user gets the same
numbers as s3prl:

* inputs ``wavs`` float32 (batch, samples), padded at the end (with anything: samples past an utterance's
  length are ignored), and ``wav_lengths`` int64 (batch,), each at most the samples axis;
* each waveform is normalised over its own samples (as LightHuBERT was trained), the padding is masked at
  every stage as the upstream's default ``exact`` padding mode does (each utterance as if alone);
* outputs ``hidden_state_0 .. hidden_state_L`` float32 (batch, frames, E) with padded frames set to 0, and
  ``frame_lengths`` int64 (batch,).

The graph is traced by torch's TorchScript-based exporter, which needs no package beyond ``onnx``. Tracing
records tensor operations only: any Python number taken from a shape would be frozen into the graph as a
constant. So the graph is restated here without shape-dependent Python values or branches (the inference
CNN's time chunking is one; the supernet's padding of the frame count to an even number is another, which
changes no valid frame because padded keys are masked). Every export is then run by ONNX Runtime on a batch
of another size and length than the traced one and compared with PyTorch before it is written.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

from ..io_utils import atomic_write
from .compact import CompactLightHuBERT
from .config import HEAD_DIM, count_parameters
from .export import ExportError, ExportResult, _check_output, build_compact_for
from .modules import LN_EPS, ConvFeatureExtractor, LayerDims, conv_output_lengths

DEFAULT_OPSET = 17  # the first with a LayerNormalization op (one node instead of its decomposition)
OPSETS = range(14, 21)  # attention needs 14; 20 is the most torch's TorchScript exporter writes
INPUT_NAMES = ("wavs", "wav_lengths")
INSTALL_HINT = "pip install 'lighthubert-s3prl[onnx]'"
# PyTorch and ONNX Runtime sum in different orders; a wrong graph is off by far more (see the tests)
VERIFY_ATOL = 1e-3


def _require(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError as err:
        raise ExportError(f"ONNX export and inference need the {name} package ({err}); install it with: "
                          f"{INSTALL_HINT}") from None


def output_names(layer_num: int) -> List[str]:
    return [f"hidden_state_{i}" for i in range(layer_num + 1)] + ["frame_lengths"]


class UpstreamGraph(nn.Module):
    """The upstream's whole forward on a padded batch, in a form that traces into a shape-generic graph."""

    def __init__(self, model: CompactLightHuBERT) -> None:
        super().__init__()
        cfg = model.cfg
        self.model = model
        # the inference CNN sizes its time chunks with Python ints; the plain one has the same weights and keys
        self.cnn = ConvFeatureExtractor(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        self.cnn.load_state_dict(model.feature_extractor.state_dict())
        E = model.subnet.embed_dim
        self.dims = [LayerDims(E, HEAD_DIM * h, f) for h, f in zip(model.subnet.heads_num, model.subnet.ffn_embed)]

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        m, E = self.model, self.model.subnet.embed_dim
        valid = torch.arange(wavs.size(1), device=wavs.device)[None, :] < wav_lengths[:, None]
        count = wav_lengths.clamp(min=1).to(wavs.dtype)[:, None]
        wavs = wavs * valid
        mean = wavs.sum(1, keepdim=True) / count
        var = ((wavs - mean) * valid).pow(2).sum(1, keepdim=True) / count
        wavs = (wavs - mean) * torch.rsqrt(var + LN_EPS) * valid  # F.layer_norm over the valid samples only

        feats = m.layer_norm(self.cnn(wavs, wav_lengths).transpose(1, 2))
        frame_lengths = conv_output_lengths(wav_lengths, m.cfg.conv_layers)
        padded = (torch.arange(feats.size(1), device=feats.device)[None, :] >= frame_lengths[:, None])[..., None]
        x = m.post_extract_proj(feats).masked_fill(padded, 0.0)
        hidden = [x]
        x = x + m.encoder.pos_conv[0](x, E)
        if not m.cfg.layer_norm_first:
            x = m.encoder.layer_norm(x)
        attn_mask = ~padded[..., 0][:, None, None, :]
        for layer, dims in zip(m.encoder.layers, self.dims):
            x, _ = layer(x, attn_mask, dims)
            hidden.append(x.masked_fill(padded, 0.0))
        return (*hidden, frame_lengths)


def _batch(lengths: Sequence[int], seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded noise waveforms, zero-padded, with their lengths."""
    gen = torch.Generator().manual_seed(seed)
    wavs = pad_sequence([torch.randn(n, generator=gen) for n in lengths], batch_first=True)
    return wavs, torch.tensor(lengths, dtype=torch.int64)


@dataclass
class OnnxExportResult(ExportResult):
    opset: int = DEFAULT_OPSET
    verify_max_abs_diff: float = float("nan")  # ONNX Runtime vs PyTorch on valid frames of an unseen batch shape

    def summary(self) -> str:
        return "\n".join([
            super().summary(),
            f"graph:       inputs {', '.join(INPUT_NAMES)}; outputs hidden_state_0..{self.subnet.layer_num}, "
            f"frame_lengths; ONNX opset {self.opset}",
            f"verified:    ONNX Runtime vs PyTorch, max |diff| {self.verify_max_abs_diff:.2e} on valid frames",
        ])


def export_onnx(
    ckpt: Union[str, Path],
    subnet: Any = None,
    output: Union[str, Path] = "lighthubert.onnx",
    force: bool = False,
    opset: int = DEFAULT_OPSET,
) -> OnnxExportResult:
    """Write ``subnet`` of ``ckpt`` (supernet or compact checkpoint) as a checked ONNX graph at ``output``."""
    onnx = _require("onnx")
    _require("onnxruntime")
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose one from {OPSETS.start} to {OPSETS.stop - 1}")
    output = Path(output)
    _check_output(output, force)
    source = Path(ckpt)
    graph = UpstreamGraph(build_compact_for(source, subnet)).eval()
    names = output_names(graph.model.subnet.layer_num)
    example = _batch([6000, 4321], seed=0)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # what the tracer flags here are comparisons of weight shapes, constants indeed; a frozen *input* shape
        # would be caught by _verify. The legacy exporter's deprecation notice is about torch's default only.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph, example, buffer, input_names=list(INPUT_NAMES), output_names=names, opset_version=opset,
            dynamic_axes={"wavs": {0: "batch", 1: "samples"}, "wav_lengths": {0: "batch"},
                          **{n: {0: "batch", 1: "frames"} for n in names[:-1]}, names[-1]: {0: "batch"}},
            dynamo=False,
        )
    data = buffer.getvalue()
    _check(onnx, onnx.load_model_from_string(data), "the exported graph")  # before anything is replaced
    diff = _verify(data, graph)
    atomic_write(output, lambda f: f.write(data))
    _check(onnx, str(output), str(output))  # what landed on disk
    return OnnxExportResult(
        output=output, subnet=graph.model.subnet, parameters=count_parameters(graph.model.subnet, graph.model.cfg),
        stored_tensors=sum(p.numel() for p in graph.model.parameters()), source_bytes=source.stat().st_size,
        output_bytes=output.stat().st_size, dtype="float32", opset=opset, verify_max_abs_diff=diff,
    )


def _check(onnx: ModuleType, model: Any, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001  (the checker raises several types)
        raise ExportError(f"{what} is not a valid ONNX model: {err}") from None


def _verify(model_bytes: bytes, graph: UpstreamGraph) -> float:
    """ONNX Runtime against PyTorch on 3 utterances (the trace saw 2, all of other lengths): largest |diff|."""
    wavs, lengths = _batch([9000, 7777, 3210], seed=1)
    with torch.no_grad():
        *expected, frames = graph(wavs, lengths)
    try:
        hidden, ort_frames = OnnxRuntimeUpstream(model_bytes).run(wavs, lengths)
    except Exception as err:  # noqa: BLE001  (ONNX Runtime's errors have no common public base)
        raise ExportError(f"the exported graph fails on a batch of another shape than the traced one: {err}; "
                          "please report this with your torch and onnx versions") from None
    shapes, expected_shapes = [tuple(h.shape) for h in hidden], [tuple(e.shape) for e in expected]
    if shapes != expected_shapes or not torch.equal(ort_frames, frames):
        raise ExportError(f"the exported graph gives hidden states of shapes {shapes} and frame lengths "
                          f"{ort_frames.tolist()}; expected {expected_shapes} and {frames.tolist()}")
    valid = (torch.arange(expected[0].size(1))[None, :] < frames[:, None])[..., None]
    diff = max(float(((h - e) * valid).abs().max()) for h, e in zip(hidden, expected))
    if not diff <= VERIFY_ATOL:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch on the exported graph (max |diff| {diff:.3g} > "
                          f"{VERIFY_ATOL}); please report this with your torch and onnx versions")
    return diff


class OnnxRuntimeUpstream:
    """An exported graph in an ONNX Runtime CPU session, called like our s3prl upstream.

    ``intra_op_threads`` sets the threads of each operator (None: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, model: Union[str, Path, bytes], intra_op_threads: Optional[int] = None) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # the graph is one chain of operators: a second pool would only wait
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.intra_op_threads = intra_op_threads

    def run(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(batch, samples) zero-padded waveforms and their lengths -> hidden states and frame lengths."""
        feed = {"wavs": wavs.detach().to("cpu", torch.float32).contiguous().numpy(),
                "wav_lengths": wav_lengths.detach().to("cpu", torch.int64).contiguous().numpy()}
        *hidden, frames = (torch.from_numpy(a) for a in self.session.run(self.output_names, feed))
        return hidden, frames

    def __call__(self, wavs: Sequence[torch.Tensor]) -> Dict[str, Any]:
        """A list of 1-D waveforms -> ``{"hidden_states": [...], "last_hidden_state", "frame_lengths"}``."""
        if len(wavs) == 0:
            raise ValueError("got an empty list of waveforms")
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
        hidden, frames = self.run(pad_sequence([w.float().cpu() for w in wavs], batch_first=True), lengths)
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1], "frame_lengths": frames}
