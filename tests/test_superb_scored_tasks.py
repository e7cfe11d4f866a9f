"""The runner's own scoring steps: QbE's layer sweep and SD's DER grid, with s3prl replaced by a recorder.

The recorder writes what s3prl would (QbE: a ``benchmark.stdlist.xml`` per layer; SD: the test predictions
and ``frame_shift``) from the synthetic corpus's own ground truth, so the right answers are known here: the
one layer given oracle scores must be chosen on dev and score MTWV 1 on test; oracle diarization must score
a DER near 0 and silence a DER of exactly 1. The launches are counted, so resuming an interrupted sweep at the
next layer, and never twice, is pinned too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from lighthubert_s3prl.superb import units
from lighthubert_s3prl.superb.corpus import make_corpus
from lighthubert_s3prl.superb.options import RunOptions
from lighthubert_s3prl.superb.runner import SuperbRunner
from lighthubert_s3prl.upstream.probe import PREFIX

CKPT = "/models/tiny.pt"
PARAMS_LINE = "[Expert] - LightHuBERT small subnet (2,520,064 parameters)\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scored") / "corpus"
    make_corpus(root, preset="ci", seed=0, tasks="sd,qbe")
    return root


def _runner(root: Path, task: str, corpus: Path) -> SuperbRunner:
    opts = RunOptions(upstream="lighthubert_local", tasks=[task], data={task: {"root": str(corpus)}}, exp_root=root,
                      ckpt=CKPT, device="cpu", gpus=0, er_folds=["fold1"])
    runner = SuperbRunner(opts)
    runner.build_configs([task])
    return runner


def _arg(cmd: List[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


# ----------------------------------------------------------------------------------------------------
# QbE


def _occurrences(corpus: Path, split: str) -> Tuple[List[str], Dict[str, set]]:
    """Documents and, per query, the documents holding its term: read from the groundtruth RTTM by hand."""
    root = corpus / "quesst14Database"
    docs = [line.split()[0].split("/")[-1][:-4] for line in
            (root / "scoring" / "language_key_utterances.lst").read_text().splitlines()]
    held: Dict[str, set] = {}
    rttm = root / "scoring" / f"groundtruth_quesst14_{split}" / f"quesst14_{split}.rttm"
    for line in rttm.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "LEXEME":
            held.setdefault(fields[5], set()).add(fields[1])
    return docs, held


class FakeQbE:
    """Answers the probe with 4 hidden states; layer ``oracle`` scores true pairs 1, every other layer the reverse."""

    def __init__(self, corpus: Path, oracle: int = 2) -> None:
        self.corpus, self.oracle = corpus, oracle
        self.calls: List[Tuple[str, int]] = []
        self.fail_at: Tuple[str, int] = ("", -1)

    def __call__(self, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        if "lighthubert_s3prl.upstream.probe" in cmd:
            self.calls.append(("probe", -1))
            return 0, PREFIX + json.dumps({"hidden_states": 4, "dim": 128, "downsample_rate": 320}) + "\n"
        split, layer, outdir = _arg(cmd, "-t"), int(_arg(cmd, "-l")), Path(_arg(cmd, "-p"))
        self.calls.append((split, layer))
        if (split, layer) == self.fail_at:
            return 1, "Traceback: killed\n"
        docs, held = _occurrences(self.corpus, "dev" if split == "dev" else "eval")
        lines = ['<stdlist termlist_filename="benchmark.stdlist.xml" system_id="benchmark">']
        for query in sorted(held):
            lines.append(f'<detected_termlist termid="{query}" term_search_time="1.0" oov_term_count="1">')
            for doc in docs:
                hit = doc in held[query]
                score = float(hit) if layer == self.oracle else float(not hit)
                lines.append(f'<term file="{doc}" channel="1" tbeg="0.000" dur="0.00" score="{score:.4f}" '
                             f'decision="{"YES" if score > 0.5 else "NO"}"/>')
            lines.append("</detected_termlist>")
        lines.append("</stdlist>")
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "benchmark.stdlist.xml").write_text("\n".join(lines) + "\n")
        return 0, PARAMS_LINE


def test_qbe_sweeps_every_layer_on_dev_and_scores_the_best_on_test(corpus, tmp_path, monkeypatch):
    fake = FakeQbE(corpus)
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: fake(cmd, log_path))
    root = tmp_path / "exp"
    runner = _runner(root, "qbe", corpus)
    outcome = runner.run_unit(runner.units[0])
    assert outcome.status == "done", outcome.message
    assert fake.calls == [("probe", -1), ("dev", 0), ("dev", 1), ("dev", 2), ("dev", 3), ("test", 2)]
    result = json.loads((root / "qbe" / units.RESULT_FILE).read_text())
    assert result["layer"] == 2 and result["value"] == 1.0 and result["params"] == 2_520_064
    # the reversed layers miss every term and raise false alarms: TWV below zero
    assert result["dev_mtwv_by_layer"]["2"] == 1.0 and all(result["dev_mtwv_by_layer"][k] <= 0 for k in "013")
    assert (root / "qbe" / "benchmark.stdlist.xml").read_bytes() == \
        (root / "qbe" / "layers" / "test-2" / "benchmark.stdlist.xml").read_bytes()
    assert result["prediction_sha256"] == units.sha256_of(root / "qbe" / "benchmark.stdlist.xml")
    assert not (root / "logs" / "qbe.train.log").exists()  # nothing was trained


def test_an_interrupted_qbe_sweep_resumes_at_the_next_layer(corpus, tmp_path, monkeypatch):
    fake = FakeQbE(corpus, oracle=3)
    fake.fail_at = ("dev", 2)
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: fake(cmd, log_path))
    root = tmp_path / "exp"
    runner = _runner(root, "qbe", corpus)
    failed = runner.run_unit(runner.units[0])
    assert failed.status == "failed" and "layer 2 on dev" in failed.message
    state = json.loads((root / "qbe" / units.LAYERS_FILE).read_text())
    assert sorted(state["dev_mtwv"]) == ["0", "1"] and state["hidden_states"] == 4
    fake.calls.clear()
    fake.fail_at = ("", -1)
    done = runner.run_unit(runner.units[0])
    assert done.status == "done"
    assert fake.calls == [("dev", 2), ("dev", 3), ("test", 3)]  # no second probe, no layer twice
    assert json.loads((root / "qbe" / units.RESULT_FILE).read_text())["layer"] == 3


# ----------------------------------------------------------------------------------------------------
# SD


class FakeDiarization:
    """Training leaves best-states-dev.ckpt; the test writes T_hat per test recording from the reference RTTM
    (``mode``: oracle probabilities with the speaker columns swapped, or silence) and frame_shift 320."""

    def __init__(self, corpus: Path, mode: str) -> None:
        self.test_dir = corpus / "Libri2Mix" / "data" / "test"
        self.mode = mode

    def __call__(self, cmd: List[str], log_path: Path) -> Tuple[int, str]:
        mode = _arg(cmd[cmd.index("lighthubert_s3prl.run_downstream"):], "-m")
        if mode == "train":
            expdir = Path(_arg(cmd, "-p"))
            expdir.mkdir(parents=True, exist_ok=True)
            (expdir / "best-states-dev.ckpt").write_bytes(b"best")
            return 0, PARAMS_LINE
        import h5py

        outdir = Path(_arg(cmd, "-o").split("=", 1)[1].strip('"'))
        (outdir / "frame_shift").write_text("320\n")
        (outdir / "scoring" / "predictions").mkdir(parents=True, exist_ok=True)
        durations = dict(line.split() for line in (self.test_dir / "reco2dur").read_text().splitlines())
        turns: Dict[str, List[Tuple[str, float, float]]] = {}
        for line in (self.test_dir / "rttm").read_text().splitlines():
            f = line.split()
            turns.setdefault(f[1], []).append((f[7], float(f[3]), float(f[3]) + float(f[4])))
        for rec, dur in durations.items():
            frames = int(float(dur) * 16000 / 320)
            speakers = sorted({s for s, _, _ in turns[rec]})
            probs = np.full((frames, 2), 0.05, dtype=np.float32)
            if self.mode == "oracle":
                for speaker, start, end in turns[rec]:
                    column = 1 - speakers.index(speaker)  # swapped: the mapping is the scorer's job
                    probs[int(round(start * 50)):int(round(end * 50)), column] = 0.95
            with h5py.File(outdir / "scoring" / "predictions" / f"{rec}.h5", "w") as h5:
                h5.create_dataset("T_hat", data=probs)
        return 0, "mode test acc 0.5 der 0.5\n"


@pytest.mark.parametrize("mode, low, high", [("oracle", 0.0, 0.02), ("silent", 1.0, 1.0)])
def test_sd_reports_the_lowest_der_of_superbs_grid_against_the_test_rttm(corpus, tmp_path, monkeypatch, mode, low,
                                                                         high):
    fake = FakeDiarization(corpus, mode)
    monkeypatch.setattr(SuperbRunner, "_execute", lambda self, cmd, log_path: fake(cmd, log_path))
    root = tmp_path / "exp"
    runner = _runner(root, "sd", corpus)
    outcome = runner.run_unit(runner.units[0])
    assert outcome.status == "done", outcome.message
    result = json.loads((root / "sd" / units.RESULT_FILE).read_text())
    grid = result["scoring"]["grid"]
    assert len(grid) == 10 and result["value"] == min(grid.values())
    assert low <= result["value"] <= high  # oracle turns, quantised to 20 ms frames; silence misses everything
    assert result["ckpt"] == "best-states-dev.ckpt" and result["prediction_file"] == "scoring/predictions"
    assert result["prediction_sha256"] == units.prediction_sha256(root / "sd" / "scoring" / "predictions")
    best = result["scoring"]
    assert Path(best["hypothesis_rttm"]).name == f"hyp_{best['threshold']}_{best['median']}.rttm"
