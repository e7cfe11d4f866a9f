"""Published SUPERB numbers to compare against, and the SUPERB score.

Values are public-set numbers from the SUPERB leaderboard and the DPHuBERT paper's Table 1 (with the
ARMHuBERT/STaR tables where those give a value). Every metric is in the unit the leaderboard shows: PER, WER, EER,
DER and accuracies in percent, QbE as MTWV, SF as (slot-type F1 %, slot-value CER %).

The SUPERB score (leaderboard "Score", the SLT-2022 challenge metric) is::

    score(u) = 1000 / T * sum_t mean_{m in metrics(t)} (s_m(u) - s_m(FBANK)) / (s_m(SOTA) - s_m(FBANK))

over the T = 10 tasks. Error metrics need no special case: their SOTA lies below FBANK, so the
denominator is negative as well. :func:`superb_score` computes it over any subset of tasks as
``1000 * mean(term)``, which equals the leaderboard formula when all ten tasks are present; with fewer
tasks it is a *partial* score, comparable only with other scores over the same tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

Value = Union[float, Tuple[float, float]]

# the ten leaderboard tasks, in the leaderboard's column order
ALL_TASKS: Tuple[str, ...] = ("pr", "ks", "ic", "sid", "er", "asr", "asv", "sd", "qbe", "sf")
# the tasks this project runs: all ten, in the same order
OUR_TASKS: Tuple[str, ...] = ALL_TASKS

TASK_LABELS: Dict[str, str] = {
    "pr": "PR PER↓", "ks": "KS Acc↑", "ic": "IC Acc↑", "sid": "SID Acc↑", "er": "ER Acc↑",
    "asr": "ASR WER↓", "asv": "ASV EER↓", "sd": "SD DER↓", "qbe": "QbE MTWV↑", "sf": "SF F1↑/CER↓",
}
TASK_NAMES: Dict[str, str] = {t: ("QbE" if t == "qbe" else t.upper()) for t in ALL_TASKS}
HIGHER_IS_BETTER: Dict[str, bool] = {
    "pr": False, "ks": True, "ic": True, "sid": True, "er": True, "asr": False, "asv": False,
    "sd": False, "qbe": True, "sf": True,  # sf is (F1 higher, CER lower); the score handles each part
}

# normalisation anchors of the score: SOTA as in the STaR table except SID, which the leaderboard's own
# data (Data.js) gives as 90.30 where the table prints 90.33; FBANK as in DPHuBERT's table
SOTA: Dict[str, Value] = {"pr": 3.53, "asr": 3.62, "ks": 96.66, "qbe": 0.0736, "sid": 90.30, "asv": 5.11,
                          "sd": 5.62, "ic": 98.76, "sf": (89.81, 21.76), "er": 67.62}
FBANK: Dict[str, Value] = {"pr": 82.01, "asr": 23.18, "ks": 41.38, "qbe": 0.0058, "sid": 20.06, "asv": 9.56,
                           "sd": 10.05, "ic": 9.65, "sf": (69.64, 52.94), "er": 48.24}


class ScoreError(ValueError):
    """A value the score cannot use (unknown task, wrong shape)."""


def task_term(task: str, value: Value) -> float:
    """One task's normalised contribution: 0 at FBANK, 1 at SOTA (can leave [0, 1])."""
    if task not in SOTA:
        raise ScoreError(f"unknown SUPERB task {task!r}; known: {', '.join(ALL_TASKS)}")
    sota, fbank = SOTA[task], FBANK[task]
    if isinstance(sota, tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(sota):
            raise ScoreError(f"{task} takes {len(sota)} values (F1, CER), got {value!r}")
        parts = [(float(v) - f) / (s - f) for v, s, f in zip(value, sota, fbank)]
        return sum(parts) / len(parts)
    if isinstance(value, (tuple, list)):
        raise ScoreError(f"{task} takes one value, got {value!r}")
    return (float(value) - fbank) / (sota - fbank)


@dataclass(frozen=True)
class Score:
    value: float
    tasks: Tuple[str, ...]  # the tasks it is computed over, in ALL_TASKS order

    @property
    def partial(self) -> bool:
        return set(self.tasks) != set(ALL_TASKS)

    def describe(self) -> str:
        if not self.partial:
            return f"{self.value:.1f} (all 10 tasks)"
        return f"{self.value:.1f} (partial: {len(self.tasks)}/10 tasks: {','.join(TASK_NAMES[t] for t in self.tasks)})"


def superb_score(values: Mapping[str, Optional[Value]], tasks: Optional[Iterable[str]] = None) -> Optional[Score]:
    """SUPERB score over ``tasks`` (default: every task with a value); None when none is available.

    Tasks named in ``tasks`` without a value are left out, so the returned ``Score.tasks`` says which
    tasks the number really covers.
    """
    wanted = list(tasks) if tasks is not None else [t for t in ALL_TASKS if values.get(t) is not None]
    unknown = [t for t in wanted if t not in SOTA]
    if unknown:
        raise ScoreError(f"unknown SUPERB task(s) {unknown}; known: {', '.join(ALL_TASKS)}")
    used = [t for t in ALL_TASKS if t in wanted and values.get(t) is not None]
    if not used:
        return None
    terms = [task_term(t, values[t]) for t in used]  # type: ignore[arg-type]
    return Score(1000.0 * sum(terms) / len(terms), tuple(used))


@dataclass(frozen=True)
class ReferenceModel:
    key: str
    name: str
    params_m: Optional[float]  # millions
    values: Mapping[str, Value]
    leaderboard_score: Optional[float]
    source: str
    notes: str = ""

    def score(self, tasks: Optional[Iterable[str]] = None) -> Optional[Score]:
        return superb_score(self.values, tasks)


REFERENCES: Dict[str, ReferenceModel] = {m.key: m for m in (
    ReferenceModel(
        "lighthubert_small", "LightHuBERT Small", 27.00,
        {"pr": 6.60, "ks": 96.07, "ic": 98.23, "sid": 69.70, "er": 64.12, "asr": 8.33, "asv": 5.42, "sd": 5.85,
         "qbe": 0.0764, "sf": (87.58, 26.90)},
        901, "SUPERB leaderboard, ARMHuBERT/STaR tables", "ASR 8.34 on the leaderboard"),
    ReferenceModel(
        "hubert_base", "HuBERT Base", 94.68,
        {"pr": 5.41, "ks": 96.30, "ic": 98.34, "sid": 81.42, "er": 64.92, "asr": 6.42, "asv": 5.11, "sd": 5.88,
         "qbe": 0.0736, "sf": (88.53, 25.20)},
        941, "DPHuBERT table 1, SUPERB leaderboard"),
    ReferenceModel(
        "distilhubert", "DistilHuBERT", 23.49,
        {"pr": 16.27, "ks": 95.98, "ic": 94.99, "sid": 73.54, "er": 63.02, "asr": 13.37, "asv": 8.55, "sd": 6.19,
         "qbe": 0.0511, "sf": (82.57, 35.59)},
        717, "DPHuBERT table 1, SUPERB leaderboard"),
    ReferenceModel(
        "dphubert", "DPHuBERT", 23.59,
        {"pr": 9.67, "ks": 96.36, "ic": 97.92, "sid": 76.83, "er": 63.16, "asr": 10.47, "asv": 5.84, "sd": 5.92,
         "qbe": 0.0693, "sf": (86.86, 28.26)},
        866, "DPHuBERT table 1, SUPERB leaderboard", "960 h, sparsity 0.75"),
    ReferenceModel(
        "lighthubert_stage1", "LightHuBERT Stage 1", 95.0,
        {"pr": 4.15, "ks": 96.82, "ic": 98.50, "sid": 80.01, "er": 66.25, "asr": 5.71, "asv": 5.14, "sd": 5.51,
         "qbe": 0.0737, "sf": (88.44, 25.92)},
        959, "SUPERB leaderboard"),
    ReferenceModel(
        "wavlm_base_plus", "WavLM Base+", 94.70,
        {"pr": 3.92, "ks": 97.37, "ic": 99.00, "sid": 89.42, "er": 68.65, "asr": 5.59, "asv": 4.07, "sd": 3.50,
         "qbe": 0.0988, "sf": (90.58, 21.20)},
        1106, "DPHuBERT table 1, SUPERB leaderboard"),
    ReferenceModel(
        "fbank", "FBANK", 0.0, dict(FBANK), 0, "DPHuBERT table 1 (the score's zero point)"),
)}

DEFAULT_REFERENCES: Tuple[str, ...] = ("lighthubert_small", "hubert_base", "distilhubert", "dphubert")


def select_references(spec: Union[None, str, Sequence[str]]) -> List[ReferenceModel]:
    """``None``/"default" -> the four default rows; "none" -> []; "all"; or comma-separated keys."""
    if spec is None or spec == "default":
        keys: Sequence[str] = DEFAULT_REFERENCES
    elif spec == "none":
        keys = ()
    elif spec == "all":
        keys = tuple(REFERENCES)
    else:
        keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    unknown = [k for k in keys if k not in REFERENCES]
    if unknown:
        raise ScoreError(f"unknown reference model(s) {unknown}; choose from {', '.join(REFERENCES)}, "
                         "'default', 'all' or 'none'")
    return [REFERENCES[k] for k in keys]


def check_reference_scores() -> List[Tuple[str, float, Optional[float]]]:
    """``(key, recomputed 10-task score, published leaderboard score)`` for every reference model."""
    return [(m.key, superb_score(m.values).value, m.leaderboard_score)  # type: ignore[union-attr]
            for m in REFERENCES.values()]
