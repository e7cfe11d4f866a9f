"""The mini-SUPERB instrument ranks models, and the paper's first two claims hold in miniature, at a CI size.

The whole main job runs at a reduced size (``lighthubert-s3prl quickstart --steps ks=1000,ic=500``: the mini
corpus, the tiny model distilled from fbank, s3prl's own recipes) and the table must show the distilled
model and fbank each ahead of the random one on both tasks by more than MARGIN. MARGIN is larger than the
noise measured at this very size (docs/superb.md, "CI size": three downstream seeds per row,
`scripts/calibrate_mini.sh --tasks ks --set runner.total_steps=1000 ...`, and the same for IC at 500); a
broken upstream (layers in the wrong order, features misaligned with labels, a weighted sum that never
learns) collapses the gaps and fails here.

The quickstart's distilled model is reproduce-mini's stage-1 model (same config, corpus and seed), so the first
test is also the paper's first claim (distillation beats random init). The second claim (once-for-all training
makes a cut subnet much better than cutting the stage-1 model) runs reproduce-mini's stage 2 on that model and
its two rows at the same size.
"""
from __future__ import annotations

import shutil

import pytest

from lighthubert_s3prl.commands import quickstart, reproduce_mini

# At this size (downstream seeds 1-3, docs/superb.md "CI size") the gaps were: on KS (1,000 steps, the rate
# decaying to 0 over them as in ks/mini.yaml) distilled - random 15.5 (seed spread up to 1.6) and fbank - random
# 13.6 (2.4); on IC (500 steps) distilled - random 12.9 (0.9) and fbank - random 11.8 (1.2). Each margin is at
# least about three times the larger spread and well below the gap, so seed noise does not fail the test and a
# collapsed ranking does. (KS at 500 steps with its decaying rate was too short: distilled - random 6.0.)
MARGIN = {("distilled", "ks"): 7.0, ("distilled", "ic"): 5.0, ("fbank", "ks"): 7.0, ("fbank", "ic"): 5.0}
CI_STEPS = "ks=1000,ic=500"
# Claim 2 at this size (docs/training.md, "CI size", downstream seeds 1-3): stage2_default - stage1_cut was
# +12.5 on IC (seed spreads 1.8 and 2.0; a stage-2 model trained on two processes instead gave the same default
# row within a point). One seed's gap then varies by about 2.7, so a margin of 5 leaves 2.8 of those below the
# measured gap, and a stage 2 that does not train the cut subnet (gap about 0) fails.
CLAIM2_MARGIN_IC = 5.0


@pytest.fixture(scope="module")
def ci_size_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("mini_ordering")
    result = quickstart.run_quickstart(work, tasks="ks,ic", preset="mini", steps=CI_STEPS, jobs=2, threads=1)
    failed = [o for o in result["outcomes"] if o.status != "done"]
    assert not failed, f"units did not finish: {failed}"
    return work, {row.name: row.values() for row in result["table"].rows if row.kind == "ours"}


@pytest.fixture(scope="module")
def ci_size_table(ci_size_run):
    return ci_size_run[1]


@pytest.mark.parametrize("task", ["ks", "ic"])
def test_the_distilled_model_is_ahead_of_the_random_one(task, ci_size_table):
    distilled = ci_size_table[quickstart.ROWS[0].name][task]
    random = ci_size_table[quickstart.ROWS[1].name][task]
    assert distilled - random > MARGIN[("distilled", task)], (distilled, random)


@pytest.mark.parametrize("task", ["ks", "ic"])
def test_fbank_is_ahead_of_the_random_model(task, ci_size_table):
    fbank = ci_size_table[quickstart.ROWS[2].name][task]
    random = ci_size_table[quickstart.ROWS[1].name][task]
    assert fbank - random > MARGIN[("fbank", task)], (fbank, random)


def test_once_for_all_training_beats_cutting_the_stage1_model_on_ic(ci_size_run):
    work, _ = ci_size_run
    out = work / "reproduce"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copyfile(work / "checkpoints" / quickstart.DISTILLED_CKPT.format(seed=0), out / "checkpoints" / "stage1.pt")
    result = reproduce_mini.run_reproduce_mini(out, tasks="ic", seeds=(1,), rows="stage1_cut,stage2_default",
                                               steps=500, jobs=2, corpus=work / "corpus")
    assert not result["failed"], result["failed"]
    stage2 = result["rows"]["stage2_default"]["ic"].mean
    cut = result["rows"]["stage1_cut"]["ic"].mean
    assert stage2 - cut > CLAIM2_MARGIN_IC, (stage2, cut)
