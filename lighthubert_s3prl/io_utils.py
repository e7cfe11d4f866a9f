"""Atomic file writes (a result or checkpoint is either complete on disk or absent), and where caches live."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def cache_root() -> Path:
    """``$LIGHTHUBERT_S3PRL_CACHE``, else ``$XDG_CACHE_HOME/lighthubert_s3prl``, else ~/.cache/..."""
    env = os.environ.get("LIGHTHUBERT_S3PRL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lighthubert_s3prl"


def offline() -> bool:
    """True when ``LIGHTHUBERT_S3PRL_OFFLINE`` or ``HF_HUB_OFFLINE`` forbids downloads."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("LIGHTHUBERT_S3PRL_OFFLINE", "HF_HUB_OFFLINE"))
