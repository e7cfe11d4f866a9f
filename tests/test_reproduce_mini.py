"""reproduce-mini at CI size: every row runs its own checkpoint and subnet, the searched subnets keep their
budgets, the claims are reported with their numbers, and a second run reuses everything."""
from __future__ import annotations

import json
import re

import yaml

from lighthubert_s3prl.model.checkpoint import load_checkpoint
from lighthubert_s3prl.model.config import count_parameters, load_subnet_file
from lighthubert_s3prl.superb import units

from .test_superb_pipeline import superb_corpus  # noqa: F401 (fixture)


def test_reproduce_mini_runs_every_row_and_resumes(superb_corpus, tmp_path, capsys):
    from lighthubert_s3prl.commands import reproduce_mini

    out = tmp_path / "repro"
    argv = [str(out), "--tasks", "ks", "--scale", "ci", "--steps", "4", "--stage1-steps", "2", "--stage2-steps", "2",
            "--population", "2", "--generations", "1", "--corpus", str(superb_corpus), "--preset", "ci"]
    assert reproduce_mini.main(argv) == 0
    printed = capsys.readouterr().out
    stage1, stage2 = (load_checkpoint(out / "checkpoints" / f"{s}.pt") for s in ("stage1", "stage2"))
    assert (stage1.kind, stage2.kind) == ("student_hubert", "hubert_pruner")
    space = stage2.search_space
    subnets = {k: load_subnet_file(out / "subnets" / f"{k}.yaml")
               for k in ("default", "max", "min", "search_same", "search_small")}
    assert (subnets["default"], subnets["max"], subnets["min"]) == (space.default, space.max_subnet(), space.min_subnet())
    size = {k: count_parameters(s, stage2.model_cfg) for k, s in subnets.items()}
    assert size["search_same"] <= size["default"] and size["search_small"] <= (size["default"] + size["min"]) // 2
    assert all(space.contains(subnets[k]) for k in ("search_same", "search_small"))
    expected = {  # row -> (checkpoint, subnet file) the runner was given
        "random": ("tiny_random_seed0.pt", None), "stage1": ("stage1.pt", None),
        "stage1_cut": ("stage1.pt", "default"), "stage2_max": ("stage2.pt", "max"),
        "stage2_default": ("stage2.pt", "default"), "stage2_min": ("stage2.pt", "min"),
        "search_same": ("stage2.pt", "search_same"), "search_small": ("stage2.pt", "search_small"),
        "teacher": (None, None), "fbank_no_cmvn": (None, None)}
    weight_free = {"teacher": "fbank", "fbank_no_cmvn": "fbank_no_cmvn"}  # s3prl's upstream of each such row
    for row, (ckpt, subnet) in expected.items():
        root = out / "exp" / row / "seed1"
        manifest = json.loads((root / "run_superb.json").read_text())
        assert manifest["upstream"] == weight_free.get(row, "lighthubert_local"), row
        assert (manifest["ckpt"] and manifest["ckpt"].endswith(ckpt)) if ckpt else manifest["ckpt"] is None, row
        assert manifest["subnet"] == (str(out / "subnets" / f"{subnet}.yaml") if subnet else None), row
        assert (root / "ks" / units.DONE_FILE).is_file(), row
    claims = [line for line in printed.splitlines() if line.startswith("- ")]
    # one seed gives no spread: each claim shows its numbers but is not called held
    assert len(claims) == 4 and all(re.search(r"\*\*(ahead|behind) on one seed, not established", c) for c in claims)
    assert "KS stage1-random" in claims[0] and "KS stage2_default-stage1_cut" in claims[1]
    results = out / "results"
    report = json.loads((results / "reproduce_mini.json").read_text())
    assert set(report["rows"]) == set(expected) and report["params_m"]["teacher"] == report["params_m"]["fbank_no_cmvn"] == 0.0
    assert report["params_m"]["stage2_min"] < report["params_m"]["stage2_default"] < report["params_m"]["stage2_max"]
    assert (results / "reproduce_mini.png").stat().st_size > 1000 and (results / "reproduce_mini.md").is_file()

    stamp = (out / "checkpoints" / "stage2.pt").stat().st_mtime_ns
    assert reproduce_mini.main(argv) == 0  # a second run reuses the checkpoints, subnets and finished units
    assert (out / "checkpoints" / "stage2.pt").stat().st_mtime_ns == stamp
    assert yaml.safe_load((out / "subnets" / "search_same.yaml").read_text())["subnet"] == subnets["search_same"].to_dict()
    again = capsys.readouterr()
    assert (again.out + again.err).count("skipped, finished earlier") == len(expected)


def test_claims_are_judged_against_the_seed_spread():
    """Strict claims need a lead of more than twice the larger spread; 'at least as well' claims fail only on a
    deficit of more than that."""
    from lighthubert_s3prl.commands.reproduce_mini import claim_lines
    from lighthubert_s3prl.superb.calibration import Cell

    def cell(*values):
        return {"ks": Cell(dict(enumerate(values, 1)))}

    rows = {"random": cell(30, 31, 29), "stage1": cell(50, 52, 51),  # +21, spread 1: held
            "stage1_cut": cell(40, 44, 42), "stage2_default": cell(43, 47, 45),  # +3, spread 2: not > 4
            "stage2_max": cell(44, 46, 45), "stage2_min": cell(30, 31, 32),  # max - default 0; default - min +14
            "search_same": cell(38, 40, 39)}  # -6 against default, spread 2: a deficit beyond 4
    lines = claim_lines(rows, ["ks"], margin=2.0)
    assert lines[0].startswith("- distillation beats random init: **held** (KS stage1-random +21.00 (seed spread 1.00))")
    assert "**did NOT hold** (KS stage2_default-stage1_cut +3.00 (seed spread 2.00))" in lines[1]
    assert "**held**" in lines[2] and "KS stage2_max-stage2_default +0.00" in lines[2]
    assert "**did NOT hold**" in lines[3] and "KS search_same-stage2_default -6.00" in lines[3]
