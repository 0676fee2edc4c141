"""Per-example trajectories: how each point's KLoM moves over a method's unlearning steps.

The missing-targets problem (Georgiev et al.'s blog post on Attribute-to-Delete; Hayes et al. 2024, "Inexact
Unlearning Needs More Careful Evaluations"): approximate methods reach different points at different
times, so a point that was closest to the oracles at some step is driven past them by the time the
method stops, and no single stopping time suits every point. Pure functions over a (steps, examples)
KLoM array whose first row is step 0 (the originals).
"""
from __future__ import annotations

import numpy as np


def _check(klom_steps: np.ndarray) -> np.ndarray:
    k = np.asarray(klom_steps, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] < 2 or k.shape[1] < 1:
        raise ValueError(f"a trajectory must be (steps ≥ 2, examples ≥ 1), got shape {k.shape}")
    return k


def worse_after_best(klom_steps, tolerance: float = 0.0) -> np.ndarray:
    """Per example: whether its final KLoM exceeds its best (lowest) over the steps by more than `tolerance`
    (its best step came before the last, and the method then pushed it away again)."""
    k = _check(klom_steps)
    return k[-1] > k.min(0) + tolerance


def stopping_gap(klom_steps) -> dict:
    """The best single stopping step (lowest mean KLoM over the examples) against per-example oracle
    stopping (each example at its own best step): their mean KLoMs and the gap between them, which no
    early-stopping rule can close."""
    k = _check(klom_steps)
    best = int(np.argmin(k.mean(1)))
    single, oracle = float(k[best].mean()), float(k.min(0).mean())
    return {"best_single_step_index": best, "mean_at_best_single_step": single, "mean_at_own_best_step": oracle,
            "gap": single - oracle, "mean_at_last_step": float(k[-1].mean())}
