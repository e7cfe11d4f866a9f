"""s3prl upstream expert exposing any LightHuBERT subnet.

s3prl's contract: ``forward(list of 1-D 16 kHz waveforms) -> {"hidden_states": [...]}`` with every entry
(B, T, D), plus ``get_downsample_rates``. Ours returns ``1 + layer_num`` hidden states of the chosen
subnet (the projected CNN features, then each kept layer), which s3prl's weighted-sum featurizer mixes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..cpu_budget import LoadAwareThreads
from ..model.checkpoint import build_supernet, load_checkpoint
from ..model.compact import CompactLightHuBERT, build_compact
from ..model.config import ConfigError, count_parameters, resolve_subnet
from ..model.supernet import PADDING_MODES
from .feature_cache import FeatureCache, cache_mb_from_env, waveform_key, weights_version

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
IMPLEMENTATIONS = ("compact", "supernet")
CPU_THREADS = ("load_aware", "fixed")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_OPTION_KEYS = ("subnet", "implementation", "padding_mode", "dtype", "feature_cache_mb", "cpu_threads", "freeze_cnn")


@dataclass
class UpstreamOptions:
    """How the upstream runs; read from ``-g/--upstream_model_config`` (YAML or JSON) or keywords.

    ``subnet``: a preset (``small``, ``base``, ``stage1``, ``small-max``...), ``random:SPACE:SEED``,
    ``budget:SPACE:PARAMS``, a subnet file, or an inline dict. ``implementation``: ``compact`` (dense,
    fast; the default) or ``supernet`` (slices at every forward). ``padding_mode``: ``exact`` (each
    utterance as if alone) or ``reference`` (bit-for-bit the original batching behaviour).
    ``feature_cache_mb``: keep the hidden states of utterances already seen, up to this many MB, and reuse them
    while the upstream is frozen (eval mode, no gradients; ``exact`` padding on the CPU); None reads
    ``LIGHTHUBERT_S3PRL_FEATURE_CACHE_MB``, 0 turns it off. ``cpu_threads``: ``load_aware`` (default) runs each
    CPU forward with the process's threads less the CPUs other processes kept busy since the last forward
    (see :class:`~lighthubert_s3prl.cpu_budget.LoadAwareThreads`), ``fixed`` with the process's threads as set.
    ``freeze_cnn``: when s3prl fine-tunes the upstream (``-f``), keep the CNN feature extractor fixed and train
    the rest, as HuBERT-family models are usually fine-tuned; no effect on a frozen upstream.
    """

    subnet: Any = None
    implementation: str = "compact"
    padding_mode: str = "exact"
    dtype: str = "float32"
    feature_cache_mb: Optional[float] = None
    cpu_threads: str = "load_aware"
    freeze_cnn: bool = False

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "UpstreamOptions":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"upstream model config {str(path)!r} does not exist; pass a subnet YAML/JSON file with -g")
        import json

        import yaml

        try:
            data = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"upstream model config {path} cannot be parsed: {err}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"upstream model config {path} must hold a mapping, got {type(data).__name__}")
        if not set(data) & set(_OPTION_KEYS):  # a bare subnet dict
            data = {"subnet": dict(data)}
        unknown = sorted(set(data) - set(_OPTION_KEYS) - {"preset", "params", "search_space", "note"})
        if unknown:
            raise ConfigError(f"upstream model config {path}: unknown field(s) {unknown}; allowed: {list(_OPTION_KEYS)}")
        if "preset" in data and "subnet" not in data:
            data = {**data, "subnet": data["preset"]}
        options = cls(**{k: data[k] for k in _OPTION_KEYS if k in data})
        if isinstance(options.subnet, str) and not options.subnet.startswith(("random:", "budget:")):
            candidate = path.parent / options.subnet
            if candidate.suffix.lower() in (".yaml", ".yml", ".json") and candidate.is_file():
                options.subnet = str(candidate)
        return options

    def validate(self) -> None:
        if self.implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"implementation={self.implementation!r}; allowed values: {list(IMPLEMENTATIONS)}")
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(f"padding_mode={self.padding_mode!r}; allowed values: {list(PADDING_MODES)}")
        if str(self.dtype) not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}; allowed values: {sorted(DTYPES)}")
        if self.feature_cache_mb is not None and not (isinstance(self.feature_cache_mb, (int, float))
                                                      and self.feature_cache_mb >= 0):
            raise ConfigError(f"feature_cache_mb={self.feature_cache_mb!r}; give a size in MB (0 turns the cache off)")
        if self.cpu_threads not in CPU_THREADS:
            raise ConfigError(f"cpu_threads={self.cpu_threads!r}; allowed values: {list(CPU_THREADS)}")
        if not isinstance(self.freeze_cnn, bool):
            raise ConfigError(f"freeze_cnn={self.freeze_cnn!r}; give true or false")


def normalised(wav: torch.Tensor) -> torch.Tensor:
    """One waveform normalised to zero mean and unit variance over its own samples, as LightHuBERT was trained."""
    return F.layer_norm(wav.float(), wav.shape)


def prepare_batch(wavs: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Normalise each waveform on its own (LightHuBERT was trained so), zero-pad, and mark the padding."""
    if len(wavs) == 0:
        raise ValueError("got an empty list of waveforms")
    wavs = [normalised(w) for w in wavs]
    lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
    padded = pad_sequence(wavs, batch_first=True)
    padding_mask = torch.arange(padded.size(1), device=padded.device)[None, :] >= lengths[:, None]
    return padded, padding_mask if bool(padding_mask.any()) else None


