"""Does the mini scale tell models apart? Mean and spread over seeds of several upstreams, and the gaps.

A calibration root holds one batch-runner root per upstream and seed, ``ROOT/<row>/seed<N>`` (what
``scripts/calibrate_mini.sh`` lays out). For every task this module gives each row's mean and sample standard
deviation over its seeds, then the gap between two rows in the task's better direction. A gap *separates*
the rows when it exceeds ``margin`` times the larger of the two spreads and is positive: a table in which
a random model and a trained one tie, or overlap within their seed noise, measures nothing.

ER counts the folds it ran: a seed's ER value is the mean of its finished folds.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .collect import collect_model
from .reference import HIGHER_IS_BETTER, TASK_NAMES
from ..io_utils import atomic_write_text
from .units import TASK_ORDER, tasks_module

LOG = logging.getLogger(__name__)

SEED_DIR = re.compile(r"^seed(\d+)$")
#: a gap separates two rows when it exceeds this many times the larger of their seed spreads
DEFAULT_MARGIN = 2.0


class CalibrationError(ValueError):
    """A calibration root that cannot be read; the message says what to run."""


@dataclass
class Cell:
    """One row's results on one task over its seeds (percent, as in the results table)."""

    values: Dict[int, float] = field(default_factory=dict)  # seed -> value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation (n - 1); None below two seeds."""
        return statistics.stdev(self.values.values()) if self.n >= 2 else None


@dataclass(frozen=True)
class Gap:
    """``better`` minus ``worse`` on one task, signed so that positive means ``better`` is ahead."""

    task: str
    better: str
    worse: str
    gap: Optional[float]
    noise: Optional[float]  # the larger of the two rows' seed spreads
    separates: bool


def _seed_value(task: str, result) -> Optional[float]:
    if task == "er" and result.folds:
        done = [r.percent for r in result.folds.values() if r.status == "done" and r.percent is not None]
        return statistics.fmean(done) if done else None
    return result.percent if result.status == "done" else None


def read_calibration(root: Path) -> Dict[str, Dict[str, Cell]]:
    """row -> task -> Cell, from ``root/<row>/seed<N>`` runner roots (rows in name order)."""
    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"{root} does not exist; run scripts/calibrate_mini.sh --root {root} first")
    rows: Dict[str, Dict[str, Cell]] = {}
    for row_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        seeds = sorted((int(m.group(1)), p) for p in row_dir.iterdir() if (m := SEED_DIR.match(p.name)) and p.is_dir())
        if not seeds:
            continue
        cells: Dict[str, Cell] = {}
        for seed, seed_dir in seeds:
            for task, result in collect_model(seed_dir).tasks.items():
                value = _seed_value(task, result)
                if value is not None:
                    cells.setdefault(task, Cell()).values[seed] = value
        rows[row_dir.name] = cells
    if not rows:
        raise CalibrationError(f"{root} holds no <row>/seed<N> folders; run scripts/calibrate_mini.sh --root {root}")
    return rows


def gap(rows: Dict[str, Dict[str, Cell]], task: str, better: str, worse: str,
        margin: float = DEFAULT_MARGIN) -> Gap:
    """How far ``better`` is ahead of ``worse`` on ``task``, and whether that is more than seed noise."""
    a, b = rows.get(better, {}).get(task), rows.get(worse, {}).get(task)
    if a is None or b is None or a.mean is None or b.mean is None:
        return Gap(task, better, worse, None, None, False)
    sign = 1.0 if HIGHER_IS_BETTER[task] else -1.0
    diff = sign * (a.mean - b.mean)
    if not tasks_module().get_task(task).trains:  # QbE: DTW on fixed features, the same number for every seed
        return Gap(task, better, worse, diff, 0.0, diff > 0)
    spreads = [s for s in (a.std, b.std) if s is not None]
    noise = max(spreads) if len(spreads) == 2 else None
    return Gap(task, better, worse, diff, noise, noise is not None and diff > margin * noise)


def _cell_text(cell: Optional[Cell]) -> str:
    if cell is None or cell.mean is None:
        return "-"
    spread = "" if cell.std is None else f" ± {cell.std:.2f}"
    return f"{cell.mean:.2f}{spread} (n={cell.n})"


