"""Hidden states of utterances already seen, for a frozen upstream that s3prl runs again every epoch.

With the upstream frozen, s3prl computes the same utterance's features once per epoch: a KS run of 2,000
steps at batch 16 over 1,000 clips runs each clip 32 times. In ``exact`` padding mode an utterance's hidden
states do not depend on the rest of its batch, so they can be kept by utterance and reused bit for bit.

The key is a digest of the waveform's samples, shape and dtype (equal samples, equal features; an augmented
clip is another key). The cache is bounded: once ``max_bytes`` are held, new utterances are computed and not
kept (the first epoch's utterances stay; nothing is evicted, so a hit rate can only fall when the data set is
larger than the bound).

Under s3prl's fine-tuning (``-f``) the upstream is evaluated with frozen weights too, between optimiser steps;
features kept from before a step would be stale. The cache therefore remembers a version of the weights
(:func:`weights_version`: PyTorch bumps a tensor's version counter on every in-place change, which is how
optimisers and ``load_state_dict`` write) and drops everything when it moves.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Dict, Hashable, List, Optional, Sequence

if TYPE_CHECKING:  # the SUPERB runner reads ENV_CACHE_MB without importing torch
    import torch

logger = logging.getLogger(__name__)

#: the cache size in MB for upstreams built without an explicit ``feature_cache_mb`` (the SUPERB runner sets it
#: for its s3prl processes); unset or 0: no cache
ENV_CACHE_MB = "LIGHTHUBERT_S3PRL_FEATURE_CACHE_MB"
#: what the SUPERB runner sets at the mini and ci scales, whose corpora fit in it several times over
SMALL_SCALE_CACHE_MB = 2048


def cache_mb_from_env() -> float:
    """The size asked for through :data:`ENV_CACHE_MB` (0 when unset); a bad value is an error naming it."""
    raw = os.environ.get(ENV_CACHE_MB, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_CACHE_MB}={raw!r} is not a number; set it to a size in MB, or unset it") from None
    if value < 0:
        raise ValueError(f"{ENV_CACHE_MB}={raw!r} is negative; set it to a size in MB (0 turns the cache off)")
    return value


def waveform_key(wav: torch.Tensor) -> bytes:
    """A digest of the samples, shape and dtype of one waveform."""
    data = wav.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=20)
    digest.update(f"{tuple(data.shape)}:{data.dtype}".encode())
    return digest.digest()


def weights_version(model: torch.nn.Module) -> Hashable:
    """Changes whenever a parameter or buffer of ``model`` is written in place or replaced."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


class FeatureCache:
    """Per-utterance hidden states (one (T, D) tensor per layer), bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"a feature cache needs a positive size, got {max_bytes} bytes")
        self.max_bytes = int(max_bytes)
        self.bytes_held = 0
        self.hits = 0
        self.misses = 0
        self._states: Dict[bytes, List[torch.Tensor]] = {}
        self._full_reported = False
        self._weights: Optional[Hashable] = None
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._states)

    def forget_unless(self, weights: Hashable) -> None:
        """Drop every kept state if they were computed with other weights than ``weights``."""
        if self._weights is not None and weights != self._weights and self._states:
            self.invalidations += 1
            if self.invalidations == 1:
                logger.info("upstream weights changed (fine-tuning): feature cache emptied; it is emptied again "
                            "at every change, so it only serves repeated evaluations of unchanged weights")
            self._states.clear()
            self.bytes_held = 0
            self._full_reported = False
        self._weights = weights

    def get(self, key: bytes) -> Optional[List[torch.Tensor]]:
        states = self._states.get(key)
        if states is None:
            self.misses += 1
        else:
            self.hits += 1
        return states

    def put(self, key: bytes, states: Sequence[torch.Tensor]) -> bool:
        """Keep ``states`` under ``key`` unless that would exceed the bound; True when kept."""
        if key in self._states:
            return True
        size = sum(s.numel() * s.element_size() for s in states)
        if self.bytes_held + size > self.max_bytes:
            if not self._full_reported:
                self._full_reported = True
                logger.warning("feature cache full at %.0f MB (%d utterances); later utterances are computed "
                               "every time (raise feature_cache_mb to keep them)", self.bytes_held / 2**20, len(self))
            return False
        self._states[key] = list(states)
        self.bytes_held += size
        return True
