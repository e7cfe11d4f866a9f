"""The calibration table: each row's mean and seed spread per task, and whether a gap beats the noise.

Runner roots are written by hand (``fake_unit``: a finished unit holding a result value); every mean,
sample standard deviation and gap below is worked out in the test from those values.
"""
from __future__ import annotations

import json
import math

import pytest

from lighthubert_s3prl.superb import calibration
from lighthubert_s3prl.superb.calibration import CalibrationError, Gap
from tests.test_collect_package import fake_unit


def write_rows(root, values):
    """values: row -> seed -> task -> fraction (ER: fold -> fraction)."""
    for row, seeds in values.items():
        for seed, tasks in seeds.items():
            for task, value in tasks.items():
                if task == "er":
                    for fold, v in value.items():
                        fake_unit(root / row / f"seed{seed}", "er", v, fold=fold)
                else:
                    fake_unit(root / row / f"seed{seed}", task, value)
    return root


@pytest.fixture
def three_seeds(tmp_path):
    return write_rows(tmp_path / "exp", {
        "fbank": {1: {"ks": 0.50, "asv": 0.20}, 2: {"ks": 0.54, "asv": 0.22}, 3: {"ks": 0.58, "asv": 0.24}},
        "random": {1: {"ks": 0.30, "asv": 0.30}, 2: {"ks": 0.31, "asv": 0.34}, 3: {"ks": 0.32, "asv": 0.38}},
        "distilled": {1: {"ks": 0.33}, 2: {"ks": 0.29}, 3: {"ks": 0.37}},
    })


def test_means_and_sample_spreads_per_row_and_task(three_seeds):
    rows = calibration.read_calibration(three_seeds)
    assert list(rows) == ["distilled", "fbank", "random"]
    ks = rows["fbank"]["ks"]
    assert ks.values == pytest.approx({1: 50.0, 2: 54.0, 3: 58.0})
    # mean 54; deviations -4, 0, 4; (16 + 0 + 16) / (3 - 1) = 16
    assert ks.mean == pytest.approx(54.0) and ks.std == pytest.approx(4.0) and ks.n == 3
    assert rows["random"]["asv"].mean == pytest.approx(34.0) and rows["random"]["asv"].std == pytest.approx(4.0)
    assert set(rows["distilled"]) == {"ks"}


def test_a_gap_beyond_the_margin_separates(three_seeds):
    rows = calibration.read_calibration(three_seeds)
    g = calibration.gap(rows, "ks", "fbank", "random")
    # 54 - 31 = 23 against the larger spread 4 (random's is 1): 23 > 2 x 4
    assert g.task == "ks" and g.gap == pytest.approx(23.0) and g.noise == pytest.approx(4.0) and g.separates
    assert not calibration.gap(rows, "ks", "fbank", "random", margin=6.0).separates  # 23 < 6 x 4


def test_lower_is_better_tasks_count_the_gap_the_other_way(three_seeds):
    rows = calibration.read_calibration(three_seeds)
    g = calibration.gap(rows, "asv", "fbank", "random")  # EER 22 vs 34: fbank is 12 points ahead
    assert g.gap == pytest.approx(12.0) and g.noise == pytest.approx(4.0) and g.separates
    reverse = calibration.gap(rows, "asv", "random", "fbank")
    assert reverse.gap == pytest.approx(-12.0) and not reverse.separates


def test_a_gap_inside_the_noise_does_not_separate(three_seeds):
    rows = calibration.read_calibration(three_seeds)
    g = calibration.gap(rows, "ks", "distilled", "random")  # 33 - 31 = 2; distilled's spread is 4
    assert g.gap == pytest.approx(2.0) and g.noise == pytest.approx(4.0) and not g.separates


def test_without_two_seeds_on_both_sides_nothing_separates(tmp_path):
    rows = calibration.read_calibration(write_rows(tmp_path / "exp", {
        "fbank": {1: {"ks": 0.90}}, "random": {1: {"ks": 0.10}, 2: {"ks": 0.12}}}))
    assert rows["fbank"]["ks"].std is None
    assert calibration.gap(rows, "ks", "fbank", "random") == Gap("ks", "fbank", "random", pytest.approx(79.0),
                                                                 None, False)
    assert calibration.gap(rows, "ic", "fbank", "random") == Gap("ic", "fbank", "random", None, None, False)
    assert calibration.gap(rows, "ks", "fbank", "nobody").gap is None


