"""What a subnet costs to run: multiply-accumulates per utterance, counted from the dimensions.

MACs are counted analytically for one utterance, layer by layer, exactly as the compact model computes
it (which a test checks against ``torch.utils.flop_counter``): the CNN, the projection, the positional
conv, the attention projections, the attention scores and context (the only terms quadratic in the
sequence length) and the FFN. Norms, activations and softmax are not counted (they are well under 1% and
not multiply-accumulates). The sequence is the utterance's own frame count padded to
``required_seq_len_multiple`` (2), as :meth:`forward` runs it (the compact model's per-utterance CPU path
skips that one padded frame of an odd-length utterance: under 1 % of its encoder's work at 1 s). Parameter
counts live beside the configs (:func:`~lighthubert_s3prl.model.config.count_parameters`), which the budget
search needs.
"""
from __future__ import annotations

from typing import Dict, List

from .config import HEAD_DIM, ModelConfig, SubnetConfig

SAMPLE_RATE = 16000


def frame_counts(model_cfg: ModelConfig, samples: int) -> List[int]:
    """Output length of every CNN layer for ``samples`` input samples (floor((L - k) / s) + 1 each)."""
    counts, n = [], samples
    for _, kernel, stride in model_cfg.conv_layers:
        n = max((n - kernel) // stride + 1, 0)
        counts.append(n)
    return counts


def macs_breakdown(subnet: SubnetConfig, model_cfg: ModelConfig = ModelConfig(), seconds: float = 1.0,
                   sample_rate: int = SAMPLE_RATE) -> Dict[str, int]:
    """Multiply-accumulates of one utterance of ``seconds`` by component (see the module docstring)."""
    subnet.validate_for(model_cfg)
    samples = int(round(seconds * sample_rate))
    counts = frame_counts(model_cfg, samples)
    T = counts[-1]
    if T <= 0:
        return {k: 0 for k in ("cnn", "projection", "pos_conv", "attention_proj", "attention_scores", "ffn")}
    cnn, in_dim = 0, 1
    for (dim, kernel, _), n in zip(model_cfg.conv_layers, counts):
        cnn += n * dim * in_dim * kernel
        in_dim = dim
    E, C, K = subnet.embed_dim, model_cfg.cnn_dim, model_cfg.conv_pos
    # the positional conv pads K//2 on both sides, so it computes T + 2*(K//2) - K + 1 outputs (one is dropped
    # again for an even kernel)
    pos_frames = T + 2 * (K // 2) - K + 1
    pos = pos_frames * E * (E // model_cfg.conv_pos_groups) * K
    m = model_cfg.required_seq_len_multiple
    S = -(-T // m) * m  # the encoder pads the sequence to a multiple of m
    attn_proj = scores = ffn = 0
    for h, Fd in zip(subnet.heads_num, subnet.ffn_embed):
        A = HEAD_DIM * h
        attn_proj += 4 * S * E * A  # q, k, v and out
        scores += 2 * S * S * A  # q.k^T and attention x v, over all heads
        ffn += 2 * S * E * Fd
    return {"cnn": cnn, "projection": T * C * E, "pos_conv": pos, "attention_proj": attn_proj,
            "attention_scores": scores, "ffn": ffn}


def analytic_macs(subnet: SubnetConfig, model_cfg: ModelConfig = ModelConfig(), seconds: float = 1.0) -> int:
    """Total multiply-accumulates to run ``subnet`` on one utterance of ``seconds`` at 16 kHz."""
    return sum(macs_breakdown(subnet, model_cfg, seconds).values())
