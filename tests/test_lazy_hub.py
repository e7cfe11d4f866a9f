"""The lazily filled ``s3prl.hub``: every entry the real hub offers resolves to the same object, only the
asked-for upstream is imported, and anything the index cannot place falls back to the real hub.

The reference is the real ``hub.py`` executed by the interpreter (under another module name, so that this
process's ``s3prl.hub`` is left alone): Python's own star-import semantics, not our reading of the sources.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lighthubert_s3prl.upstream import lazy_hub
from lighthubert_s3prl.upstream.lazy_hub import LazyHub, build_index


@pytest.fixture(scope="module")
def s3prl_dir() -> Path:
    import s3prl

    return Path(s3prl.__file__).resolve().parent


@pytest.fixture(scope="module")
def real_hub(s3prl_dir):
    spec = importlib.util.spec_from_file_location("s3prl._reference_hub", s3prl_dir / "hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_entry_resolves_to_the_real_hubs_object_without_the_fallback(s3prl_dir, real_hub):
    lazy = LazyHub(build_index(s3prl_dir), s3prl_dir / "hub.py")
    names = real_hub.options()  # every callable the real hub exposes
    assert len(names) > 150 and {"fbank_no_cmvn", "hubert_local", "lighthubert_small", "wavlm_base_plus"} <= set(names)
    assert set(names) <= set(dir(lazy))  # s3prl's -u help text lists dir(hub), before anything is imported
    for name in names:
        assert getattr(lazy, name) is getattr(real_hub, name), name
    assert not lazy._lazy_complete


def test_names_outside_the_index_load_the_real_hub(s3prl_dir, real_hub):
    lazy = LazyHub(build_index(s3prl_dir), s3prl_dir / "hub.py")
    lazy.my_upstream = len  # registered before anything was loaded, as our entries are
    lazy.lighthubert_small = abs  # ... and replacing one of s3prl's, which the full load must not undo
    assert sorted(lazy.options()) == sorted(real_hub.options() + ["my_upstream"])
    assert lazy._lazy_complete and lazy.my_upstream is len and lazy.lighthubert_small is abs
    with pytest.raises(AttributeError, match="module 's3prl.hub' has no attribute 'no_such_upstream'"):
        lazy.no_such_upstream


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_index_follows_star_import_rules(tmp_path):
    """Later imports win; ``__all__`` limits a star import; names bound in ``try``/``if`` and by imports are
    exported; underscored names are not; a named import in hub.py maps that name alone."""
    pkg = tmp_path / "fake"
    _write(pkg / "hub.py", """
        from fake.a import *
        from fake.b import *
        from fake.c import only_this
        from fake.missing import *
        def options():
            return []
    """)
    _write(pkg / "a.py", """
        import os.path
        from math import sqrt as root
        def shared(): pass
        def from_a(): pass
        def _private(): pass
        try:
            from numpy import array
        except ImportError:
            array = None
        if True:
            conditional = 1
    """)
    _write(pkg / "b.py", """
        __all__ = ["shared", "listed"]
        def shared(): pass
        def listed(): pass
        def unlisted(): pass
    """)
    _write(pkg / "c.py", "def only_this(): pass\ndef other(): pass\n")
    assert build_index(pkg) == {
        "os": "fake.a", "root": "fake.a", "shared": "fake.b", "from_a": "fake.a", "array": "fake.a",
        "conditional": "fake.a", "listed": "fake.b", "only_this": "fake.c",
    }


def test_install_replaces_the_hub_only_before_it_is_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "s3prl.hub", raising=False)
    import s3prl

    monkeypatch.setattr(s3prl, "hub", None, raising=False)
    hub = lazy_hub.install()
    assert isinstance(hub, LazyHub) and sys.modules["s3prl.hub"] is hub and s3prl.hub is hub
    assert lazy_hub.install() is hub  # idempotent
    from s3prl import hub as imported

    assert imported is hub
    monkeypatch.setitem(sys.modules, "s3prl.hub", object())
    assert lazy_hub.install() is None  # the real hub is already in use: leave it


PROBE = """
import json, sys, time
started = time.perf_counter()
from lighthubert_s3prl.upstream import run_downstream as ours
from lighthubert_s3prl.upstream import lazy_hub
lazy_hub.install()
ours.prepare_runtime()
ours.register()
from s3prl import run_downstream, hub
from s3prl.downstream.runner import Runner
entries = {name: getattr(hub, name).__module__ for name in ("fbank_no_cmvn", "lighthubert_local")}
print(json.dumps({"entries": entries, "loaded": sorted(m for m in ("transformers", "sklearn", "fairseq")
                                                      if m in sys.modules)}))
"""


def test_a_run_imports_only_the_upstream_it_uses(tmp_path):
    """In a fresh process as the runner starts one: s3prl's runner and our entries load, and the packages
    only other upstreams need (transformers, sklearn) are never imported."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["entries"] == {"fbank_no_cmvn": "s3prl.upstream.baseline.hubconf",
                                 "lighthubert_local": "lighthubert_s3prl.upstream.hubconf"}
    assert report["loaded"] == []


@pytest.mark.parametrize("setting, lazy", [(None, True), ("", True), ("1", False)])
def test_the_full_hub_switch(setting, lazy, monkeypatch):
    calls = []
    monkeypatch.setattr(lazy_hub, "install", lambda: calls.append("install") or "hub")
    if setting is None:
        monkeypatch.delenv(lazy_hub.FULL_HUB_ENV, raising=False)
    else:
        monkeypatch.setenv(lazy_hub.FULL_HUB_ENV, setting)
    assert lazy_hub.install_unless_disabled() == ("hub" if lazy else None)
    assert calls == (["install"] if lazy else [])


TEACHER_PROBE = """
import json, sys
from lighthubert_s3prl.training.teachers import S3prlTeacher
S3prlTeacher("fbank")
print(json.dumps({"hub": type(sys.modules["s3prl.hub"]).__name__,
                  "loaded": sorted(m for m in ("transformers", "sklearn") if m in sys.modules)}))
"""


def test_a_distillation_teacher_loads_through_the_lazy_hub(tmp_path):
    out = subprocess.run([sys.executable, "-c", TEACHER_PROBE], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"hub": "LazyHub", "loaded": []}
