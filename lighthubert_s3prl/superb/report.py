"""Reporting a batch run: the summary table of every unit's outcome, printed and kept in the root."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Dict, Sequence

from lighthubert_s3prl.io_utils import atomic_write_text

from .units import RESULT_FILE, Outcome, now_iso, write_json

SUMMARY_JSON = "summary.json"
SUMMARY_TXT = "summary.txt"


def format_summary(outcomes: Sequence[Outcome], root: Path, where_to_look: bool = True) -> str:
    """One row per unit (status, score, where its predictions or log are), then counts and failures, then
    (``where_to_look``) where a single root keeps its results and the command that tabulates them."""
    rows = [("unit", "status", "metric", "value", "time", "where")]
    for o in outcomes:
        value = "" if o.value is None else f"{o.value:.4g}"
        where = o.prediction_file or o.expdir
        if o.status == "failed":
            where = (o.logs[0] if o.logs else o.expdir)
        rows.append((o.unit, o.status, o.metric or "", value, f"{o.seconds:.0f}s" if o.seconds else "", where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines.append("")
    lines.append("units: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"FAILED {o.unit}: {o.message.splitlines()[0] if o.message else ''}")
    if where_to_look:
        lines.append(f"results: {root}/<task>/{RESULT_FILE} (ER: {root}/er/foldN/), logs: {root}/logs/, "
                     f"summary: {root}/{SUMMARY_TXT}")
        lines.append(f"table:   lighthubert-s3prl collect {root} -o {root}/results")
    return "\n".join(lines)


def write_summary(outcomes: Sequence[Outcome], root: Path) -> None:
    """``summary.json`` (every outcome, for tools) and ``summary.txt`` (the table) in the experiment root."""
    text = format_summary(outcomes, root)
    write_json(root / SUMMARY_JSON, {"time": now_iso(), "exp_root": str(root),
                                     "units": [asdict(o) for o in outcomes]})
    atomic_write_text(root / SUMMARY_TXT, text + "\n")
