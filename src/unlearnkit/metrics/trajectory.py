"""Per-example trajectories: how each point's KLoM moves over a method's unlearning steps.

The missing-targets problem (Georgiev et al.'s blog post on Attribute-to-Delete; Hayes et al. 2024, "Inexact
Unlearning Needs More Careful Evaluations"): approximate methods reach different points at different
times, so a point that was closest to the oracles at some step is driven past them by the time the
method stops, and no single stopping time suits every point. Pure functions over a (steps, examples)
KLoM array whose first row is step 0 (the originals).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


# --- best-step selection over per-step metrics (language-model trajectories) -----------------------------
# OpenUnlearning's most requested missing feature (locuslab/open-unlearning issue #187): evaluate during
# unlearning and keep the checkpoint a stated rule prefers, instead of whatever the last step gives.

STEP_METRICS = {"forget_quality": "max", "model_utility": "max", "forget_probability": "min",
                "forget_truth_ratio": "max", "klom_forget": "min", "klom_retain": "min", "klom_val": "min"}
_CONSTRAINT = re.compile(r"^([a-z_]+)\s*(>=|<=)\s*([0-9.eE+-]+)(x?)$")


@dataclass(frozen=True)
class StepRule:
    """`max:METRIC` or `min:METRIC`, then any `;METRIC>=V` / `;METRIC<=V` constraints, where a value
    ending in `x` is relative to the originals' (step 0): `max:forget_quality;model_utility>=0.9x` keeps
    the step with the best forget quality among those that kept 90% of the original utility."""

    objective: str
    metric: str
    constraints: tuple[tuple[str, str, float, bool], ...] = ()

    @classmethod
    def parse(cls, text: str) -> StepRule:
        parts = [p.strip() for p in str(text).split(";")]
        head = parts[0].split(":")
        known = ", ".join(STEP_METRICS)
        if len(head) != 2 or head[0] not in ("max", "min") or head[1] not in STEP_METRICS:
            raise ValueError(f"a best-step rule starts with max:METRIC or min:METRIC (METRIC one of {known}), "
                             f"got {parts[0]!r}")
        constraints = []
        for p in parts[1:]:
            m = _CONSTRAINT.match(p.replace(" ", ""))
            if not m or m.group(1) not in STEP_METRICS:
                raise ValueError(f"a best-step constraint reads METRIC>=VALUE or METRIC<=VALUE (VALUE ending in x: "
                                 f"times the originals'), METRIC one of {known}; got {p!r}")
            try:
                value = float(m.group(3))
            except ValueError:
                raise ValueError(f"{p!r}: {m.group(3)!r} is not a number") from None
            constraints.append((m.group(1), m.group(2), value, bool(m.group(4))))
        return cls(head[0], head[1], tuple(constraints))

    def __str__(self) -> str:
        return ";".join([f"{self.objective}:{self.metric}"] + [f"{m}{op}{v:g}{'x' if rel else ''}"
                                                                for m, op, v, rel in self.constraints])

    def select(self, curves: dict[str, list]) -> dict:
        """{"rule", "step" (None when no step meets the constraints), "index", and each metric at it}.
        `curves["steps"]` lists the evaluated step counts, step 0 (the originals) first; ties go to the
        earliest step (the cheapest)."""
        steps = curves["steps"]
        ok = [i for i in range(len(steps)) if all(self._holds(curves, i, c) for c in self.constraints)
              and _finite(curves[self.metric][i])]
        if not ok:
            return {"rule": str(self), "step": None, "index": None,
                    "why": "no evaluated step meets the rule's constraints"}
        sign = 1 if self.objective == "max" else -1
        best = max(ok, key=lambda i: (sign * curves[self.metric][i], -i))
        return {"rule": str(self), "step": steps[best], "index": best,
                **{m: curves[m][best] for m in STEP_METRICS if m in curves}}

    @staticmethod
    def _holds(curves: dict, i: int, constraint) -> bool:
        metric, op, value, relative = constraint
        v, bound = curves[metric][i], value * curves[metric][0] if relative else value
        return _finite(v) and (v >= bound if op == ">=" else v <= bound)


def _finite(v) -> bool:
    return v is not None and np.isfinite(v)
