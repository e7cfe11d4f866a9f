"""The size-vs-score figure of a subnet grid, as in the LightHuBERT paper: the score, and each task's metric,
against parameters and against MACs, with the Pareto front marked.

A subnet is on the front when no other subnet is at most as large and strictly better (or strictly smaller
and at least as good): the choices worth making. Published LightHuBERT points are drawn beside the grid only
when every grid row ran the full SUPERB protocol on real data; beside mini-scale or synthetic-speech rows
they would compare numbers that do not compare.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lighthubert_s3prl.io_utils import atomic_write

from .reference import HIGHER_IS_BETTER, REFERENCES, TASK_LABELS

FIGURE_NAME = "superb_grid.png"
#: the released subnets the published LightHuBERT rows were measured on
PUBLISHED_PRESETS = {"lighthubert_small": "small", "lighthubert_base": "base", "lighthubert_stage1": "stage1"}


@dataclass(frozen=True)
class GridPoint:
    name: str
    params_m: float
    gmacs_per_second: float
    values: Dict[str, float]  # "score" and task -> percent (MTWV for QbE)
    published: bool = False


def pareto_front(points: Sequence[Tuple[float, float]], higher_is_better: bool = True) -> List[int]:
    """Indices of the points (cost, value) that no other point dominates, by increasing cost."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front: List[int] = []
    best: Optional[float] = None
    for i in order:
        value = sign * points[i][1]
        if best is None or value > best:
            front.append(i)
            best = value
    return front


def published_points(macs_seconds: float, score_tasks: Sequence[str]) -> List[GridPoint]:
    """The published LightHuBERT rows, their MACs counted for their released subnets at full size and their
    score over ``score_tasks``, the tasks the grid's own score covers (a partial score beside a full one
    would compare different sums)."""
    from lighthubert_s3prl.model.config import get_preset
    from lighthubert_s3prl.model.cost import analytic_macs

    from .reference import superb_score

    out = []
    for key, preset in PUBLISHED_PRESETS.items():
        ref = REFERENCES.get(key)
        if ref is None or ref.params_m is None:
            continue
        values = {t: float(v) for t, v in ref.values.items() if isinstance(v, (int, float))}
        gmacs = analytic_macs(get_preset(preset), seconds=macs_seconds) / macs_seconds / 1e9
        score = superb_score(ref.values, score_tasks) if score_tasks else None
        if score is not None:
            values["score"] = score.value
        out.append(GridPoint(ref.name + " (published)", ref.params_m, gmacs, values, published=True))
    return out


def panels(points: Sequence[GridPoint]) -> List[str]:
    """What gets a row of panels: the score when some point has it, then every task some grid point has."""
    keys = [k for k in ("score",) if any(k in p.values for p in points if not p.published)]
    tasks = {k for p in points if not p.published for k in p.values if k != "score"}
    return keys + [t for t in TASK_LABELS if t in tasks]


def draw(points: Sequence[GridPoint], score_label: str, path: Path) -> Path:
    """Write the figure (PNG, atomically): one row per panel key, parameters left and MACs right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = panels(points)
    fig, axes = plt.subplots(max(1, len(keys)), 2, figsize=(10, 3.2 * max(1, len(keys))), dpi=110, squeeze=False)
    for row, key in enumerate(keys):
        label = score_label if key == "score" else f"{TASK_LABELS[key]} ({'higher' if HIGHER_IS_BETTER.get(key, True) else 'lower'} is better)"
        for col, (attr, xlabel) in enumerate((("params_m", "parameters (M)"), ("gmacs_per_second", "GMACs per second of audio"))):
            ax = axes[row][col]
            grid_points = [p for p in points if key in p.values and not p.published]
            xy = [(getattr(p, attr), p.values[key]) for p in grid_points]
            ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:gray", s=30, zorder=2, label="subnet")
            front = pareto_front(xy, HIGHER_IS_BETTER.get(key, True) if key != "score" else True)
            fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
            ax.plot(fx, fy, "-o", color="tab:red", drawstyle="steps-post", zorder=3, label="Pareto front")
            for p, (x, y) in zip(grid_points, xy):
                ax.annotate(p.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for p in (q for q in points if q.published and key in q.values):
                ax.scatter([getattr(p, attr)], [p.values[key]], marker="s", color="tab:blue", s=40, zorder=3)
                ax.annotate(p.name, (getattr(p, attr), p.values[key]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="tab:blue")
            ax.set_xscale("log")  # subnets and published models span more than a decade
            ax.set_xlabel(xlabel + ", log scale")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(True, alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