class UpstreamExpert(nn.Module):
    def __init__(
        self,
        ckpt: Union[str, Path],
        model_config: Optional[Union[str, Path]] = None,
        subnet: Any = None,
        implementation: Optional[str] = None,
        padding_mode: Optional[str] = None,
        dtype: Optional[str] = None,
        feature_cache_mb: Optional[float] = None,
        cpu_threads: Optional[str] = None,
        freeze_cnn: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        options = UpstreamOptions.from_file(model_config) if model_config else UpstreamOptions()
        for key, value in (("subnet", subnet), ("implementation", implementation), ("padding_mode", padding_mode),
                           ("dtype", dtype), ("feature_cache_mb", feature_cache_mb), ("cpu_threads", cpu_threads),
                           ("freeze_cnn", freeze_cnn)):
            if value is not None:
                setattr(options, key, value)
        options.validate()
        self.options = options
        loaded = load_checkpoint(ckpt)
        if loaded.kind == "compact":
            self.model: nn.Module = build_compact(loaded)
            if options.subnet is not None:
                wanted = resolve_subnet(options.subnet, loaded.default_subnet)
                if wanted != loaded.default_subnet:
                    raise ConfigError(
                        f"{ckpt} is a compact export of {loaded.default_subnet.describe()}; it cannot run "
                        f"{wanted.describe()}. Pass the supernet checkpoint instead"
                    )
            self.subnet = loaded.default_subnet
        else:
            self.subnet = loaded.subnet(options.subnet)
            if options.implementation == "compact":
                # sliced straight from the state dict: no supernet module is built (less memory, faster)
                self.model = CompactLightHuBERT.from_checkpoint(loaded, self.subnet)
            else:
                supernet = build_supernet(loaded)
                supernet.subnet = self.subnet
                self.model = supernet
        self.compute_dtype = DTYPES[str(options.dtype)]
        if self.compute_dtype != torch.float32:
            self.model.to(self.compute_dtype)
        self.num_parameters = count_parameters(self.subnet, loaded.model_cfg)
        if options.freeze_cnn:
            self.model.feature_extractor.requires_grad_(False)
        try:
            cache_mb = cache_mb_from_env() if options.feature_cache_mb is None else float(options.feature_cache_mb)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.feature_cache = FeatureCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
        self.threads = LoadAwareThreads() if options.cpu_threads == "load_aware" else None
        logger.info("LightHuBERT %s subnet (%s parameters): %s", options.implementation, f"{self.num_parameters:,}",
                    self.subnet.describe())

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return self.model.downsample_rate

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, Any]:
        if self.threads is not None and len(wavs) > 0 and wavs[0].device.type == "cpu":
            with self.threads.applied():
                return self._forward(wavs)
        return self._forward(wavs)

    def _forward(self, wavs: List[torch.Tensor]) -> Dict[str, Any]:
        on_cpu = len(wavs) > 0 and wavs[0].device.type == "cpu"
        by_utterance = isinstance(self.model, CompactLightHuBERT) and self.options.padding_mode == "exact" and on_cpu
        if by_utterance and self.feature_cache is not None and not self.training and not torch.is_grad_enabled():
            hidden = self._forward_cached(wavs, self.feature_cache)
            return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}
        if by_utterance:
            # "exact" means each utterance as if alone; on a CPU running them alone spends nothing on padding,
            # while a GPU is better used by one padded batch (equally exact)
            out = self.model.forward_utterances([normalised(w) for w in wavs])
        else:
            padded, padding_mask = prepare_batch(wavs)
            out = self.model(padded.to(self.compute_dtype), padding_mask, padding_mode=self.options.padding_mode)
            if self.options.padding_mode == "exact" and out.padding_mask is not None:
                # padded frames mean nothing in exact mode; zero them, as the compact path returns them
                out.hidden_states = [h.masked_fill(out.padding_mask[..., None], 0.0) for h in out.hidden_states]
        hidden = [h.float() for h in out.hidden_states]
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}

    def _forward_cached(self, wavs: List[torch.Tensor], cache: FeatureCache) -> List[torch.Tensor]:
        """``forward``'s hidden states, computing only the utterances the cache does not hold."""
        cache.forget_unless(weights_version(self.model))  # a fine-tuned upstream's old features are stale
        keys = [waveform_key(w) for w in wavs]
        states: List[Optional[List[torch.Tensor]]] = [cache.get(k) for k in keys]
        missing = [i for i, s in enumerate(states) if s is None]
        if missing:
            out = self.model.forward_utterances([normalised(wavs[i]) for i in missing])
            T = out.hidden_states[0].shape[1]
            frames = [T] * len(missing) if out.padding_mask is None else (~out.padding_mask).sum(1).tolist()
            for j, i in enumerate(missing):
                # cloned: a view would keep the whole batch buffer alive
                states[i] = [h[j, :frames[j]].float().clone() for h in out.hidden_states]
                cache.put(keys[i], states[i])  # type: ignore[arg-type]
        T = max(s[0].shape[0] for s in states)  # type: ignore[index]
        hidden = []
        for layer in range(len(states[0])):  # type: ignore[arg-type]
            batch = states[0][layer].new_zeros(len(wavs), T, states[0][layer].shape[-1])  # type: ignore[index]
            for i, s in enumerate(states):
                batch[i, :s[layer].shape[0]] = s[layer]  # type: ignore[index]
            hidden.append(batch)
        return hidden
