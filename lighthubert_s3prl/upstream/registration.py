"""Our names in ``s3prl.hub``, for every door into s3prl: its ``run_downstream``, ``S3PRLUpstream`` and code
that calls ``getattr(s3prl.hub, name)`` itself.

s3prl has no plugin discovery: it resolves an upstream name as an attribute of its ``hub`` module, where its
own ``lighthubert*`` entries already live. A user who imports this package and then asks s3prl for
``lighthubert_local`` would silently get s3prl's built-in expert (one fixed subnet, the slower path, and a
``KeyError`` on our compact exports). So importing :mod:`lighthubert_s3prl` registers by itself, without
importing s3prl: :func:`install_import_hook` waits for ``s3prl.hub`` to be imported and adds our entries
right after it runs (at once, if it is already loaded). Setting :data:`NO_AUTO_REGISTER_ENV` keeps s3prl's
hub untouched until :func:`register` is called.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any, List, Optional, Sequence

HUB_MODULE = "s3prl.hub"
#: set to 1 to leave ``s3prl.hub`` alone on import (s3prl's own LightHuBERT entries stay in place)
NO_AUTO_REGISTER_ENV = "LIGHTHUBERT_S3PRL_NO_AUTO_REGISTER"


def register(hub_module: Optional[ModuleType] = None) -> List[str]:
    """Put our upstream entries into ``s3prl.hub`` (replacing s3prl's LightHuBERT names) and return the names.

    Idempotent: calling it again sets the same functions. ``hub_module`` is for tests and for a hub module
    object s3prl has not published in ``sys.modules`` yet.
    """
    from .hubconf import ENTRIES

    if hub_module is None:
        import s3prl.hub as hub_module
    for name, entry in ENTRIES.items():
        setattr(hub_module, name, entry)
    return list(ENTRIES)


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs the real loader of ``s3prl.hub``, then :func:`register` on the fresh module."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register(module)


class _HubImportHook(importlib.abc.MetaPathFinder):
    """Finds ``s3prl.hub`` as Python would and wraps its loader; every other import passes by."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != HUB_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install_import_hook() -> bool:
    """Register now if ``s3prl.hub`` is loaded, else as soon as it is; returns False when opted out.

    Idempotent, and free until s3prl's hub is imported: nothing of s3prl or torch is imported here.
    """
    if os.environ.get(NO_AUTO_REGISTER_ENV, "").strip() not in ("", "0"):
        return False
    if not any(isinstance(finder, _HubImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HubImportHook())
    hub = sys.modules.get(HUB_MODULE)
    if hub is not None:
        register(hub)
    return True
