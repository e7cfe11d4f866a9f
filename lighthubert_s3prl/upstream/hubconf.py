"""s3prl hub entries (``-u NAME``) for LightHuBERT.

``lighthubert_small``/``_base``/``_stage1`` run the released subnets of the official files, found with
``-k PATH`` or in the local cache folder; ``lighthubert_local -k PATH`` runs a checkpoint's own subnet;
``lighthubert_subnet -k PATH -g subnet.yaml`` runs any subnet. Every entry accepts ``-g``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..io_utils import offline
from ..model.checkpoint import CheckpointError
from .expert import UpstreamExpert

OFFICIAL_URL = "https://huggingface.co/mechanicalsea/lighthubert/resolve/main/{name}.pt"
OFFICIAL_NAMES = ("lighthubert_small", "lighthubert_base", "lighthubert_stage1")
PRESET_OF = {"lighthubert_small": "small", "lighthubert_base": "base", "lighthubert_stage1": "stage1"}


def cache_dir() -> Path:
    """Where official checkpoints are looked for: ``$LIGHTHUBERT_S3PRL_CACHE``, else ``lighthubert_s3prl`` in
    ``$XDG_CACHE_HOME`` (the freedesktop cache folder), else in ``~/.cache``."""
    if os.environ.get("LIGHTHUBERT_S3PRL_CACHE"):
        return Path(os.environ["LIGHTHUBERT_S3PRL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lighthubert_s3prl"


def official_checkpoint(name: str, refresh: bool = False) -> Path:
    """Path of an official file: our cache, then s3prl's download cache, then a download through s3prl."""
    filename = f"{name}.pt"
    url = OFFICIAL_URL.format(name=name)
    ours = cache_dir() / filename
    if ours.is_file() and not refresh:
        return ours
    try:
        from s3prl.util import download as s3prl_download

        s3prl_cached = s3prl_download.get_dir() / f"{hashlib.sha256(url.encode()).hexdigest()}.{filename}"
    except Exception:  # noqa: BLE001 - s3prl missing or changed: fall back to our cache only
        s3prl_download, s3prl_cached = None, None
    if s3prl_cached is not None and s3prl_cached.is_file() and not refresh:
        return s3prl_cached
    if s3prl_download is not None and not offline():
        try:
            return Path(s3prl_download._urls_to_filepaths(url, refresh=refresh))
        except Exception as err:  # noqa: BLE001 - any network failure ends up as the message below
            reason = f"downloading {url} failed ({type(err).__name__}: {err})"
    else:
        reason = "offline mode is set (LIGHTHUBERT_S3PRL_OFFLINE / HF_HUB_OFFLINE)"
    raise CheckpointError(
        f"{filename} not found and {reason}. Put the file at {ours} (or set LIGHTHUBERT_S3PRL_CACHE to its "
        f"folder), or pass its path with -k /path/to/{filename}"
    )


def _named(name: str) -> Callable[..., UpstreamExpert]:
    def entry(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
              **kwargs: Any) -> UpstreamExpert:
        path = ckpt or official_checkpoint(name, refresh)
        subnet = kwargs.pop("subnet", None)
        if model_config is None and subnet is None:
            subnet = PRESET_OF[name]
        return UpstreamExpert(path, model_config=model_config, subnet=subnet, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"The released {PRESET_OF[name]} subnet of {name}.pt (-k PATH, or the cache folder)."
    return entry


lighthubert_small = _named("lighthubert_small")
lighthubert_base = _named("lighthubert_base")
lighthubert_stage1 = _named("lighthubert_stage1")


def lighthubert(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                **kwargs: Any) -> UpstreamExpert:
    """Alias of ``lighthubert_small``, as in s3prl."""
    return lighthubert_small(ckpt, model_config, refresh, **kwargs)


def lighthubert_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs: Any) -> UpstreamExpert:
    """Any LightHuBERT checkpoint (supernet or compact export) given with -k; its own subnet unless -g says."""
    if not ckpt:
        raise CheckpointError("lighthubert_local needs a checkpoint: pass -k /path/to/checkpoint.pt")
    kwargs.pop("refresh", None)
    return UpstreamExpert(ckpt, model_config=model_config, **kwargs)


def lighthubert_subnet(ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs: Any) -> UpstreamExpert:
    """Any subnet: -k CHECKPOINT -g subnet.yaml (a preset, random:SPACE:SEED, budget:SPACE:PARAMS or a dict)."""
    if not model_config and kwargs.get("subnet") is None:
        raise CheckpointError(
            "lighthubert_subnet needs a subnet config: pass -g subnet.yaml (e.g. a file holding 'subnet: small')"
        )
    return lighthubert_local(ckpt, model_config, **kwargs)


def lighthubert_url(ckpt: str, refresh: bool = False, model_config: Optional[str] = None, **kwargs: Any) -> UpstreamExpert:
    """A checkpoint URL, fetched through s3prl's downloader."""
    from s3prl.util.download import _urls_to_filepaths

    return lighthubert_local(_urls_to_filepaths(ckpt, refresh=refresh), model_config, **kwargs)


def distiller_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs: Any) -> UpstreamExpert:
    """An EKD / DistilHuBERT-style student from ``lighthubert-s3prl train ekd`` (-k PATH); adds ``paper`` and ``pred_heads``."""
    from .distiller import distiller_local as entry

    return entry(ckpt, model_config, **kwargs)


ENTRIES: Dict[str, Callable[..., UpstreamExpert]] = {
    "lighthubert": lighthubert,
    "lighthubert_small": lighthubert_small,
    "lighthubert_base": lighthubert_base,
    "lighthubert_stage1": lighthubert_stage1,
    "lighthubert_local": lighthubert_local,
    "lighthubert_subnet": lighthubert_subnet,
    "lighthubert_url": lighthubert_url,
    "distiller_local": distiller_local,
}
