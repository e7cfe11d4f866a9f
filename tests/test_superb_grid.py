"""The subnet grid: several subnets of one checkpoint through the same tasks, each in its own root.

Planning and exporting use a real (tiny) checkpoint; the s3prl processes are the recorder of
``test_superb_runner_states``, one per subnet root, so the launches can be counted exactly.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest

from lighthubert_s3prl.model.checkpoint import load_checkpoint
from lighthubert_s3prl.model.config import SubnetConfig, count_parameters
from lighthubert_s3prl.superb import grid
from lighthubert_s3prl.superb import runner as runner_module
from lighthubert_s3prl.superb.options import RunnerError, RunOptions
from lighthubert_s3prl.superb.runner import SuperbRunner, run_grid

from .test_superb_runner_states import FakeS3prl

NARROW = {"embed_dim": 64, "layer_num": 10, "heads_num": 1, "ffn_embed": 192}
MID = {"embed_dim": 96, "layer_num": 11, "heads_num": 1, "ffn_embed": 256}
FULL = {"embed_dim": 128, "layer_num": 12, "heads_num": 2, "ffn_embed": 512}
GRID_YAML = (f"subnets:\n  - {{name: narrow, subnet: {json.dumps(NARROW)}}}\n"
             f"  - {{name: mid, subnet: {json.dumps(MID)}}}\n  - {{name: full, subnet: {json.dumps(FULL)}}}\n")
MEMBERS = ["narrow", "mid", "full"]
UNITS = ["ks", "er_fold1"]


class GridFake:
    """One recorder per subnet root; counts launches by "<mode> <member>/<unit>"."""

    def __init__(self, root: Path, interrupt_at: str = "") -> None:
        self.root = root
        self.fakes = {m: FakeS3prl(root / m) for m in MEMBERS}
        self.launches: List[str] = []
        self.commands: List[List[str]] = []
        self.interrupt_at = interrupt_at
        self.lock = threading.Lock()

    def __call__(self, cmd: List[str], log_path: Path):
        path = Path(cmd[cmd.index("-p") + 1]) if "-p" in cmd else Path(cmd[cmd.index("-e") + 1]).parent
        member, *rest = path.relative_to(self.root).parts
        unit = "er_" + rest[1] if rest[0] == "er" else rest[0]
        mode = cmd[cmd.index("-m", cmd.index("lighthubert_s3prl.run_downstream")) + 1]
        with self.lock:
            self.launches.append(f"{mode} {member}/{unit}")
            self.commands.append(cmd)
        if mode == "train" and f"{member}/{unit}" == self.interrupt_at:
            raise KeyboardInterrupt
        return self.fakes[member](cmd, log_path)


@pytest.fixture
def grid_file(tmp_path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID_YAML)
    return path


def options(root: Path, ckpt: Path, parallel: int = 2, dry_run: bool = False) -> RunOptions:
    tasks = ["ks", "er"]
    return RunOptions(upstream="lighthubert_local", tasks=tasks, data={t: {"root": "/data"} for t in tasks},
                      exp_root=root, ckpt=str(ckpt), device="cpu", gpus=0, er_folds=["fold1"], parallel=parallel,
                      dry_run=dry_run)


@pytest.fixture
def fake_grid(tmp_path, monkeypatch):
    def make(interrupt_at: str = "") -> GridFake:
        recorder = GridFake(tmp_path / "exp", interrupt_at)
        monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: recorder(cmd, log_path))
        return recorder
    monkeypatch.setattr(SuperbRunner, "build_configs", lambda self, tasks: None)
    return make


def test_every_subnet_runs_every_unit_once_from_its_own_compact_export(fake_grid, grid_file, tiny_ckpt, tmp_path):
    recorder = fake_grid()
    root = tmp_path / "exp"
    outcomes = run_grid(options(root, tiny_ckpt), str(grid_file))
    assert sorted((o.unit, o.status) for o in outcomes) == sorted((f"{m}/{u}", "done") for m in MEMBERS for u in UNITS)
    assert Counter(recorder.launches) == Counter(f"{mode} {m}/{u}" for m in MEMBERS for u in UNITS
                                                 for mode in ("train", "evaluate"))
    cfg = load_checkpoint(tiny_ckpt).model_cfg
    record = json.loads((root / "grid.json").read_text())
    assert [m["name"] for m in record["members"]] == MEMBERS and record["checkpoint"] == str(tiny_ckpt)
    for member, spec in zip(record["members"], (NARROW, MID, FULL)):
        subnet = SubnetConfig.from_dict(spec)
        assert member["params"] == count_parameters(subnet, cfg)
        assert load_checkpoint(root / member["name"] / "model.pt").default_subnet == subnet
        assert (root / member["name"] / "summary.txt").is_file()
    trains = [c for c in recorder.commands if "train" in c]
    for name in MEMBERS:  # every unit of a member loads that member's export, with no -g
        mine = [c for c in trains if str(root / name) in c[c.index("-p") + 1]]
        assert len(mine) == 2 and all(c[c.index("-k") + 1] == str(root / name / "model.pt") and "-g" not in c
                                      for c in mine)


def test_an_interrupted_grid_resumes_with_nothing_lost_or_run_twice(fake_grid, grid_file, tiny_ckpt, tmp_path):
    root = tmp_path / "exp"
    first = fake_grid(interrupt_at="mid/er_fold1")
    with pytest.raises(KeyboardInterrupt):
        run_grid(options(root, tiny_ckpt), str(grid_file))
    done = {f"{m}/{u}" for m in MEMBERS for u in UNITS
            if (root / m / (u.replace("er_", "er/")) / "superb_done").is_file()}
    assert "mid/er_fold1" not in done and not any(launch.endswith("full/er_fold1") for launch in first.launches)
    exported = {m: (root / m / "model.pt").stat().st_mtime_ns for m in MEMBERS}
    again = fake_grid()
    outcomes = run_grid(options(root, tiny_ckpt), str(grid_file))
    assert {o.unit: o.status for o in outcomes} == {f"{m}/{u}": ("skipped" if f"{m}/{u}" in done else "done")
                                                    for m in MEMBERS for u in UNITS}
    launched = Counter(launch.split()[1] for launch in again.launches)
    assert not set(launched) & done  # finished units are not run again
    assert all(launched[f"{m}/{u}"] == 2 for m in MEMBERS for u in UNITS if f"{m}/{u}" not in done)
    assert {m: (root / m / "model.pt").stat().st_mtime_ns for m in MEMBERS} == exported  # exported once


def test_a_dry_run_plans_every_member_and_writes_nothing(fake_grid, grid_file, tiny_ckpt, tmp_path, capsys):
    recorder = fake_grid()
    root = tmp_path / "exp"
    outcomes = run_grid(options(root, tiny_ckpt, dry_run=True), str(grid_file))
    assert len(outcomes) == 6 and recorder.launches == [] and not root.exists()
    out = capsys.readouterr().out
    assert all(str(root / m / "model.pt") in out for m in MEMBERS)


def test_a_root_whose_export_holds_another_subnet_is_refused(fake_grid, grid_file, tiny_ckpt, tmp_path):
    fake_grid()
    root = tmp_path / "exp"
    run_grid(options(root, tiny_ckpt), str(grid_file))
    (tmp_path / "swapped.yaml").write_text(GRID_YAML.replace("name: narrow", "name: tmp").replace("name: mid", "name: narrow"))
    with pytest.raises(RunnerError, match=r"narrow/model.pt holds .*not .*choose another --exp-root"):
        run_grid(options(root, tiny_ckpt), str(tmp_path / "swapped.yaml"))


@pytest.mark.parametrize("spec, name", [("small", "small"), ("budget:small:20e6", "budget-small-20e6"),
                                        ("random:small:3", "random-small-3"), ("sub/my_net.yaml", "my_net"),
                                        ("base-max", "base-max")])
def test_member_names_are_folder_names(spec, name):
    assert grid.member_name(spec) == name


def test_grid_items_from_a_list_or_a_file(grid_file, tmp_path):
    assert grid.read_grid_items("small, base,budget:small:20e6") == ["small", "base", "budget:small:20e6"]
    assert [i["name"] for i in grid.read_grid_items(str(grid_file))] == MEMBERS
    subnet_file = tmp_path / "one.yaml"
    subnet_file.write_text("subnet: small\n")  # a subnet file, not a grid file: one member
    assert grid.read_grid_items(str(subnet_file)) == [str(subnet_file)]


@pytest.mark.parametrize("text, message", [
    (" , ", "--subnets is empty"),
    ("GRID:subnets: []\n", "'subnets' must be a non-empty list"),
    ("GRID:subnets: [{name: x}]\n", "needs a 'subnet'"),
    ("GRID:subnets: [{name: a, subnet: {embed_dim: 64, layer_num: 10, heads_num: 1, ffn_embed: 192}}, "
     "{name: a, subnet: {embed_dim: 128, layer_num: 12, heads_num: 2, ffn_embed: 512}}]\n", "share the folder a"),
    ("small", "small: subnet does not fit checkpoint"),
    ("missing.yaml", "subnet file missing.yaml does not exist"),
])
def test_bad_grids_are_refused_with_the_reason(text, message, tiny_ckpt, tmp_path):
    if text.startswith("GRID:"):
        path = tmp_path / "bad.yaml"
        path.write_text(text[len("GRID:"):])
        text = str(path)
    with pytest.raises(RunnerError, match=message):
        grid.plan_grid(str(tiny_ckpt), grid.read_grid_items(text), tmp_path / "exp")


def test_the_command_line_refuses_a_grid_without_its_checkpoint_or_with_g(tiny_ckpt, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    base = ["-u", "lighthubert_local", "-k", str(tiny_ckpt), "--tasks", "ks", "--data", str(corpus), "--gpus", "0",
            "--exp-root", str(tmp_path / "e"), "--dry-run"]
    subnet = tmp_path / "s.yaml"
    subnet.write_text("subnet: small\n")
    assert runner_module.main(base + ["--subnets", "small", "-g", str(subnet)]) == 2
    assert "--subnets and -g both choose the subnet" in capsys.readouterr().err
    assert runner_module.main(["-u", "hubert"] + base[2:] + ["--subnets", "small"]) == 2
    assert "is not a LightHuBERT entry" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# collect over a grid, and the figure


@pytest.mark.parametrize("points, higher, front", [
    ([(1, 50), (2, 60), (3, 55), (4, 70)], True, [0, 1, 3]),  # (3, 55) is beaten by the smaller (2, 60)
    ([(1, 50), (1, 52), (2, 52), (3, 53)], True, [1, 3]),  # equal size: only the better; equal score: the smaller
    ([(3, 10.0), (1, 12.0), (2, 9.0)], False, [1, 2]),  # an error rate: lower is better
    ([(5, 1.0)], True, [0]),
    ([], True, []),
])
def test_pareto_front_keeps_exactly_the_undominated_points(points, higher, front):
    from lighthubert_s3prl.superb.grid_figure import pareto_front

    assert pareto_front(points, higher) == front
    # independent check: a point is on the front iff no other point is no larger and strictly better, or
    # strictly smaller and no worse
    sign = 1 if higher else -1

    def dominated(i):
        ci, vi = points[i]
        return any((cj <= ci and sign * vj > sign * vi) or (cj < ci and sign * vj >= sign * vi)
                   for j, (cj, vj) in enumerate(points) if j != i)
    assert sorted(front) == [i for i in range(len(points)) if not dominated(i)]


@pytest.mark.parametrize("scale, published", [("full", True), ("mini", False)])
def test_collect_gives_one_row_per_subnet_and_the_figure(scale, published, fake_grid, grid_file, tiny_ckpt,
                                                         tmp_path, monkeypatch):
    from dataclasses import replace

    from lighthubert_s3prl.model.cost import analytic_macs
    from lighthubert_s3prl.superb import collect as collect_module
    from lighthubert_s3prl.superb import grid_figure

    fake_grid()
    root = tmp_path / "exp"
    run_grid(replace(options(root, tiny_ckpt), scale=scale), str(grid_file))
    drawn: Dict[str, list] = {}
    real_draw = grid_figure.draw
    monkeypatch.setattr(grid_figure, "draw", lambda points, label, path: (drawn.setdefault("points", list(points)),
                                                                          real_draw(points, label, path))[1])
    table = collect_module.collect([root], references="none")
    paths = collect_module.write_outputs(table, tmp_path / "results")
    cfg = load_checkpoint(tiny_ckpt).model_cfg
    rows = [r for r in table.rows if r.kind == "ours"]
    assert [r.name for r in rows] == MEMBERS
    for row, spec in zip(rows, (NARROW, MID, FULL)):
        subnet = SubnetConfig.from_dict(spec)
        assert row.params_m == pytest.approx(count_parameters(subnet, cfg) / 1e6)
        assert row.gmacs_per_s == pytest.approx(analytic_macs(subnet, cfg, 10.0) / 10.0 / 1e9)
        assert row.values()["ks"] == pytest.approx(75.0)
    assert paths["grid figure"].stat().st_size > 0
    names = [p.name for p in drawn["points"]]
    assert names[:3] == MEMBERS
    assert any("LightHuBERT" in n for n in names) == published  # never beside mini-scale rows
    assert "GMACs/s" in (tmp_path / "results" / "superb_results.md").read_text()


def test_a_grid_root_refuses_names_and_params(fake_grid, grid_file, tiny_ckpt, tmp_path):
    from lighthubert_s3prl.superb import collect as collect_module

    fake_grid()
    root = tmp_path / "exp"
    run_grid(options(root, tiny_ckpt), str(grid_file))
    with pytest.raises(collect_module.CollectError, match="is a subnet grid"):
        collect_module.collect([root], names=["a"])


def test_published_points_are_scored_over_the_grids_tasks_only():
    from lighthubert_s3prl.superb.grid_figure import published_points
    from lighthubert_s3prl.superb.reference import REFERENCES, superb_score

    small = next(p for p in published_points(10.0, ("ks",)) if p.name.startswith("LightHuBERT Small"))
    assert small.values["score"] == pytest.approx(superb_score(REFERENCES["lighthubert_small"].values, ("ks",)).value)
    assert small.values["score"] != pytest.approx(superb_score(REFERENCES["lighthubert_small"].values).value)
    assert small.params_m == REFERENCES["lighthubert_small"].params_m


def test_an_unparsable_grid_file_is_named(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("subnets: [small\n")
    with pytest.raises(RunnerError, match=r"--subnets .*grid.yaml: cannot parse it"):
        grid.read_grid_items(str(path))


@pytest.mark.parametrize("content", ["{not json", '{"checkpoint": "x"}', "[1, 2]"])
def test_a_broken_grid_record_is_refused_by_collect(content, tmp_path, capsys):
    from lighthubert_s3prl.superb import collect as collect_module

    (tmp_path / "grid.json").write_text(content)
    assert collect_module.main([str(tmp_path), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "grid.json is not a grid record (unreadable, or no 'members' list)" in capsys.readouterr().err


def test_a_grid_needs_the_checkpoint_its_subnets_are_cut_from(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    argv = ["-u", "lighthubert_small", "--tasks", "ks", "--data", str(corpus), "--gpus", "0",
            "--exp-root", str(tmp_path / "e"), "--dry-run", "--subnets", "small"]
    assert runner_module.main(argv) == 2
    assert "--subnets needs the supernet checkpoint the subnets are cut from: pass -k CKPT" in capsys.readouterr().err
