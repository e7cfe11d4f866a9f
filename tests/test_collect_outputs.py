"""collect's outputs: the Markdown/CSV/JSON tables, the files written, the plot, and the command line.

What is pinned: every cell, header, note line and row/column order of the Markdown table; the CSV
header, rows and empty cells; the JSON structure and values; the set of files ``write_outputs`` leaves
(complete files, nothing else); the score header/note for partial, complete and empty task sets;
``_parse_params``' accepted forms and refusals; ``collect``'s argument checks and row names; ``main``'s
output and error messages in full; the parameters-vs-score plot, both as data (``plot_spec``) and as the
matplotlib figure drawn from it (offsets, names, label offsets, legend entries, axis labels, title).

How the answers are known: the tables are built by hand from TaskResult/ModelRow/Score values chosen
here, so every expected cell is that literal number written with the stated number of decimals; scores
recomputed by ``build_table`` are checked against the leaderboard formula written out with the FBANK and
SOTA anchors. Colours, marker sizes, font sizes, grid alpha, legend placement and dpi are cosmetic and only
partly checked (the PNG's pixel size is).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from lighthubert_s3prl.superb import collect, reference, units
from lighthubert_s3prl.superb.collect import CollectError, ModelRow, PlotPoint, PlotSpec, Table, TaskResult
from lighthubert_s3prl.superb.reference import ALL_TASKS, OUR_TASKS, Score

from .test_collect_package import full_root  # noqa: F401 (a fixture)




GENERATED = "2026-01-02T03:04:05+00:00"
PARTIAL_NOTE = ("SUPERB score (partial): computed over 2/10 tasks (PR, ASV) as 1000 × mean over tasks of "
                "(x − FBANK)/(SOTA − FBANK) — the leaderboard formula restricted to these tasks, for every row "
                "alike. It is comparable within this table only; 'LB score' is the published 10-task "
                "leaderboard score.")
METRICS_NOTE = ("Metrics in percent: PER, WER, EER and DER lower is better; accuracies higher is better; QbE is "
                "MTWV (higher is better); SF is slot-type F1 / slot-value CER. ER is the mean test accuracy of the 5 IEMOCAP folds. Status words instead of numbers: missing (never started), "
                "running, stopped (interrupted), untested (trained, no test result), failed, k/5 folds (ER "
                "incomplete).")
HEADER = ("| Model | Params (M) | PR PER↓ | KS Acc↑ | IC Acc↑ | SID Acc↑ | ER Acc↑ | ASR WER↓ | ASV EER↓ | "
          "SD DER↓ | QbE MTWV↑ | SF F1↑/CER↓ | {score} | LB score |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _missing_row(name: str, path: str, **done: float) -> ModelRow:
    """An ours row where only the given tasks are done (no detail), the rest missing."""
    tasks = {t: TaskResult(t, "done", done[t]) if t in done else TaskResult(t, "missing") for t in OUR_TASKS}
    return ModelRow(name, "ours", None, tasks, path)


def _format_table() -> Table:
    """Two ours rows with the same name, two published rows in between and after, every status."""
    folds = {"fold1": TaskResult("er", "done", 50.0, "test on dev-best.ckpt"),
             "fold2": TaskResult("er", "done", 62.5), "fold3": TaskResult("er", "done", 40.0),
             "fold4": TaskResult("er", "failed", detail="train: oom"), "fold5": TaskResult("er", "missing")}
    tiny = ModelRow("tiny", "ours", 2.5, {
        "pr": TaskResult("pr", "done", 12.5, "test on dev-best.ckpt", "/x/tiny/pr/superb_result.json"),
        "ks": TaskResult("ks", "untested", detail="trained, no test result"),
        "ic": TaskResult("ic", "missing"),
        "sid": TaskResult("sid", "running", detail="pid 7 on h"),
        "er": TaskResult("er", "partial", detail="3/5 folds (failed)", folds=folds),
        "asr": TaskResult("asr", "failed", detail="test: boom"),
        "asv": TaskResult("asv", "done", 5.25, "test on states-10.ckpt"),
    }, "/x/tiny")
    again = _missing_row("tiny", "/x/tiny2", pr=30.0)
    again.tasks["er"] = TaskResult("er", "missing", detail="no fold run",
                                   folds={f: TaskResult("er", "missing") for f in collect.ER_FOLDS})
    ref_a = ModelRow("Ref A", "reference", 94.68, {"pr": TaskResult("pr", "done", 5.41),
                                                   "ks": TaskResult("ks", "done", 96.3)},
                     leaderboard_score=941.4, source="paper X")
    ref_b = ModelRow("Ref B", "reference", None, {}, source="site Y")
    tasks = ("pr", "asv")
    # the second "tiny" is keyed "tiny (2)": its score must not be taken for the first's
    scores = {"tiny": Score(-123.4567, tasks), "tiny (2)": Score(7.3121, tasks), "Ref A": Score(880.04, tasks),
              "Ref B": None}
    return Table([tiny, ref_a, again, ref_b], tasks, scores, GENERATED)


FORMAT_MD = HEADER.format(score="SUPERB score (partial, 2 tasks)") + (
    "| **tiny** | 2.50 | 12.50 | untested | missing | running | 3/5 folds (failed) | failed | 5.25 | — | — | — | -123.5 "
    "| — |\n"
    "| Ref A (published) | 94.68 | 5.41 | 96.30 | — | — | — | — | — | — | — | — | 880.0 | 941 |\n"
    "| **tiny** | — | 30.00 | missing | missing | missing | missing | missing | missing | missing | missing | missing "
    "| 7.3 | — |\n"
    "| Ref B (published) | — | — | — | — | — | — | — | — | — | — | — | — | — |\n"
    "\n"
    f"*{PARTIAL_NOTE}*\n"
    "\n"
    f"{METRICS_NOTE}\n"
    "\n"
    "**tiny** (/x/tiny):\n"
    "- PR: 12.50 — test on dev-best.ckpt\n"
    "- KS: untested — trained, no test result\n"
    "- IC: missing\n"
    "- SID: running — pid 7 on h\n"
    "- ER: 3/5 folds (failed) — folds: fold1 50.00, fold2 62.50, fold3 40.00, fold4 failed, fold5 missing\n"
    "- ASR: failed — test: boom\n"
    "- ASV: 5.25 — test on states-10.ckpt\n"
    "- SD: missing\n"
    "- QbE: missing\n"
    "- SF: missing\n"
    "\n"
    "**tiny** (/x/tiny2):\n"
    "- PR: 30.00\n"
    "- KS: missing\n"
    "- IC: missing\n"
    "- SID: missing\n"
    "- ER: missing — no fold run\n"
    "- ASR: missing\n"
    "- ASV: missing\n"
    "- SD: missing\n"
    "- QbE: missing\n"
    "- SF: missing\n"
    "\n"
    "Published rows (public set): Ref A — paper X; Ref B — site Y.\n")

CSV_HEADER = ("model,kind,params_m,pr,ks,ic,sid,er,asr,asv,sd,qbe,sf,superb_score,score_tasks,score_partial,"
              "leaderboard_score,path_or_source\n")
FORMAT_CSV = CSV_HEADER + (
    'tiny,ours,2.5000,12.50,untested,missing,running,3/5 folds (failed),failed,5.25,,,,-123.46,"pr,asv",true,,/x/tiny\n'
    'Ref A,reference,94.6800,5.41,96.30,,,,,,,,,880.04,"pr,asv",true,941.4,paper X\n'
    'tiny,ours,,30.00,missing,missing,missing,missing,missing,missing,missing,missing,missing,7.31,"pr,asv",true,,'
    '/x/tiny2\n'
    'Ref B,reference,,,,,,,,,,,,,"pr,asv",true,,site Y\n')


def _json_table() -> Table:
    er = TaskResult("er", "partial", detail="1/5 folds (failed)",
                    folds={"fold1": TaskResult("er", "done", 50.0, "d1", "s1", params=7),
                           "fold2": TaskResult("er", "failed", detail="test: x")})
    tasks = {t: TaskResult(t, "missing") for t in OUR_TASKS}
    tasks.update(pr=TaskResult("pr", "done", 12.5, "d", "s", params=1_500_000), er=er)
    ours = ModelRow("a", "ours", 1.5, tasks, "/x/a")
    ref = ModelRow("R", "reference", None, {"ks": TaskResult("ks", "done", 96.0, source="paper")},
                   leaderboard_score=900, source="paper")
    return Table([ours, ref], ("pr",), {"a": Score(12.25, ("pr",)), "R": None}, GENERATED)


def _fields(task: str, status: str, percent: Optional[float], detail: str, source: str,
            params: Optional[int], second: Optional[float] = None) -> dict:
    return {"task": task, "status": status, "percent": percent, "detail": detail, "source": source, "params": params,
            "second": second}


def _task(fields: dict, display: str, folds: Dict[str, dict]) -> dict:
    """A task entry: the TaskResult fields, then display, then the folds (the order json.dumps writes)."""
    return {**fields, "display": display, "folds": folds}


def _fold(fields: dict, display: str) -> dict:
    """A fold entry: all TaskResult fields (its own empty folds included), then display."""
    fields = dict(fields)
    second = fields.pop("second")
    return {**fields, "folds": {}, "second": second, "display": display}


JSON_EXPECTED = {
    "generated": GENERATED, "score_tasks": ["pr"], "score_partial": True,
    "score_note": ("SUPERB score (partial): computed over 1/10 tasks (PR) as 1000 × mean over tasks of "
                   "(x − FBANK)/(SOTA − FBANK) — the leaderboard formula restricted to these tasks, for every row "
                   "alike. It is comparable within this table only; 'LB score' is the published 10-task "
                   "leaderboard score."),
    "offline_score_label": None,
    "units": "percent (MTWV for QbE)",
    "rows": [
        {"name": "a", "kind": "ours", "params_m": 1.5, "path": "/x/a", "source": None, "leaderboard_score": None,
         "superb_score": 12.25, "scale": "full", "synthetic": False,
         "tasks": {**{t: _task(_fields(t, "missing", None, "", "", None), "missing", {}) for t in OUR_TASKS},
                   "pr": _task(_fields("pr", "done", 12.5, "d", "s", 1_500_000), "12.50", {}),
                   "er": _task(_fields("er", "partial", None, "1/5 folds (failed)", "", None), "1/5 folds (failed)", {
                       "fold1": _fold(_fields("er", "done", 50.0, "d1", "s1", 7), "50.00"),
                       "fold2": _fold(_fields("er", "failed", None, "test: x", "", None), "failed")})}},
        {"name": "R", "kind": "reference", "params_m": None, "path": None, "source": "paper",
         "leaderboard_score": 900, "superb_score": None, "scale": "full", "synthetic": False,
         "tasks": {"ks": _task(_fields("ks", "done", 96.0, "", "paper", None), "96.00", {})}},
    ]}


# ----------------------------------------------------------------------------------------------------
# header and note of the score column


def _table_over(tasks: Tuple[str, ...]) -> Table:
    return Table([], tasks, {}, GENERATED)


def test_score_header_and_note_for_partial_complete_and_empty_task_sets():
    partial = _table_over(("pr", "asv"))
    assert partial.partial is True
    assert partial.score_header() == "SUPERB score (partial, 2 tasks)"
    assert partial.score_note() == PARTIAL_NOTE
    complete = _table_over(ALL_TASKS)
    assert complete.partial is False
    assert complete.score_header() == "SUPERB score"
    assert complete.score_note() == "SUPERB score over all 10 tasks (leaderboard formula)."
    empty = _table_over(())
    assert empty.score_header() == "SUPERB score (partial, 0 tasks)"
    assert empty.score_note() == ("SUPERB score: not computed — no task has a finished result in every one of "
                                  "our rows.")


# ----------------------------------------------------------------------------------------------------
# Markdown, CSV, JSON


def test_markdown_table_cells_notes_and_order():
    assert collect.to_markdown(_format_table()) == FORMAT_MD


def test_markdown_of_a_complete_table_without_published_rows():
    row = _missing_row("m", "/m", pr=1.0)
    md = collect.to_markdown(Table([row], ALL_TASKS, {"m": Score(1.25, ALL_TASKS)}, GENERATED))
    assert md == HEADER.format(score="SUPERB score") + (
        "| **m** | — | 1.00 | missing | missing | missing | missing | missing | missing | missing | missing | missing "
        "| 1.2 | — |\n"
        "\n*SUPERB score over all 10 tasks (leaderboard formula).*\n\n"
        f"{METRICS_NOTE}\n\n**m** (/m):\n- PR: 1.00\n- KS: missing\n- IC: missing\n- SID: missing\n- ER: missing\n"
        "- ASR: missing\n- ASV: missing\n- SD: missing\n- QbE: missing\n- SF: missing\n")


def test_csv_header_rows_and_empty_cells():
    assert collect.to_csv(_format_table()) == FORMAT_CSV
    complete = Table([_missing_row("m", "/m", pr=1.0)], ALL_TASKS, {"m": None}, GENERATED)
    assert collect.to_csv(complete) == CSV_HEADER + (
        'm,ours,,1.00,missing,missing,missing,missing,missing,missing,missing,missing,missing,,'
        '"pr,ks,ic,sid,er,asr,asv,sd,qbe,sf",false,,/m\n')


def test_json_structure_and_values():
    assert collect.to_json(_json_table()) == JSON_EXPECTED


def test_json_of_the_full_format_table_keys_rows_by_name_and_order():
    data = collect.to_json(_format_table())
    assert [(r["name"], r["kind"], r["superb_score"], r["path"], r["source"]) for r in data["rows"]] == [
        ("tiny", "ours", -123.4567, "/x/tiny", None), ("Ref A", "reference", 880.04, None, "paper X"),
        ("tiny", "ours", 7.3121, "/x/tiny2", None), ("Ref B", "reference", None, None, "site Y")]


# ----------------------------------------------------------------------------------------------------
# row keys, build_table


def test_row_keys_number_repeated_names_from_two():
    rows = [ModelRow(n, "ours", None, {}) for n in ("a", "b", "a", "a", "b", "c")]
    assert collect._row_keys(rows) == ["a", "b", "a (2)", "a (3)", "b (2)", "c"]
    assert collect._row_keys([]) == []


def _term(task: str, x: float) -> float:
    fbank = {"pr": 82.01, "ks": 41.38}[task]
    sota = {"pr": 3.53, "ks": 96.66}[task]
    return (x - fbank) / (sota - fbank)


def test_build_table_scores_every_row_over_the_tasks_all_our_rows_finished():
    first = _missing_row("one", "/1", pr=25.0, ks=50.0)
    second = _missing_row("one", "/2", pr=10.0, ks=60.0, ic=20.0)  # IC is not finished in the first row
    small = reference.REFERENCES["lighthubert_small"]
    table = collect.build_table([first, second], [small])
    assert table.score_tasks == ("pr", "ks") and table.partial
    assert [r.name for r in table.rows] == ["one", "one", "LightHuBERT Small"]
    assert table.rows[2].kind == "reference" and table.rows[2].leaderboard_score == 901
    assert set(table.scores) == {"one", "one (2)", "LightHuBERT Small"}
    expected = {"one": 1000 * (_term("pr", 25.0) + _term("ks", 50.0)) / 2,
                "one (2)": 1000 * (_term("pr", 10.0) + _term("ks", 60.0)) / 2,
                # the published row is restricted to the same two tasks, not its ten
                "LightHuBERT Small": 1000 * (_term("pr", 6.60) + _term("ks", 96.07)) / 2}
    for key, value in expected.items():
        assert table.scores[key].value == pytest.approx(value, rel=1e-12)
        assert table.scores[key].tasks == ("pr", "ks")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", table.generated)


def test_build_table_without_common_tasks_scores_nothing():
    table = collect.build_table([_missing_row("a", "/a", pr=1.0), _missing_row("b", "/b", ks=2.0)],
                                [reference.REFERENCES["hubert_base"]])
    assert table.score_tasks == () and table.scores == {"a": None, "b": None, "HuBERT Base": None}


# ----------------------------------------------------------------------------------------------------
# write_outputs


def test_write_outputs_writes_the_four_complete_files_and_nothing_else(tmp_path):
    table = _json_table()
    out = tmp_path / "deep" / "er" / "out"  # parents are created
    for _ in range(2):  # a second run into the same folder replaces the files
        paths = collect.write_outputs(table, out)
        assert paths == {"markdown": out / "superb_results.md", "csv": out / "superb_results.csv",
                         "json": out / "superb_results.json", "plot": out / "superb_results.png"}
        assert list(paths) == ["markdown", "csv", "json", "plot"]
        assert sorted(p.name for p in out.iterdir()) == ["superb_results.csv", "superb_results.json",
                                                         "superb_results.md", "superb_results.png"]
    assert (out / "superb_results.json").read_text(encoding="utf-8") == json.dumps(JSON_EXPECTED, indent=2) + "\n"
    assert (out / "superb_results.csv").read_text(encoding="utf-8") == CSV_HEADER + (
        'a,ours,1.5000,12.50,missing,missing,missing,1/5 folds (failed),missing,missing,missing,missing,missing,'
        '12.25,pr,true,,/x/a\n'
        'R,reference,,,96.00,,,,,,,,,,pr,true,900,paper\n')
    md = (out / "superb_results.md").read_text(encoding="utf-8")
    assert md.startswith(HEADER.format(score="SUPERB score (partial, 1 task)"))
    png = (out / "superb_results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # 7 x 4.5 inches at 120 dpi; the IHDR chunk holds width and height
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (840, 540)


def test_write_outputs_with_the_format_table_writes_its_markdown_and_csv(tmp_path):
    collect.write_outputs(_format_table(), tmp_path)
    assert (tmp_path / "superb_results.md").read_text(encoding="utf-8") == FORMAT_MD
    assert (tmp_path / "superb_results.csv").read_text(encoding="utf-8") == FORMAT_CSV


# ----------------------------------------------------------------------------------------------------
# the plot: what is drawn, and the figure


def _plot_table() -> Table:
    def row(name: str, kind: str, params: Optional[float]) -> ModelRow:
        return ModelRow(name, kind, params, {})

    rows = [row("mine", "ours", 2.5), row("other", "ours", None), row("noscore", "ours", 3.0),
            row("mine2", "ours", 23.0), row("Big ref", "reference", 94.68), row("FBANK", "reference", 0.0),
            row("Zero ref", "reference", 0.05), row("Small ref", "reference", 0.5)]
    tasks = ("pr", "asv")
    values = {"mine": 100.0, "other": 50.0, "mine2": 950.0, "Big ref": 900.0, "FBANK": 0.0, "Zero ref": -5.0,
              "Small ref": 300.0}
    scores: Dict[str, Optional[Score]] = {k: Score(v, tasks) for k, v in values.items()}
    scores["noscore"] = None
    return Table(rows, tasks, scores, GENERATED)


# by parameters; FBANK and "Zero ref" both sit at the 0.1 M floor and keep their table order;
# labels alternate above/below along that order; each kind's first point carries the legend entry
PLOT_POINTS = (PlotPoint("FBANK", 0.1, 0.0, False, "published", (6, 6)),
               PlotPoint("Zero ref", 0.1, -5.0, False, None, (6, -12)),
               PlotPoint("Small ref", 0.5, 300.0, False, None, (6, 6)),
               PlotPoint("mine", 2.5, 100.0, True, "this run", (6, -12)),
               PlotPoint("mine2", 23.0, 950.0, True, None, (6, 6)),
               PlotPoint("Big ref", 94.68, 900.0, False, None, (6, -12)))
PLOT_SPEC = PlotSpec(PLOT_POINTS, "SUPERB score over PR,ASV vs parameters", "parameters (M, log scale)",
                     "SUPERB score (partial)", "log", None)
EMPTY_NOTE = "no row has both a score and a parameter count"


def test_plot_spec_points_labels_and_axes():
    assert collect.plot_spec(_plot_table()) == PLOT_SPEC


def test_plot_spec_of_a_complete_table_with_repeated_names():
    rows = [ModelRow("dup", "reference", 1.0, {}), ModelRow("dup", "reference", 2.0, {})]
    table = Table(rows, ALL_TASKS, {"dup": Score(10.0, ALL_TASKS), "dup (2)": Score(20.0, ALL_TASKS)}, GENERATED)
    assert collect.plot_spec(table) == PlotSpec(
        (PlotPoint("dup", 1.0, 10.0, False, "published", (6, 6)), PlotPoint("dup", 2.0, 20.0, False, None, (6, -12))),
        "SUPERB score over PR,KS,IC,SID,ER,ASR,ASV,SD,QbE,SF vs parameters", "parameters (M, log scale)",
        "SUPERB score", "log", None)


def test_plot_spec_without_drawable_rows():
    rows = [ModelRow("a", "ours", None, {}), ModelRow("b", "ours", 2.0, {})]
    table = Table(rows, (), {"a": None, "b": None}, GENERATED)
    assert collect.plot_spec(table) == PlotSpec((), "SUPERB score over none vs parameters",
                                                "parameters (M, log scale)", "SUPERB score (partial)", "log",
                                                EMPTY_NOTE)


def _figure_facts(fig) -> dict:
    from matplotlib.colors import to_rgba

    (ax,) = fig.axes
    legend = ax.get_legend()
    return {
        "offsets": [c.get_offsets().tolist() for c in ax.collections],
        "sizes": [c.get_sizes().tolist() for c in ax.collections],
        "colours": [tuple(c.get_facecolor()[0]) for c in ax.collections],
        "red": to_rgba("tab:red"), "blue": to_rgba("tab:blue"),
        "names": [(t.get_text(), tuple(t.xy), tuple(t.xyann), t.anncoords) for t in ax.texts
                  if hasattr(t, "xyann")],
        "notes": [t for t in ax.texts if not hasattr(t, "xyann")],
        "legend": None if legend is None else [t.get_text() for t in legend.get_texts()],
        "xscale": ax.get_xscale(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "title": ax.get_title(),
        "size": tuple(fig.get_size_inches()), "dpi": fig.dpi,
    }


def _markers_match(collection, marker: str) -> bool:
    import numpy as np
    from matplotlib.markers import MarkerStyle

    style = MarkerStyle(marker)
    expected = style.get_path().transformed(style.get_transform())
    path = collection.get_paths()[0]
    return path.vertices.shape == expected.vertices.shape and bool(np.allclose(path.vertices, expected.vertices))


def test_draw_plot_shows_every_point_with_its_name_and_legend():
    import matplotlib.pyplot as plt

    fig = collect.draw_plot(PLOT_SPEC)
    try:
        facts = _figure_facts(fig)
        assert facts["offsets"] == [[[p.x, p.y]] for p in PLOT_POINTS]
        assert facts["names"] == [(p.name, (p.x, p.y), p.label_offset, "offset points") for p in PLOT_POINTS]
        assert facts["legend"] == ["published", "this run"]  # one entry per kind, in drawing order
        assert facts["notes"] == []
        assert [_markers_match(c, "*" if p.ours else "o") for c, p in zip(fig.axes[0].collections, PLOT_POINTS)] \
            == [True] * len(PLOT_POINTS)
        assert facts["sizes"] == [[160.0] if p.ours else [50.0] for p in PLOT_POINTS]
        assert facts["colours"] == [facts["red"] if p.ours else facts["blue"] for p in PLOT_POINTS]
        assert (facts["xscale"], facts["xlabel"], facts["ylabel"], facts["title"]) == (
            "log", "parameters (M, log scale)", "SUPERB score (partial)", "SUPERB score over PR,ASV vs parameters")
        assert facts["size"] == (7.0, 4.5) and facts["dpi"] == 120
        fig.canvas.draw()
        ax = fig.axes[0]
        # grid on major and minor ticks of the log axis
        assert all(line.get_visible() for line in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines())
        assert [t.gridline.get_visible() for t in ax.xaxis.get_minor_ticks()][:3] == [True] * 3
    finally:
        plt.close(fig)


def test_draw_plot_without_points_says_why():
    import matplotlib.pyplot as plt

    spec = PlotSpec((), "SUPERB score over none vs parameters", "parameters (M, log scale)", "SUPERB score", "log",
                    EMPTY_NOTE)
    fig = collect.draw_plot(spec)
    try:
        facts = _figure_facts(fig)
        assert facts["offsets"] == [] and facts["names"] == [] and facts["legend"] is None
        (note,) = facts["notes"]
        assert (note.get_text(), tuple(note.get_position()), note.get_ha(), note.get_va()) == (
            EMPTY_NOTE, (0.5, 0.5), "center", "center")
        assert note.get_transform() == fig.axes[0].transAxes
        assert (facts["xlabel"], facts["ylabel"], facts["title"]) == (
            "parameters (M, log scale)", "SUPERB score", "SUPERB score over none vs parameters")
    finally:
        plt.close(fig)


def test_plot_draws_the_tables_spec_into_a_png_and_closes_the_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn: List[PlotSpec] = []
    draw = collect.draw_plot
    monkeypatch.setattr(collect, "draw_plot", lambda spec: drawn.append(spec) or draw(spec))
    before = plt.get_fignums()
    out = tmp_path / "p.png"
    assert collect.plot(_plot_table(), out) == out
    assert drawn == [PLOT_SPEC]
    assert plt.get_fignums() == before
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (840, 540)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


# ----------------------------------------------------------------------------------------------------
# _parse_params, collect, main


def test_parse_params_accepted_forms():
    assert collect._parse_params(None) is None
    assert collect._parse_params([]) is None
    assert collect._parse_params(["", "-", "auto", "12.5", "1e2", "7"]) == [None, None, None, 12.5, 100.0, 7.0]


@pytest.mark.parametrize("value", ["x", "AUTO", "12,5", "none"])
def test_parse_params_refusals(value):
    with pytest.raises(CollectError) as err:
        collect._parse_params(["1", value])
    assert str(err.value) == f"--params {value!r}: give millions of parameters as a number (or 'auto')"


def _collect_error(*args, **kwargs) -> str:
    with pytest.raises(CollectError) as err:
        collect.collect(*args, **kwargs)
    return str(err.value)


def test_collect_argument_errors(full_root):
    assert _collect_error([]) == "give at least one experiment directory"
    assert _collect_error([full_root], names=["a", "b"]) == (
        "--names gives 2 name(s) for 1 experiment dir(s); give one per dir")
    assert _collect_error([full_root, full_root], params=[1.0]) == (
        "--params gives 1 value(s) for 2 experiment dir(s)")
    assert _collect_error([full_root], references="bogus,none") == (
        "unknown reference model(s) ['bogus', 'none']; choose from lighthubert_small, hubert_base, distilhubert, "
        "dphubert, lighthubert_stage1, wavlm_base_plus, fbank, 'default', 'all' or 'none'")


def test_collect_row_names_and_parameter_counts(full_root, tmp_path):
    plain = tmp_path / "plain_root"
    plain.mkdir()
    table = collect.collect([full_root, plain], params=[12.5, None], references="none")
    # names: the manifest's upstream and checkpoint stem, else the folder name
    assert [(r.name, r.kind, r.params_m) for r in table.rows] == [("lighthubert_local-tiny", "ours", 12.5),
                                                                  ("plain_root", "ours", None)]
    table = collect.collect([full_root, plain], names=["a", "b"], params=[None, 3.0], references="dphubert")
    assert [(r.name, r.kind, r.params_m) for r in table.rows] == [
        ("a", "ours", pytest.approx(2.520064)), ("b", "ours", 3.0), ("DPHuBERT", "reference", 23.59)]


def _full_root_markdown(root: Path, params: str) -> str:
    """The table of the fixture's root, one row, no published rows: values from the fixture's results."""
    score = HEADER.format(score="SUPERB score (partial, 7 tasks)")
    note = ("SUPERB score (partial): computed over 7/10 tasks (PR, KS, IC, SID, ER, ASR, ASV) as 1000 × mean over "
            "tasks of (x − FBANK)/(SOTA − FBANK) — the leaderboard formula restricted to these tasks, for every "
            "row alike. It is comparable within this table only; 'LB score' is the published 10-task leaderboard "
            "score.")
    # -836.1: the SUPERB score worked out in test_collect_package.test_collect_full_root
    return score + (
        f"| **mine** | {params} | 25.00 | 50.00 | 25.00 | 12.50 | 40.00 | 80.00 | 25.00 | missing | missing | missing "
        "| -836.1 | — |\n"
        f"\n*{note}*\n\n{METRICS_NOTE}\n\n**mine** ({root}):\n"
        "- PR: 25.00 — test on dev-best.ckpt\n- KS: 50.00 — test on dev-best.ckpt\n"
        "- IC: 25.00 — test on dev-best.ckpt\n- SID: 12.50 — test on dev-best.ckpt\n"
        "- ER: 40.00 — mean of 5 folds — folds: fold1 50.00, fold2 25.00, fold3 50.00, fold4 25.00, fold5 50.00\n"
        "- ASR: 80.00 — test-clean on dev-best.ckpt\n- ASV: 25.00 — test on states-10.ckpt\n"
        "- SD: missing\n- QbE: missing\n- SF: missing\n")


def _path_lines(out: Path) -> str:
    return (f"markdown {out / 'superb_results.md'}\ncsv      {out / 'superb_results.csv'}\n"
            f"json     {out / 'superb_results.json'}\nplot     {out / 'superb_results.png'}\n")


def test_main_prints_the_table_and_the_files(full_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert collect.main([str(full_root), "--names", "mine", "--params", "auto", "--references", "none",
                         "-o", str(out)]) == 0
    expected_md = _full_root_markdown(full_root.resolve(), "2.52")
    assert capsys.readouterr().out == expected_md + "\n" + _path_lines(out)
    assert (out / "superb_results.md").read_text(encoding="utf-8") == expected_md


def test_main_quiet_with_given_parameters(full_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert collect.main([str(full_root), "--names", "mine", "--params", "12.5", "--references", "none",
                         "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out == _path_lines(out)
    assert (out / "superb_results.md").read_text(encoding="utf-8") == _full_root_markdown(full_root.resolve(),
                                                                                          "12.50")


def test_main_errors_go_to_stderr_with_status_2(full_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert collect.main([str(full_root), "--params", "x", "-o", str(out)]) == 2
    assert capsys.readouterr() == ("", "lighthubert-s3prl collect: error: --params 'x': give millions of "
                                       "parameters as a number (or 'auto')\n")
    assert collect.main([str(full_root), str(full_root), "--names", "a", "-o", str(out)]) == 2
    assert capsys.readouterr() == ("", "lighthubert-s3prl collect: error: --names gives 1 name(s) for 2 experiment "
                                       "dir(s); give one per dir\n")
    assert not out.exists()


def test_main_help_names_the_command_and_describes_it(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        collect.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lighthubert-s3prl collect [-h] ")
    description = text.split("\n\n")[1]
    assert " ".join(description.split()) == (
        "Collect s3prl SUPERB results (run_superb.sh experiment roots or plain s3prl expdirs) into the paper-style "
        "table: Markdown, CSV, JSON and a parameters-vs-score plot, with published reference rows beside ours. "
        "Unfinished tasks are shown by status, never as numbers.")


# ----------------------------------------------------------------------------------------------------
# offline rows (a reduced task scale or a generated corpus): their score gets its own column and plot


def _offline_root(tmp_path: Path, name: str, scale: str, corpus_marker: bool) -> Path:
    data = tmp_path / f"data_{name}"
    data.mkdir()
    if corpus_marker:
        (data / collect.CORPUS_MANIFEST).write_text("{}")
    root = tmp_path / name
    units.write_json(root / units.MANIFEST_NAME, {"upstream": "fbank_no_cmvn", "ckpt": None, "subnet": None,
                                                    "scale": scale, "data": {"ks": {"root": str(data)}}})
    return root


@pytest.mark.parametrize("scale, marker, offline, synthetic", [
    ("mini", True, True, True), ("full", True, True, True), ("ci", False, True, False),
    ("full", False, False, False)])
def test_collect_model_reads_the_scale_and_whether_the_data_was_generated(scale, marker, offline, synthetic,
                                                                          tmp_path):
    row = collect.collect_model(_offline_root(tmp_path, "r", scale, marker))
    assert (row.scale, row.synthetic, row.offline) == (scale, synthetic, offline)


def test_corpus_marker_is_the_file_make_corpus_writes():
    from lighthubert_s3prl.superb import corpus

    assert collect.CORPUS_MANIFEST == corpus.MANIFEST_NAME


def _offline_table(synthetic: bool = True) -> Table:
    def ks_only(value: float) -> Dict[str, TaskResult]:
        return {t: TaskResult(t, "done", value) if t == "ks" else TaskResult(t, "missing") for t in OUR_TASKS}

    ours = ModelRow("distilled", "ours", 2.5, ks_only(75.0), "/x/d", scale="mini", synthetic=synthetic)
    fbank = ModelRow("fbank", "ours", 0.0, ks_only(50.0), "/x/f", scale="mini", synthetic=synthetic)
    ref = ModelRow("Ref", "reference", 94.7, {"ks": TaskResult("ks", "done", 96.0, source="paper")},
                   leaderboard_score=900, source="paper")
    scores = {"distilled": Score(-400.0, ("ks",)), "fbank": Score(-800.0, ("ks",)), "Ref": Score(800.0, ("ks",))}
    return Table([ours, fbank, ref], ("ks",), scores, GENERATED)


def test_offline_rows_score_in_a_column_of_their_own():
    md = collect.to_markdown(_offline_table())
    lines = md.splitlines()
    assert lines[0] == ("| Model | Params (M) | PR PER↓ | KS Acc↑ | IC Acc↑ | SID Acc↑ | ER Acc↑ | ASR WER↓ | ASV EER↓ | "
                        "SD DER↓ | QbE MTWV↑ | SF F1↑/CER↓ | mini-SUPERB score (synthetic, not comparable to the leaderboard) | "
                        "SUPERB score (partial, 1 task) | LB score |")
    missing = "missing | " * 8
    assert lines[2] == f"| **distilled** | 2.50 | missing | 75.00 | {missing}-400.0 | — | — |"
    assert lines[3] == f"| **fbank** | 0.00 | missing | 50.00 | {missing}-800.0 | — | — |"
    assert lines[4] == "| Ref (published) | 94.70 | — | 96.00 | — | — | — | — | — | — | — | — | — | 800.0 | 900 |"
    assert ("Our rows ran on generated speech at a reduced task scale: the same formula gives their 'mini-SUPERB "
            "score (synthetic, not comparable to the leaderboard)', which ranks them against each other, not against "
            "the published rows.") in md


def test_a_reduced_scale_on_real_data_is_named_by_its_scale():
    table = _offline_table(synthetic=False)
    assert table.offline_header() == "mini-scale score (not comparable to the leaderboard)"
    assert "Our rows ran on a reduced task scale: the same formula gives their 'mini-scale score" in table.score_note()


def test_offline_csv_and_json_say_which_rows_are_offline():
    table = _offline_table()
    csv_lines = collect.to_csv(table).splitlines()
    assert csv_lines[0].endswith(",leaderboard_score,path_or_source,offline")
    assert [line.rsplit(",", 1)[1] for line in csv_lines[1:]] == ["true", "true", "false"]
    data = collect.to_json(table)
    assert data["offline_score_label"] == "mini-SUPERB score (synthetic, not comparable to the leaderboard)"
    assert [(r["scale"], r["synthetic"]) for r in data["rows"]] == [("mini", True), ("mini", True), ("full", False)]


def test_offline_plot_leaves_the_published_points_out():
    spec = collect.plot_spec(_offline_table())
    assert spec == PlotSpec(
        (PlotPoint("fbank", 0.1, -800.0, True, "this run", (6, 6)),
         PlotPoint("distilled", 2.5, -400.0, True, None, (6, -12))),
        "mini-SUPERB score over KS vs parameters (synthetic, not comparable to the leaderboard)",
        "parameters (M, log scale)", "mini-SUPERB score", "log", None)


def test_plot_writes_a_png_whatever_savefig_format_the_matplotlibrc_sets(tmp_path):
    import matplotlib

    out = tmp_path / "p.png"
    with matplotlib.rc_context({"savefig.format": "pdf"}):
        assert collect.plot(_plot_table(), out) == out
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (840, 540)
