"""A classifier run's scores, and every metric computed from them.

A run saves, for every arm of models it judged (the originals, the oracles, and each method's row,
the retrain arm among them), each model's per-example scores: the margin, whether the prediction is
correct, and the softmax's entropy and modified entropy (what the population attacks read). Every
number in results.json is computed from these arrays, by `row_metrics`, both when the run finishes
and when `unlearnkit rescore` recomputes it later with other estimators or metrics: the two agree bit
for bit because they are the same computation over the same float32 arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import (
    expit,  # the logistic function, without overflow warnings at large margins
)

from .backends import local_cores
from .metrics import bootstrap_p95, klom, margins, summarize
from .metrics.estimators import ESTIMATORS
from .metrics.mia import (
    neurips23_epsilons,
    neurips23_forget_score,
    neurips23_score,
    softmax_features,
    svc_mia,
    ulira,
)

FIELDS = ("margin", "correct", "entropy", "m_entropy")
# name -> one line for `unlearnkit list` (direction and ideal value: what the table's legend says)
METRICS = {
    "klom": "KL(unlearned ‖ oracle) of margins per example (p95 per split; lower is better, the noise floor is ideal)",
    "ulira": "U-LiRA accuracy, per-example likelihood-ratio attack (Hayes et al. 2024; 0.5 ideal, higher leaks)",
    "neurips23": "NeurIPS'23 challenge: forget score F and F·(RA_u/RA_r)·(TA_u/TA_r) (higher is better; exact "
                 "retraining reads F ≈ 0.17 at N = 100, the noise-floor row's value)",
    "mia": "population SVC membership attack on the forget set, MIA-efficacy (OPTML; the noise-floor row's value "
           "is ideal)",
}
DEFAULT_METRICS = tuple(METRICS)
# Reported beside the reference histogram. Chosen on the default task's margins (benchmarks/klom_estimators.py):
# at N = 16 the Gaussian fit's floor is 0.15 mean / 0.47 p95 (the histogram's 3.8 / 6.0), its bias against
# its own N = 100 value +0.18, and do-nothing reads 25× its floor p95; k-NN's floor is as low but it reads
# large divergences too low at small N (bias −0.28, 6.5×). The Gaussian fit's blind spot, bimodal margins,
# is what `knn` is for.
DEFAULT_ESTIMATORS = ("gauss",)
ULIRA_MIN_MODELS = 3            # its Gaussians are fitted with the target model left out
MIA_MODELS = 16                 # target models the population attack fits SVCs for, per arm (~3 s a row)


@dataclass(frozen=True)
class ArmScores:
    """Per-model, per-example scores of one arm: arrays of shape (models, examples)."""

    margin: np.ndarray      # float32: logit_y − logsumexp_{j≠y} logit_j
    correct: np.ndarray     # bool: argmax == y
    entropy: np.ndarray     # float32: entropy of the softmax
    m_entropy: np.ndarray   # float32: modified entropy (Song & Mittal 2021)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> ArmScores:
        feats = softmax_features(logits.numpy(), labels.numpy(), workers=local_cores())
        return cls(margins(logits, labels).numpy().astype(np.float32), feats["correct"].astype(bool),
                   feats["entropy"].astype(np.float32), feats["m_entropy"].astype(np.float32))

    def finite(self) -> bool:
        return bool(np.isfinite(self.margin).all())

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{f}": getattr(self, f) for f in FIELDS}

    @classmethod
    def read(cls, arrays, prefix: str) -> ArmScores:
        return cls(*(arrays[f"{prefix}/{f}"] for f in FIELDS))

    def accuracies(self, splits: dict[str, np.ndarray]) -> dict[str, float]:
        return {k: float(self.correct[:, idx].mean(1).mean()) for k, idx in splits.items()}


@dataclass(frozen=True)
class Settings:
    """What the metrics of a row depend on beyond the scores (recorded in results.json's config)."""

    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    reference_binning: bool = False
    bootstrap: int = 100
    seed: int = 0

    @classmethod
    def of(cls, config) -> Settings:
        return cls(config.estimators, config.metrics, config.reference_binning, config.bootstrap, config.seed)


def row_metrics(arm: ArmScores, oracle: ArmScores, oracles: ArmScores, splits: dict[str, np.ndarray],
                s: Settings) -> tuple[dict, np.ndarray]:
    """One row's metrics and its per-example (histogram) KLoM. `oracle` is what the row is judged
    against (the oracles, or a method's own reference arm); `oracles` gives the accuracy ratios of the
    NeurIPS'23 score."""
    kw = {"reference_binning": s.reference_binning}
    values = klom(arm.margin, oracle.margin, **kw)
    row = {**summarize(values, splits), "accuracy": arm.accuracies(splits)}
    if s.bootstrap:
        row["klom_p95_ci"] = bootstrap_p95(arm.margin, oracle.margin, splits, reps=s.bootstrap, seed=s.seed,
                                           workers=local_cores(), values=values, **kw)
    for name in s.estimators:
        if name != "hist":
            by = summarize(klom(arm.margin, oracle.margin, estimator=name), splits)
            row.setdefault("klom_estimators", {})[name] = {k.removeprefix("klom_"): v for k, v in by.items()}
    forget, val = splits["forget"], splits["val"]
    if "ulira" in s.metrics and min(len(arm.margin), len(oracle.margin)) >= ULIRA_MIN_MODELS:
        row["ulira"] = {k: float(v) for k, v in ulira(arm.margin, oracle.margin, forget, val).items()
                        if np.ndim(v) == 0}
    if "neurips23" in s.metrics:
        eps = neurips23_epsilons(arm.margin[:, forget], oracle.margin[:, forget])
        f = neurips23_forget_score(eps, n_models=len(arm.margin))
        acc_u, acc_o = row["accuracy"], oracles.accuracies(splits)
        row["neurips23"] = {"forget_score": float(f), "eps_mean": float(np.mean(eps)),
                            "score": float(neurips23_score(f, acc_u["retain"], acc_o["retain"], acc_u["val"],
                                                           acc_o["val"]))}
    if "mia" in s.metrics:
        row["mia"] = population_mia(arm, splits, s.seed)
    return row, values


def population_mia(arm: ArmScores, splits: dict[str, np.ndarray], seed: int) -> dict:
    """The OPTML SVC attack's MIA-efficacy per feature (`metrics.mia.svc_mia`: shadow members = retain,
    non-members = validation, target = forget), mean over the arm's first `MIA_MODELS` models."""
    feats = {"correctness": arm.correct, "confidence": expit(arm.margin.astype(np.float64)),
             "entropy": arm.entropy, "m_entropy": arm.m_entropy}
    side = {name: {k: v[:, splits[name]] for k, v in feats.items()} for name in ("retain", "val", "forget")}
    out = svc_mia(side["retain"], side["val"], side["forget"], seed=seed,
                  models=np.arange(min(MIA_MODELS, len(arm.margin))), n_jobs=local_cores())
    return {k: float(v) for k, v in out["efficacy"].items()}


def check_settings(estimators, metrics) -> None:
    from .errors import UnlearnkitError
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise UnlearnkitError(f"unknown KLoM estimator(s) {', '.join(bad)}; known: {', '.join(ESTIMATORS)}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UnlearnkitError(f"unknown metric(s) {', '.join(bad)}; known: {', '.join(METRICS)}")
    if "klom" not in metrics:
        raise UnlearnkitError("the metrics must include klom (the table's headline)")