def test_er_takes_the_mean_of_the_folds_a_seed_finished(tmp_path):
    root = write_rows(tmp_path / "exp", {"fbank": {1: {"er": {"fold1": 0.6, "fold2": 0.8}}, 2: {"er": {"fold1": 0.5}}}})
    (root / "fbank" / "seed2" / "er" / "fold3").mkdir(parents=True)  # started, never finished
    rows = calibration.read_calibration(root)
    assert rows["fbank"]["er"].values == pytest.approx({1: 70.0, 2: 50.0})


def test_other_folders_are_not_rows_or_seeds(three_seeds):
    (three_seeds / "logs").mkdir()
    (three_seeds / "fbank" / "seed_old").mkdir()
    (three_seeds / "fbank" / "seed9").write_text("not a folder")
    (three_seeds / "notes.txt").write_text("x")
    rows = calibration.read_calibration(three_seeds)
    assert list(rows) == ["distilled", "fbank", "random"] and rows["fbank"]["ks"].n == 3


def test_markdown_and_json(tmp_path):
    rows = calibration.read_calibration(write_rows(tmp_path / "exp", {
        "fbank": {1: {"ks": 0.5, "asr": 0.30}, 2: {"ks": 0.7, "asr": 0.20}},
        "random": {1: {"ks": 0.2}, 2: {"ks": 0.2}}}))
    pairs = [("fbank", "random")]
    # ASR's WER is already a percent (0.30 -> 0.30); KS: 50, 70 -> 60 +- 14.14; random 20 +- 0
    # tasks in the results table's order (KS before ASR)
    assert calibration.to_markdown(rows, pairs) == (
        "| upstream | KS ↑ | ASR ↓ |\n"
        "|---|---|---|\n"
        "| fbank | 60.00 ± 14.14 (n=2) | 0.25 ± 0.07 (n=2) |\n"
        "| random | 20.00 ± 0.00 (n=2) | - |\n"
        "\n"
        "Gaps (positive: the first row is ahead; separates: gap > 2 x the larger seed std):\n"
        "\n"
        "| gap | KS | ASR |\n"
        "|---|---|---|\n"
        "| fbank - random | +40.00 separates | - |\n")
    data = calibration.to_json(rows, pairs, margin=3.0)
    assert data["rows"]["fbank"]["ks"] == {"mean": 60.0, "std": round(math.sqrt(200), 4), "n": 2,
                                           "by_seed": {"1": 50.0, "2": 70.0}}
    assert data["gaps"] == [
        {"task": "ks", "better": "fbank", "worse": "random", "gap": 40.0, "noise": round(math.sqrt(200), 4),
         "separates": False},  # 40 < 3 x 14.14
        {"task": "asr", "better": "fbank", "worse": "random", "gap": None, "noise": None, "separates": False}]


def test_the_command_writes_both_files(three_seeds, tmp_path, capsys):
    out = tmp_path / "results"
    assert calibration.main([str(three_seeds), "--pair", "fbank>random", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "calibration.md").read_text() in printed
    assert json.loads((out / "calibration.json").read_text())["gaps"][0]["better"] == "fbank"


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist; run scripts/calibrate_mini.sh"),
    (lambda root: (root / "fbank").mkdir(parents=True), "holds no <row>/seed<N> folders"),
])
def test_an_unusable_root_is_an_error_naming_the_fix(setup, message, tmp_path, capsys):
    root = tmp_path / "exp"
    setup(root)
    with pytest.raises(CalibrationError, match=message):
        calibration.read_calibration(root)
    assert calibration.main([str(root)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text", ["fbank", ">random", "fbank>", "fbank<random"])
def test_a_pair_must_name_two_rows(text):
    with pytest.raises(CalibrationError, match="expected BETTER>WORSE"):
        calibration.parse_pairs([text])


def test_qbe_has_no_seed_noise_so_any_gap_separates():
    rows = {"fbank": {"qbe": calibration.Cell({1: 0.80})}, "random": {"qbe": calibration.Cell({1: 0.03})},
            "same": {"qbe": calibration.Cell({1: 0.80})}}
    ahead = calibration.gap(rows, "qbe", "fbank", "random")
    assert ahead.gap == pytest.approx(0.77) and ahead.noise == 0.0 and ahead.separates
    assert not calibration.gap(rows, "qbe", "same", "fbank").separates  # a tie separates nothing
    text = calibration.to_markdown(rows, [("fbank", "random")])
    assert "| upstream | QbE ↑ |" in text and "QbE trains nothing" in text and "+0.77 separates" in text
