"""``quickstart --steps``: one number for every task, or per-task pairs; bad input fails before any work."""
import pytest

from lighthubert_s3prl.commands.quickstart import shortened
from lighthubert_s3prl.superb.options import RunnerError


def _run_keys(n):
    return {"runner.total_steps": n, "runner.eval_step": n, "runner.save_step": n, "runner.log_step": n}


def test_one_number_shortens_every_task():
    assert shortened(["ks", "ic"], "300") == {"ks": _run_keys(300), "ic": _run_keys(300)}
    assert shortened(["ks", "ic"], 300) == {"ks": _run_keys(300), "ic": _run_keys(300)}


def test_pairs_shorten_the_named_tasks_and_leave_the_others_at_their_scale():
    assert shortened(["ks", "ic", "er"], "ks=1000, ic=500") == {"ks": _run_keys(1000), "ic": _run_keys(500), "er": {}}
    assert shortened(["ks", "ic"], {"ic": 7}) == {"ks": {}, "ic": _run_keys(7)}
    assert shortened(["ks", "ic"], None) == {"ks": {}, "ic": {}}


@pytest.mark.parametrize("spec, message", [
    ("abc", r"give a number, or TASK=N pairs"),
    ("ks=ten", r"'ks=ten': expected TASK=N"),
    ("sid=100", r"names sid, which this run does not include .*add them to --tasks"),
    ("0", r"at least 1"),
    ("ks=500,ic=0", r"at least 1, got \{'ic': 0\}"),
])
def test_bad_steps_are_refused_with_the_fix(spec, message):
    with pytest.raises(RunnerError, match=message):
        shortened(["ks", "ic"], spec)


def test_a_bad_steps_value_fails_before_the_corpus_is_made(tmp_path):
    from lighthubert_s3prl.commands import quickstart

    with pytest.raises(RunnerError, match="sid"):
        quickstart.run_quickstart(tmp_path / "qs", tasks="ks", steps="sid=5")
    assert not (tmp_path / "qs" / "corpus").exists()
