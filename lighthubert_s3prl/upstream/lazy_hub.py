"""A lazily filled ``s3prl.hub``: import only the upstream a run asks for.

s3prl's ``hub.py`` star-imports the ``hubconf`` of every upstream it ships (transformers, sklearn,
fairseq-style code, ...): about 6 of the 9 s an s3prl process spends before its first step. A SUPERB unit
on the mini corpus trains for less than that, so start-up dominates. s3prl reads its hub only through
attributes (``getattr(hub, name)``, ``dir(hub)`` for the help text), so a module that finds which
``hubconf`` defines ``name`` from the source files (no imports) and imports just that one behaves the
same. Any name it cannot place (or ``hub.options()``) imports the real ``hub.py`` into it, so nothing
s3prl offers is lost; only the time is.

``install()`` must run before anything imports ``s3prl.hub``; it is a no-op if the real hub is loaded.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

HUB_MODULE = "s3prl.hub"


def _bindings(statements: List[ast.stmt]) -> List[str]:
    """Top-level names bound by ``statements`` (definitions, assignments, imports), looking into ``if`` and
    ``try`` blocks; a star import inside is not followed (its names are left to the fallback)."""
    names: List[str] = []
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname or a.name for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            names += [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, (ast.If, ast.Try)):
            blocks = [node.body, node.orelse, getattr(node, "finalbody", [])]
            blocks += [handler.body for handler in getattr(node, "handlers", [])]
            for block in blocks:
                names += _bindings(block)
    return names


def _exported(module_file: Path) -> List[str]:
    """The names ``from MODULE import *`` binds: its ``__all__``, or every top-level name without a
    leading underscore."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return [n for n in _bindings(tree.body) if not n.startswith("_")]


def build_index(s3prl_dir: Path) -> Dict[str, str]:
    """entry name -> the module that defines it, read from s3prl's sources without importing them."""
    hub_file = s3prl_dir / "hub.py"
    tree = ast.parse(hub_file.read_text(encoding="utf-8"))
    index: Dict[str, str] = {}
    for node in tree.body:  # in order: a later import's names win, as in Python
        if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
            continue
        if any(a.name == "*" for a in node.names):
            path = s3prl_dir.parent.joinpath(*node.module.split(".")).with_suffix(".py")
            if path.is_file():  # otherwise an unexpected layout: the fallback (the real hub) stays correct
                index.update({name: node.module for name in _exported(path)})
        else:
            index.update({(a.asname or a.name): node.module for a in node.names})
    return index


class LazyHub(types.ModuleType):
    """``s3prl.hub`` whose entries are imported on first access."""

    def __init__(self, index: Dict[str, str], hub_file: Path) -> None:
        super().__init__(HUB_MODULE, "s3prl.hub, filled on demand by lighthubert_s3prl.upstream.lazy_hub")
        self.__dict__["_lazy_index"] = index
        self.__dict__["_lazy_hub_file"] = hub_file
        self.__dict__["_lazy_complete"] = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        module = self._lazy_index.get(name)
        if module is not None:
            try:
                value = getattr(importlib.import_module(module), name)
            except AttributeError:  # bound only on a branch not taken: as the real hub would have it
                pass
            else:
                self.__dict__.setdefault(name, value)
                return self.__dict__[name]
        self.load_everything()
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 's3prl.hub' has no attribute {name!r}") from None

    def __dir__(self) -> List[str]:
        return sorted(set(self.__dict__) | set(self._lazy_index))

    def load_everything(self) -> None:
        """Execute the real ``hub.py`` and take every name this module does not already hold."""
        if self._lazy_complete:
            return
        self.__dict__["_lazy_complete"] = True
        logger.debug("s3prl.hub: a name outside the index was asked for; importing every upstream")
        spec = importlib.util.spec_from_file_location("s3prl._full_hub", self._lazy_hub_file)
        full = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(full)
        for key, value in vars(full).items():
            if not key.startswith("__"):
                self.__dict__.setdefault(key, value)
        # hub.options() lists the callables of its own globals: point it at this module's names
        options = self.__dict__.get("options")
        if isinstance(options, types.FunctionType):
            self.__dict__["options"] = types.FunctionType(options.__code__, self.__dict__, "options",
                                                         options.__defaults__)


#: set (to anything) to let s3prl import its whole hub as usual
FULL_HUB_ENV = "LIGHTHUBERT_S3PRL_FULL_HUB"


def install_unless_disabled() -> Optional[LazyHub]:
    """:func:`install`, unless :data:`FULL_HUB_ENV` asks for s3prl's own hub."""
    return None if os.environ.get(FULL_HUB_ENV) else install()


def install() -> Optional[LazyHub]:
    """Put a :class:`LazyHub` in place of ``s3prl.hub``; returns it (``None`` when the real one is loaded)."""
    current = sys.modules.get(HUB_MODULE)
    if isinstance(current, LazyHub):
        return current
    if current is not None:
        return None
    import s3prl

    s3prl_dir = Path(s3prl.__file__).resolve().parent
    hub = LazyHub(build_index(s3prl_dir), s3prl_dir / "hub.py")
    sys.modules[HUB_MODULE] = hub
    s3prl.hub = hub  # type: ignore[attr-defined]
    return hub
