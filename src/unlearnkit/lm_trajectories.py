"""Language-model trajectories (`unlearnkit run --task tofu-… --trajectories K`): evaluation during unlearning.

Every K optimizer steps of a method (and at the originals, step 0) the N models are scored on every item
set exactly as a finished row is (`lm_row`, no bootstrap): TOFU's forget quality and model utility,
forget-answer probability and truth ratio, and sequence-level KLoM per split. The row gets the per-step
curves and the step a user-stated rule selects (`metrics.trajectory.StepRule`, `--best-step`);
`scores.npz` keeps the per-item KLoM and sequence scores at every step. The evaluation is not charged to
the method (its seconds and FLOPs are the same with and without trajectories).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .lm.scoring import KLOM_SPLITS, lm_row
from .metrics.trajectory import STEP_METRICS, StepRule
from .scoring import Settings


class LMRecorder:
    """The callback of `engine.observe.observing` for an `LMBench`: each observed step's metrics."""

    def __init__(self, bench):
        self.bench = bench
        self.settings = dataclasses.replace(Settings.of(bench.config), bootstrap=0, estimators=())
        self.steps: list[int] = []
        self.rows: list[dict] = []
        self.klom: list[np.ndarray] = []
        self.seq: list[np.ndarray] = []

    def __call__(self, step: int, params: dict) -> None:

        scores = self.bench.score(params)
        row, values = lm_row(scores, self.bench.oracle_scores, self.settings)
        self.steps.append(int(step))
        self.rows.append(row)
        self.klom.append(values.astype(np.float32))
        self.seq.append(np.concatenate([scores[s].seq for s in KLOM_SPLITS], 1).astype(np.float32))

    def result(self, rule: StepRule) -> tuple[dict, dict]:
        """(the row's "trajectory": per-step curves and the selected step, the arrays scores.npz keeps)."""
        curves = {"steps": self.steps, **{m: [_metric(r, m) for r in self.rows] for m in STEP_METRICS}}
        summary = {**curves, "best_step": rule.select(curves)}
        return summary, {"steps": np.asarray(self.steps), "klom": np.stack(self.klom), "seq": np.stack(self.seq)}


def _metric(row: dict, name: str) -> float | None:
    if name.startswith("klom_"):
        return row["klom_p95"][name.removeprefix("klom_")]
    if name == "forget_probability":
        return row["probability"]["forget"]
    return row[name]
