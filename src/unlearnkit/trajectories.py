"""Per-example trajectories of a classifier run (`unlearnkit run --trajectories K`).

While a method unlearns, every K optimizer steps (and before its first, at the originals) the N models
are evaluated on the forget set and a fixed sample of retain and validation points: their margins, and
each point's KLoM against the oracles. `scores.npz` keeps both per method; the results row gets
the summary of `metrics.trajectory` on the forget points. The evaluation is not charged to the method
(its seconds and FLOPs are the same with and without trajectories).
"""
from __future__ import annotations

import numpy as np
import torch

from .engine import predict
from .metrics import klom, margins
from .metrics.trajectory import stopping_gap, worse_after_best

SAMPLE = 500  # retain and validation points followed per split (the forget set is followed whole)


def sample_positions(splits: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The points a trajectory follows: every forget point, a seeded sample of retain and validation points."""
    rng = np.random.default_rng([seed, 7])
    return {k: (v if k == "forget" or len(v) <= SAMPLE else np.sort(rng.choice(v, SAMPLE, replace=False)))
            for k, v in splits.items()}


class Recorder:
    """The callback of `engine.observe.observing`: margins of the followed points at each observed step."""

    def __init__(self, forward, x: torch.Tensor, y: torch.Tensor):
        self.forward, self.x, self.y = forward, x, y
        self.steps: list[int] = []
        self.margins: list[np.ndarray] = []

    def __call__(self, step: int, params: dict) -> None:
        self.steps.append(step)
        self.margins.append(margins(predict(self.forward, params, self.x), self.y).numpy().astype(np.float32))

    def result(self, oracle_margins: np.ndarray, n_forget: int) -> tuple[dict, dict]:
        """(the row's "trajectory" summary over the forget points, the arrays scores.npz keeps)."""
        m = np.stack(self.margins)                                     # (T, N, E)
        values = np.stack([klom(step, oracle_margins) for step in m])  # (T, E)
        forget = values[:, :n_forget]
        summary = {"steps": [int(s) for s in self.steps],
                   "forget_worse_after_best": float(worse_after_best(forget).mean()),
                   **{f"forget_{k}": v for k, v in stopping_gap(forget).items()}}
        return summary, {"steps": np.asarray(self.steps), "klom": values.astype(np.float32), "margins": m}
