"""A subnet grid: many subnets of one supernet checkpoint through the same SUPERB tasks.

LightHuBERT's point is choice between subnets, so the paper evaluates several per task. ``run_superb.sh -k
CKPT --subnets small,budget:small:20e6,random:small:3,my.yaml`` (or a grid file) gives each subnet its own
root, ``EXP/<name>/``, run exactly as a single-subnet run (skips, resumes, logs, summary), with the subnet
exported once as a compact checkpoint (``EXP/<name>/model.pt``) that all its units load: a unit then reads
only its subnet's weights instead of slicing the supernet file again. ``EXP/grid.json`` records each
member's name, spec, architecture and parameter count for ``collect``.

A grid file is YAML or JSON with a ``subnets`` list whose items are specs (``small``, ``random:small:3``,
a subnet file) or ``{name: NAME, subnet: SPEC-OR-DICT}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from .options import RunnerError
from .units import read_json, write_json

GRID_FILE = "grid.json"
MODEL_FILE = "model.pt"
#: MACs are quoted per second of audio, counted on an utterance this long (``profile``'s default): the
#: attention's share grows with length, so the per-second figure depends on it
MACS_SECONDS = 10.0
_SUBNET_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class GridMember:
    """One subnet of the grid: where its units run and what they load."""

    name: str
    spec: Union[str, Dict[str, Any]]
    subnet: Any  # lighthubert_s3prl.model.config.SubnetConfig
    params: int
    root: Path
    gmacs_per_second: float  # analytic, on a MACS_SECONDS utterance

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    def record(self) -> Dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "subnet": self.subnet.to_dict(), "params": self.params,
                "gmacs_per_second": self.gmacs_per_second, "macs_utterance_seconds": MACS_SECONDS,
                "root": str(self.root), "model": str(self.model)}


def member_name(spec: Union[str, Mapping[str, Any]]) -> str:
    """A folder name for a spec: a subnet file's stem, else the spec with every ':' or odd character a '-'."""
    text = str(spec)
    if isinstance(spec, str) and Path(spec).suffix.lower() in _SUBNET_FILE_SUFFIXES:
        return Path(spec).stem
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.") or "subnet"


def read_grid_items(text: str) -> List[Union[str, Dict[str, Any]]]:
    """``--subnets``: a comma-separated list of specs, or one grid file holding a ``subnets`` list."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise RunnerError("--subnets is empty; give specs such as small,budget:small:20e6 or a grid YAML file")
    if len(items) == 1 and Path(items[0]).suffix.lower() in _SUBNET_FILE_SUFFIXES and Path(items[0]).is_file():
        try:
            data = yaml.safe_load(Path(items[0]).read_text())
        except yaml.YAMLError as err:
            raise RunnerError(f"--subnets {items[0]}: cannot parse it ({err})") from None
        if isinstance(data, Mapping) and "subnets" in data:
            listed = data["subnets"]
            if not isinstance(listed, list) or not listed:
                raise RunnerError(f"--subnets {items[0]}: 'subnets' must be a non-empty list of subnet specs")
            return list(listed)
    return list(items)


def plan_grid(ckpt: str, items: Sequence[Union[str, Mapping[str, Any]]], root: Path) -> List[GridMember]:
    """Resolve every item against the checkpoint; names must be unique (they are folders)."""
    from lighthubert_s3prl.model.checkpoint import load_checkpoint
    from lighthubert_s3prl.model.config import ConfigError, count_parameters
    from lighthubert_s3prl.model.cost import analytic_macs

    loaded = load_checkpoint(ckpt)
    members: List[GridMember] = []
    for item in items:
        if isinstance(item, Mapping):
            if "subnet" not in item:
                raise RunnerError(f"grid item {dict(item)!r} needs a 'subnet' (a spec or a subnet dict)")
            spec, name = item["subnet"], str(item.get("name") or member_name(item["subnet"]))
        else:
            spec, name = str(item), member_name(str(item))
        if isinstance(spec, str) and Path(spec).suffix.lower() in _SUBNET_FILE_SUFFIXES:
            if not Path(spec).is_file():
                raise RunnerError(f"--subnets: subnet file {spec} does not exist")
            spec = str(Path(spec).resolve())
        try:
            subnet = loaded.subnet(spec)
        except ConfigError as err:
            raise RunnerError(f"--subnets: {name}: {err}") from None
        gmacs = analytic_macs(subnet, loaded.model_cfg, MACS_SECONDS) / MACS_SECONDS / 1e9
        members.append(GridMember(name, spec if isinstance(spec, str) else dict(spec), subnet,
                                  count_parameters(subnet, loaded.model_cfg), root / name, gmacs))
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RunnerError(f"--subnets: two subnets would share the folder {', '.join(repeated)}; give them names "
                          "in a grid file ({name: NAME, subnet: SPEC})")
    return members


def export_member(ckpt: str, member: GridMember) -> Path:
    """The member's compact checkpoint, written once; an existing one must hold the same subnet."""
    from lighthubert_s3prl.model.checkpoint import load_checkpoint
    from lighthubert_s3prl.model.export import export_compact

    if member.model.is_file():
        held = load_checkpoint(member.model).default_subnet
        if held != member.subnet:
            raise RunnerError(f"{member.model} holds {held.describe()}, not {member.subnet.describe()} "
                              f"({member.name}); choose another --exp-root")
        return member.model
    member.root.mkdir(parents=True, exist_ok=True)
    export_compact(ckpt, member.subnet, member.model)  # atomic: a crash leaves no half-written model
    return member.model


def read_grid_record(root: Path) -> Optional[Dict[str, Any]]:
    """The ``grid.json`` of ``root``, or None when ``root`` is no grid."""
    path = Path(root) / GRID_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        raise RunnerError(f"{path} is not a grid record (unreadable, or no 'members' list); was it written by "
                          "run_superb --subnets?")
    return data


def write_grid_record(root: Path, ckpt: str, members: Sequence[GridMember]) -> Path:
    """``EXP/grid.json``: the checkpoint and every member, for ``collect`` and for the next run."""
    root.mkdir(parents=True, exist_ok=True)
    return write_json(root / GRID_FILE, {"checkpoint": ckpt, "members": [m.record() for m in members]})
