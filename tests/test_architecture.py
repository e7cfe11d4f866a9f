"""The package's import graph: layers import only downward, and no module imports itself back.

Every ``import`` and ``from ... import`` in every module counts, including those inside functions and under
``if TYPE_CHECKING``: a lazy import is still a dependency, it only fails later. Relative imports are
resolved, and ``from package import name`` points at ``package.name`` when that is a module. The layers,
bottom first (docs/architecture.md explains what lives where):

    utilities  io_utils, hardware, cpu_budget, machine_load (import nothing from the package)
    model      model/
    upstream   upstream/, the root run_downstream module (kept because users type its path) and the top-level
               package, which re-exports the config API and register() and installs the s3prl.hub hook
    superb, training   side by side: each may use the layers below, never the other
    commands   commands/, __main__ and the root cli module (the path earlier releases documented)

A module may import its own layer and the layers below it. The hidden-set folder's bundle of inference
modules is checked here too: it must hold everything those modules import, or the folder cannot load.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

import pytest

PACKAGE = "lighthubert_s3prl"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

RANK: Dict[str, int] = {"utilities": 0, "model": 1, "upstream": 2, "superb": 3, "training": 3, "commands": 4}
SUBPACKAGE_LAYER: Dict[str, str] = {"model": "model", "upstream": "upstream", "superb": "superb",
                                    "training": "training", "commands": "commands"}
# root modules, by name relative to the package ("" is the package's own __init__)
ROOT_LAYER: Dict[str, str] = {"io_utils": "utilities", "hardware": "utilities", "cpu_budget": "utilities",
                              "machine_load": "utilities", "": "upstream",
                              "run_downstream": "upstream", "__main__": "commands", "cli": "commands"}
# installed from downstream_configs/ by setup.py: YAML and text files, no code
DATA_PACKAGES = ("downstream_configs",)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def find_modules(package_dir: Path, package: str) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported_names(node: ast.AST, base: str, known: Mapping[str, Path]) -> Iterable[str]:
    """The modules an import statement names; ``base`` is the package relative imports start from."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = base.split(".")
            parts = parts[:len(parts) - (node.level - 1)]
            origin = ".".join(parts + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        for alias in node.names:
            submodule = f"{origin}.{alias.name}"
            yield submodule if submodule in known else origin


def import_edges(package_dir: Path, package: str) -> Tuple[List[Edge], List[Edge]]:
    """(edges between the package's modules, imports of package paths that name no module)."""
    known = find_modules(package_dir, package)
    data = {f"{package}.{name}" for name in DATA_PACKAGES}
    edges, unresolved = [], []
    for name, path in known.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _imported_names(node, base, known):
                if target != package and not target.startswith(package + "."):
                    continue
                if any(target == d or target.startswith(d + ".") for d in data):
                    continue
                edge = Edge(name, target, node.lineno)
                if target not in known:
                    unresolved.append(edge)
                elif target != name:
                    edges.append(edge)
    return edges, unresolved


def layer_of(module: str, package: str) -> Optional[str]:
    """The layer of a module of ``package``; None for a root module no layer lists."""
    relative = module[len(package) + 1:] if module != package else ""
    if relative in ROOT_LAYER:
        return ROOT_LAYER[relative]
    return SUBPACKAGE_LAYER.get(relative.split(".")[0])


def layer_violations(edges: Iterable[Edge], modules: Iterable[str], package: str) -> List[str]:
    """Every module outside the layers, every import from a utility, and every import that goes up or sideways."""
    problems = [f"{m} belongs to no layer: put it in a layer's subpackage, or make it a root utility and list it "
                f"in ROOT_LAYER" for m in modules if layer_of(m, package) is None]
    for edge in edges:
        upper, lower = layer_of(edge.importer, package), layer_of(edge.imported, package)
        if upper is None or lower is None:
            continue
        if upper == "utilities":
            problems.append(f"{edge}: a root utility must import nothing from the package")
        elif upper != lower and RANK[lower] >= RANK[upper]:
            way = "sideways" if RANK[lower] == RANK[upper] else "upward"
            problems.append(f"{edge}: {way} import from the {upper} layer into the {lower} layer")
    return problems


def _reachable(graph: Mapping[str, Mapping[str, Edge]], start: str) -> Set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), {}):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def import_cycles(edges: Iterable[Edge]) -> List[List[Edge]]:
    """A shortest cycle through each group of modules that reach each other by imports (one per group)."""
    graph: Dict[str, Dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    reach = {node: _reachable(graph, node) for node in graph}
    cycles, done = [], set()
    for start in sorted(graph):
        if start in done or start not in reach[start]:
            continue
        group = {n for n in reach[start] if start in reach.get(n, ())}
        done |= group
        # breadth-first from start inside its group: the first path back to start is a shortest cycle
        paths: Dict[str, List[Edge]] = {start: []}
        queue = [start]
        while queue:
            node = queue.pop(0)
            if start in graph[node]:
                cycles.append(paths[node] + [graph[node][start]])
                break
            for target, edge in sorted(graph[node].items()):
                if target in group and target not in paths:
                    paths[target] = paths[node] + [edge]
                    queue.append(target)
    return cycles


def describe_cycles(cycles: List[List[Edge]]) -> List[str]:
    return ["cycle: " + "; ".join(map(str, cycle)) for cycle in cycles]


# ----------------------------------------------------------------------------------------------------
# the package


def test_every_package_import_names_a_module():
    _, unresolved = import_edges(PACKAGE_DIR, PACKAGE)
    assert not unresolved, "imports of paths that are no module of the package (moved or misspelt?):\n" + \
        "\n".join(map(str, unresolved))


def test_no_import_cycles():
    edges, _ = import_edges(PACKAGE_DIR, PACKAGE)
    problems = describe_cycles(import_cycles(edges))
    assert not problems, "\n".join(problems)


def test_layers_import_only_downward():
    edges, _ = import_edges(PACKAGE_DIR, PACKAGE)
    problems = layer_violations(edges, find_modules(PACKAGE_DIR, PACKAGE), PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_command_names_a_function_of_the_package():
    """The dispatcher imports commands by name at run time, which the import graph cannot see."""
    from lighthubert_s3prl.commands.cli import COMMANDS

    known = find_modules(PACKAGE_DIR, PACKAGE)
    problems = []
    for command, (target, _) in COMMANDS.items():
        module, _, function = target.partition(":")
        tree = ast.parse(known[module].read_text(encoding="utf-8")) if module in known else None
        if tree is None or function not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}:
            problems.append(f"{command}: {target} is no function of the package")
    assert not problems, "\n".join(problems)


def test_hidden_set_bundle_holds_everything_it_imports():
    """The folder bundles modules by path; each one's imports and parent packages must be bundled too."""
    from lighthubert_s3prl.upstream.hidden_set import BUNDLE_ROOT_INIT, INFERENCE_MODULES

    known = find_modules(PACKAGE_DIR, PACKAGE)
    by_path = {path.relative_to(PACKAGE_DIR).as_posix(): name for name, path in known.items()}
    missing_files = [p for p in INFERENCE_MODULES if p not in by_path]
    assert not missing_files, f"INFERENCE_MODULES names files the package does not have: {missing_files}"
    bundled = {by_path[p] for p in INFERENCE_MODULES}
    assert PACKAGE not in bundled, "the bundle's root __init__ is generated (BUNDLE_ROOT_INIT), not copied"
    root_init = ast.parse(BUNDLE_ROOT_INIT.format(version="0"))
    assert not [n for n in ast.walk(root_init) if isinstance(n, (ast.Import, ast.ImportFrom))]
    bundled.add(PACKAGE)  # the generated root imports nothing
    assert "lighthubert_s3prl.upstream.expert" in bundled  # the module the folder's expert.py imports
    edges, _ = import_edges(PACKAGE_DIR, PACKAGE)
    needed: Set[str] = set()
    for module in bundled:
        parts = module.split(".")
        needed.update(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        needed.update(e.imported for e in edges if e.importer == module and module != PACKAGE)
    missing = sorted(needed - bundled)
    assert not missing, f"the hidden-set bundle lacks modules its modules import: {missing}; add them to " \
                        "INFERENCE_MODULES (or drop the import from the bundled module)"


# ----------------------------------------------------------------------------------------------------
# the checker itself, on a planted package


def _plant(root: Path, files: Mapping[str, str]) -> Path:
    package_dir = root / "pkg"
    for name, text in files.items():
        path = package_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package_dir


PLANTED = {
    "__init__.py": "",
    "io_utils.py": "",
    "model/__init__.py": "",
    "model/config.py": "from ..io_utils import x\n",
    "model/checkpoint.py": "from .compact import y\n",
    "model/compact.py": "def load():\n    from .checkpoint import z\n",
    "upstream/__init__.py": "",
    "upstream/expert.py": "from ..model import config\n",
    "upstream/hubconf.py": "",
    "commands/__init__.py": "",
    "commands/cli.py": "import pkg.upstream.expert\n",
}


def test_checker_names_an_upward_import_and_a_cycle(tmp_path):
    files = dict(PLANTED)
    files["model/config.py"] += "from ..upstream.hubconf import ENTRIES\n"  # model reaching up
    package_dir = _plant(tmp_path, files)
    edges, unresolved = import_edges(package_dir, "pkg")
    assert unresolved == []
    cycles = describe_cycles(import_cycles(edges))
    assert cycles == ["cycle: pkg.model.checkpoint imports pkg.model.compact (line 1); "
                      "pkg.model.compact imports pkg.model.checkpoint (line 2)"]
    assert layer_violations(edges, find_modules(package_dir, "pkg"), "pkg") == [
        "pkg.model.config imports pkg.upstream.hubconf (line 2): upward import from the model layer into the "
        "upstream layer"]


def test_checker_names_sideways_imports_utility_imports_and_stray_modules(tmp_path):
    files = dict(PLANTED)
    files.update({"superb/__init__.py": "", "superb/runner.py": "from ..training import trainer\n",
                  "training/__init__.py": "", "training/trainer.py": "",
                  "stray.py": "", "io_utils.py": "from .model.config import x\n"})
    package_dir = _plant(tmp_path, files)
    edges, _ = import_edges(package_dir, "pkg")
    problems = layer_violations(edges, find_modules(package_dir, "pkg"), "pkg")
    assert problems == [
        "pkg.stray belongs to no layer: put it in a layer's subpackage, or make it a root utility and list it "
        "in ROOT_LAYER",
        "pkg.io_utils imports pkg.model.config (line 1): a root utility must import nothing from the package",
        "pkg.superb.runner imports pkg.training.trainer (line 1): sideways import from the superb layer into the "
        "training layer",
    ]


def test_checker_flags_a_stale_path(tmp_path):
    files = dict(PLANTED)
    files["commands/cli.py"] += "def run():\n    from ..profile import analytic_macs\n"
    edges, unresolved = import_edges(_plant(tmp_path, files), "pkg")
    assert [str(e) for e in unresolved] == ["pkg.commands.cli imports pkg.profile (line 3)"]


@pytest.mark.parametrize("module, layer", [
    ("lighthubert_s3prl", "upstream"), ("lighthubert_s3prl.io_utils", "utilities"),
    ("lighthubert_s3prl.run_downstream", "upstream"), ("lighthubert_s3prl.__main__", "commands"),
    ("lighthubert_s3prl.cli", "commands"),
    ("lighthubert_s3prl.superb.runner", "superb"), ("lighthubert_s3prl.model", "model"),
])
def test_layer_of_known_modules(module, layer):
    assert layer_of(module, PACKAGE) == layer