def tasks_of(rows: Dict[str, Dict[str, Cell]]) -> List[str]:
    present = {t for cells in rows.values() for t in cells}
    return [t for t in TASK_ORDER if t in present]


def to_markdown(rows: Dict[str, Dict[str, Cell]], pairs: Sequence[Tuple[str, str]],
                margin: float = DEFAULT_MARGIN) -> str:
    tasks = tasks_of(rows)
    arrows = {t: "↑" if HIGHER_IS_BETTER[t] else "↓" for t in tasks}
    lines = ["| upstream | " + " | ".join(f"{TASK_NAMES[t]} {arrows[t]}" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell_text(cells.get(t)) for t in tasks) + " |")
    untrained = [TASK_NAMES[t] for t in tasks if not tasks_module().get_task(t).trains]
    note = (f"; {', '.join(untrained)} trains nothing, so its number has no seed noise and any gap separates"
            if untrained else "")
    lines += ["", f"Gaps (positive: the first row is ahead; separates: gap > {margin:g} x the larger seed std{note}):", "",
              "| gap | " + " | ".join(TASK_NAMES[t] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for better, worse in pairs:
        cells = []
        for t in tasks:
            g = gap(rows, t, better, worse, margin)
            cells.append("-" if g.gap is None else
                         f"{g.gap:+.2f} {'separates' if g.separates else 'within noise'}")
        lines.append(f"| {better} - {worse} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(rows: Dict[str, Dict[str, Cell]], pairs: Sequence[Tuple[str, str]],
            margin: float = DEFAULT_MARGIN) -> dict:
    def number(x: Optional[float]) -> Optional[float]:
        return None if x is None or math.isnan(x) else round(x, 4)

    return {
        "units": "percent (ASV: EER, PR: PER, ASR: WER; lower is better for those)",
        "margin": margin,
        "rows": {name: {t: {"mean": number(c.mean), "std": number(c.std), "n": c.n,
                            "by_seed": {str(s): round(v, 4) for s, v in sorted(c.values.items())}}
                        for t, c in cells.items()} for name, cells in rows.items()},
        "gaps": [{"task": g.task, "better": g.better, "worse": g.worse, "gap": number(g.gap),
                  "noise": number(g.noise), "separates": g.separates}
                 for better, worse in pairs for g in (gap(rows, t, better, worse, margin) for t in tasks_of(rows))],
    }


def parse_pairs(texts: Sequence[str]) -> List[Tuple[str, str]]:
    pairs = []
    for text in texts:
        better, sep, worse = text.partition(">")
        if not sep or not better.strip() or not worse.strip():
            raise CalibrationError(f"--pair {text!r}: expected BETTER>WORSE, e.g. --pair fbank>random")
        pairs.append((better.strip(), worse.strip()))
    return pairs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lighthubert_s3prl.superb.calibration",
        description="Mean and seed spread of each upstream row on each task of a calibration root (ROOT/<row>/"
                    "seed<N>, as scripts/calibrate_mini.sh lays out), and whether the gaps exceed the noise.")
    parser.add_argument("root", type=Path, help="the calibration root's exp folder")
    parser.add_argument("--pair", action="append", default=[], metavar="BETTER>WORSE",
                        help="rows to compare (repeatable; default: fbank>random and distilled>random)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"a gap separates when above MARGIN x the larger seed std (default {DEFAULT_MARGIN:g})")
    parser.add_argument("-o", "--out", type=Path, help="write calibration.md and calibration.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        pairs = parse_pairs(args.pair or ["fbank>random", "distilled>random"])
        rows = read_calibration(args.root)
    except CalibrationError as err:
        print(f"calibration: error: {err}", file=sys.stderr)
        return 2
    text = to_markdown(rows, pairs, args.margin)
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "calibration.md", text)
        atomic_write_text(args.out / "calibration.json", json.dumps(to_json(rows, pairs, args.margin), indent=2) + "\n")
        print(f"written: {args.out / 'calibration.md'}, {args.out / 'calibration.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
