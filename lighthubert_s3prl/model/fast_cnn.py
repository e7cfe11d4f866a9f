"""The inference CNN: first-layer GroupNorm folded away, then run in time chunks.

Same parameters (and keys) as :class:`~lighthubert_s3prl.model.modules.ConvFeatureExtractor`, same results to
float32 rounding, less work and far less memory:

* **Folding.** In ``default`` mode, conv 0 is followed by a GroupNorm with one group per channel. Given an
  utterance's statistics that norm is a per-channel affine map, and those statistics follow exactly from
  the waveform: conv 0 is linear in its k-sample windows, so each channel's mean and variance are ``w.m``
  and ``w^T.Cov.w`` with m and Cov the mean and covariance of the windows (k x k, in float64). Conv 0 then
  runs with the normalisation already in its weights, with no pass over its output (512 x 3200 values per
  second of audio, the largest tensor of the model).
* **Chunking.** Once that utterance-wide statistic is gone, every output frame depends only on its own
  window of samples (the receptive field, 400 samples for the standard layers). So on CPU the waveform is
  cut into overlapping segments of output frames (1 s at one thread; 4 s at several, so that a busy machine
  does not multiply the waits of many small parallel regions), and each segment runs through all the
  layers while its activations still sit in the CPU caches. The overlap recomputes under 1 % of the work;
  the full-length activations of the early layers (tens of MB for a 15 s utterance) are never allocated
  (``scripts/benchmark_cnn.py``: on 2 cores, folding makes the CNN 1.14x faster, folding and chunking 1.38x). Chunk borders fall on multiples of the total
  stride, so every layer's frames line up with the unchunked ones and the results are identical up to the
  order of float32 sums.

On other devices the whole input runs at once (chunking there only adds kernel launches).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .modules import ConvFeatureExtractor, conv_output_lengths


def receptive_field_and_hop(conv_layers: Sequence[Tuple[int, int, int]]) -> Tuple[int, int]:
    """Samples one output frame sees, and samples between consecutive frames (400 and 320 as released)."""
    field, hop = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


class FoldedConvFeatureExtractor(ConvFeatureExtractor):
    """:class:`ConvFeatureExtractor` for inference: GroupNorm folded into conv 0, chunked on CPU."""

    #: output frames per chunk on CPU; ``None`` picks by the intra-op thread count at the call, ``0`` runs
    #: the whole input at once everywhere, a number is used as it is.
    chunk_frames: Optional[int] = None
    #: one thread: 50 frames (1 s of audio) keep the early activations within the CPU caches and every
    #: allocation small enough for the C allocator to reuse instead of returning it to the OS (longer chunks
    #: made each chunk page-fault its memory afresh); the overlap recomputes under 1 %.
    SINGLE_THREAD_CHUNK = 50
    #: several threads: every layer of every chunk is a parallel region that waits for its slowest thread,
    #: and when another process takes a CPU that wait multiplies by the number of regions. With 50-frame
    #: chunks the small subnet fell to 1.0-1.2x s3prl's speed under one or two busy processes (2 threads,
    #: docs/performance.md); 4 s chunks ran as fast as the whole input, quiet or busy, and still bound the
    #: early activations of long utterances (a 15 s one: 26 MB instead of 98 MB at layer 0).
    PARALLEL_CHUNK = 200

    def chunk_for(self, threads: int) -> int:
        """Output frames per chunk at ``threads`` intra-op threads (0: the whole input at once)."""
        if self.chunk_frames is not None:
            return self.chunk_frames
        return self.SINGLE_THREAD_CHUNK if threads <= 1 else self.PARALLEL_CHUNK

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) samples to (B, C, T) features; ``lengths`` as in the base class.

        A module in training mode with gradients on runs the plain CNN, the reference for training.
        """
        if self.training and torch.is_grad_enabled():
            return super().forward(wav, lengths)
        first = self._first_layer(wav, lengths)
        field, hop = receptive_field_and_hop(self.conv_spec)
        frames = (wav.size(-1) - field) // hop + 1
        N = self.chunk_for(torch.get_num_threads())
        if N <= 0 or wav.device.type != "cpu" or frames <= N:
            return self._later_layers(first(wav))
        out = None
        for start in range(0, frames, N):
            stop = min(frames, start + N)
            x = self._later_layers(first(wav[:, start * hop: (stop - 1) * hop + field]))
            if out is None:
                out = x.new_empty(x.size(0), x.size(1), frames)
            out[:, :, start:stop] = x
        return out

    def _later_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Layers 1.. on the GELU input of layer 0 (all per-frame, so chunkable)."""
        x = _gelu(x)
        for block in self.conv_layers[1:]:
            x = block[0](x)
            if self.mode == "layer_norm":
                x = self._layer_norm(x, block[2][1])
            x = _gelu(x)
        return x

    def _first_layer(self, wav: torch.Tensor, lengths: Optional[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Conv 0 and its norm, as a function of any segment of ``wav`` (statistics from the whole of it)."""
        conv = self.conv_layers[0][0]
        if self.mode == "layer_norm":
            norm = self.conv_layers[0][2][1]
            return lambda segment: self._layer_norm(conv(segment.unsqueeze(1)), norm)
        weight, bias = self._folded_first_conv(wav.contiguous(), lengths)
        B, C, k = weight.shape
        stride = conv.stride[0]
        # one group per utterance: each is convolved with its own folded weights in a single call
        return lambda segment: F.conv1d(segment.reshape(1, B, -1), weight.reshape(B * C, 1, k), bias.reshape(B * C),
                                        stride=stride, groups=B).view(B, C, -1)

    def _folded_first_conv(self, wav: torch.Tensor, lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-utterance (B, C, k) weights and (B, C) biases of conv 0 with its GroupNorm folded in."""
        conv, norm = self.conv_layers[0][0], self.conv_layers[0][2]
        k, s = conv.kernel_size[0], conv.stride[0]
        B, L = wav.shape
        T0 = max((L - k) // s + 1, 0)
        windows = wav.as_strided((B, T0, k), (L, s, 1)).double()  # the samples each frame of conv 0 sees
        if lengths is None:  # statistics over every frame (also what the reference padding mode does)
            count = torch.full((B,), float(T0), dtype=torch.float64, device=wav.device)
        else:  # only over each utterance's own frames
            frames = conv_output_lengths(lengths, self.conv_spec[:1]).to(wav.device)
            valid = torch.arange(T0, device=wav.device)[None, :] < frames[:, None]
            windows = windows * valid[..., None]
            count = frames.double()
        count = count.clamp(min=1)
        mean_w = windows.sum(1) / count[:, None]  # (B, k)
        cov = windows.transpose(1, 2) @ windows / count[:, None, None] - mean_w[:, :, None] * mean_w[:, None, :]
        W = conv.weight[:, 0, :].double()  # (C, k)
        mean = mean_w @ W.t()  # (B, C)
        if conv.bias is not None:
            mean = mean + conv.bias.double()
        var = torch.einsum("ck,bkl,cl->bc", W, cov, W).clamp(min=0)
        scale = norm.weight.double() * torch.rsqrt(var + norm.eps)  # (B, C)
        bias = norm.bias.double() - mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
        return (W[None] * scale[..., None]).to(wav.dtype), bias.to(wav.dtype)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, in place when autograd does not need the input: one allocation fewer per layer and chunk."""
    return F.gelu(x) if x.requires_grad else torch.ops.aten.gelu_(x)
