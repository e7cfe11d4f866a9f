"""Tolerances for float32 comparisons, derived from float32 rounding rather than fixed numbers.

A fixed ``atol=1e-5`` passes or fails with the CPU: the summation order of a dot product depends on the
kernel PyTorch dispatches to (AVX-512, AVX2, the scalar default, MKL's or oneDNN's blocking), and the
rounding it leaves behind differs with it. What does not depend on the CPU is the size of that rounding.
For one dot product of length K over values of magnitude M, float32 leaves an error that grows like
``u * sqrt(K) * M`` (u = 2**-24, the unit roundoff; sqrt(K) because the rounding errors of a long sum are
nearly independent). So a comparison of two float32 computations of the same hidden state allows

    atol = SAFETY * u * sqrt(K) * sqrt(depth) * max|reference|

- K: the longest reduction feeding the hidden state (a conv's in-channels x kernel, the FFN width, the
  positional conv's channels per group x kernel, the embedding width);
- depth: how many transformer layers (plus the CNN front end) the value went through; each layer adds
  its own rounding to the residual stream, and post-LN layers rescale it, so it grows at most like
  sqrt(depth) (measured: nearly flat, up by a third over 12 layers at most);
- max|reference|: the magnitude of the activations (LayerNorm'd hidden states sit at 5-7).

Measured on real 768-wide shapes, the float32 error against a float64 run is at most 0.50-0.98 of
``u * sqrt(K) * sqrt(depth) * max|h|`` (worst layer, per subnet; the CNN output is the worst), under AVX2
and ``ATEN_CPU_CAPABILITY=default`` (``test_float32_error_model_bounds_the_measured_error`` keeps it checked,
and CI repeats it under a forced dispatch). SAFETY = 4 covers two
computations each carrying such an error, with room; a wrong slice, a swapped head or an off-by-one
layer is off by 1e-2 to 1, hundreds of times the tolerance (``test_tolerance_still_catches_a_corrupted_weight``).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch

UNIT_ROUNDOFF = 2.0 ** -24
SAFETY = 4.0


def longest_reduction(model_cfg, subnet=None) -> int:
    """The longest float32 dot product in a forward of ``subnet`` of a supernet with ``model_cfg``
    (of its CNN alone when ``subnet`` is None)."""
    conv_in, lengths = 1, []
    for channels, kernel, _stride in model_cfg.conv_layers:
        lengths.append(conv_in * kernel)
        conv_in = channels
    if subnet is None:
        return max(lengths)
    E = subnet.embed_dim
    lengths += [conv_in, E, (E // model_cfg.conv_pos_groups) * model_cfg.conv_pos, *subnet.ffn_embed]
    return max(lengths)


def float32_atol(reference: torch.Tensor, reduction: int, depth: int = 1, safety: float = SAFETY) -> float:
    """The absolute tolerance for comparing two float32 computations of ``reference`` (see the module doc)."""
    magnitude = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return safety * UNIT_ROUNDOFF * math.sqrt(reduction) * math.sqrt(depth) * max(magnitude, 1e-30)


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int, depth: int = 1,
                         msg: Optional[str] = None, safety: float = SAFETY) -> None:
    atol = float32_atol(expected, reduction, depth, safety)
    prefix = f"{msg}: " if msg else ""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0,
                               msg=lambda m: f"{prefix}{m} [float32 tolerance {atol:.2e}: K={reduction}, depth={depth}]")


def assert_hidden_states_close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], reduction: int,
                               msg: str = "", safety: float = SAFETY) -> None:
    """Hidden state i (0 = projected CNN features) went through i transformer layers after the CNN."""
    assert len(actual) == len(expected), f"{msg}: {len(actual)} hidden states, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_float32_close(a, e, reduction, depth=i + 1, msg=f"{msg} layer {i}".strip(), safety=safety)


def worst_error_ratio(actual: Iterable[torch.Tensor], exact: Iterable[torch.Tensor], reduction: int) -> float:
    """max over layers of |actual - exact| / (u * sqrt(K) * sqrt(depth) * max|exact|): the error model's constant."""
    ratios = []
    for i, (a, e) in enumerate(zip(actual, exact)):
        scale = float32_atol(e, reduction, depth=i + 1, safety=1.0)
        ratios.append(float((a.double() - e.double()).abs().max()) / scale)
    return max(ratios)
