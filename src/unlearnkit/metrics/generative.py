"""Per-example unlearning quality of generative models from sequence scores (pure NumPy, no model code).

Every function takes (models, items) arrays of one score per model and item — here the answer's mean
token log-probability (`ItemScores.seq`; higher = the model finds the item more likely) — under the
models of one arm: unlearned, retrained (the oracles, never trained on the items) or original (trained
on them).

Which definition this is. Baluta, Lamblin, Tarlow, Pedregosa & Dziugaite 2024, "Unlearning in- vs.
out-of-distribution data in LLMs under gradient-based methods" (arXiv 2411.04388) formalise an
unlearning-quality metric for generative models, and per-example memorisation and difficulty. Only the
paper's abstract could be read here (no stored copy of its body), so its equations are not reproduced.
What is implemented instead, as the project's issue 12 asks in that case, is the per-example ε of the
NeurIPS 2023 Machine Unlearning Challenge (Triantafillou et al., "Evaluation for the NeurIPS Machine
Unlearning Competition", 2023; reference code google-deepmind/unlearning_evaluation, metric.py), whose
statistic is swapped from a classifier's logit-scaled confidence to the sequence score:

- ε per item: `metrics.mia.neurips23_epsilons` — the challenge's own function, the one the classifier
  rows use — over the unlearned and retrained models' sequence scores instead of margins (its
  thresholds are a grid of 100 per score unit, fine enough for mean token log-probabilities, which
  spread over a few nats). Lower is better; 0 is ideal.
- F: `metrics.mia.neurips23_forget_score` with the reference's cut at ⌈ln(N − 1)⌉. Even an exact
  unlearner scores well below 1 (chance separations of two finite samples): `forget_score_null`
  estimates what it would score on the same data, by permutation, and F is read against it.

Memorisation and difficulty, per item, as the issue states them (Baluta et al. use both to explain how
fast gradient ascent unlearns an item; counterfactual memorisation, Zhang et al. 2023 / Feldman 2020):

- `memorisation(with_item, without_item)` = mean score under models trained with the item − mean score
  under models trained without it (nats per token). 0 = training on the item changed nothing; positive
  = memorised (larger = more).
- `difficulty(without_item)` = −mean score under models trained without it: the item's mean token NLL
  when the model has to generalise to it. Higher = harder (less predictable from the rest of the data).

`steps_to_oracle` and `speed_correlations` relate the two to unlearning speed.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.stats

from .mia import neurips23_epsilons, neurips23_forget_score

__all__ = ["difficulty", "forget_score_null", "memorisation", "speed_correlations", "steps_to_oracle"]


def _scores(x, name: str, min_models: int = 1) -> np.ndarray:
    """`x` as a finite (models, items) float64 array with at least `min_models` models and one item."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a (models, items) array of numbers: {e}") from None
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (models, items), got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no items (shape {a.shape})")
    if a.shape[0] < min_models:
        raise ValueError(f"{name} needs at least {min_models} model(s) per item, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf (a diverged model?)")
    return a


def _pair(a, b, name_a: str, name_b: str, min_models: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _scores(a, name_a, min_models), _scores(b, name_b, min_models)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must score the same items: {a.shape[1]} vs {b.shape[1]} "
                         "items (arrays are (models, items))")
    return a, b


def forget_score_null(unlearned, retrained, reps: int = 20, seed: int = 0) -> float:
    """The forget score an exact unlearner would get here: the mean F over `reps` random reassignments of
    each item's pooled scores to two arms of the given sizes (a permutation null). F is far from 1 even
    then — with few models some rule separates two samples of one distribution by chance (about 0.3 at
    N = 4 to 16 for normal scores) — so read F against this, not against 1."""
    u, o = _pair(unlearned, retrained, "unlearned", "retrained", min_models=2)
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be a whole number ≥ 1, got {reps}")
    rng = np.random.default_rng(seed)
    pooled, n = np.concatenate([u, o]), u.shape[0]
    total = 0.0
    for _ in range(int(reps)):
        p = rng.permuted(pooled, axis=0)  # each item's column shuffled on its own
        total += neurips23_forget_score(neurips23_epsilons(p[:n], p[n:]), n)
    return total / reps


def memorisation(with_item, without_item) -> np.ndarray:
    """Per item: mean score under the models trained with it − mean score under the models trained
    without it, shape (items,). Positive = memorised; 0 = training on the item changed nothing."""
    w, wo = _pair(with_item, without_item, "with_item", "without_item")
    return w.mean(0) - wo.mean(0)


def difficulty(without_item) -> np.ndarray:
    """Per item: −mean score under the models trained without it (its mean token NLL when the model has
    to generalise to it), shape (items,). Higher = harder."""
    return -_scores(without_item, "without_item").mean(0)


def steps_to_oracle(steps, unlearned, retrained) -> np.ndarray:
    """Per item, the first of `steps` at which the unlearned models' median score has fallen to the
    retrained models' highest score or below (into their range, or past it), NaN if it never does.

    `steps`: increasing step counts, shape (points,); `unlearned`: (points, models, items) scores after
    each step count (0 steps = the originals); `retrained`: (models, items)."""
    s = np.asarray(steps, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all() or (np.diff(s) <= 0).any():
        raise ValueError(f"steps must be a non-empty, strictly increasing 1-D sequence, got {np.asarray(steps)!r}")
    try:
        u = np.asarray(unlearned, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"unlearned must be a (points, models, items) array of numbers: {e}") from None
    if u.ndim != 3 or u.shape[0] != s.size:
        raise ValueError(f"unlearned must be (points, models, items) with one point per step ({s.size}), "
                         f"got shape {u.shape}")
    o = _scores(retrained, "retrained")
    for p in range(s.size):
        _pair(u[p], o, f"unlearned[{p}]", "retrained")
    reached = np.median(u, axis=1) <= o.max(0)  # (points, items)
    first = reached.argmax(0)
    return np.where(reached.any(0), s[first], np.nan)


def speed_correlations(steps_needed, **properties) -> dict[str, dict]:
    """Spearman correlation of the steps each item needed (`steps_to_oracle`; NaN = not within the run,
    ranked as tied slowest) with each per-item property given by keyword (e.g. memorisation=…,
    difficulty=…). {name: {"rho", "p", "items"}}; rho and p are None where undefined (fewer than 3
    items, or a constant input). Positive rho: items with more of the property take more steps."""
    t = np.asarray(steps_needed, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"steps_needed must be a non-empty 1-D array, got shape {t.shape}")
    slowest = (np.nanmax(t) if not np.isnan(t).all() else 0.0) + 1.0
    t = np.where(np.isnan(t), slowest, t)
    out = {}
    for name, values in properties.items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != t.shape:
            raise ValueError(f"{name} must have one value per item ({t.size}), got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or inf")
        rho = p = None
        if t.size >= 3 and np.ptp(t) > 0 and np.ptp(v) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = scipy.stats.spearmanr(t, v)
            rho, p = float(r.statistic), float(r.pvalue)
        out[name] = {"rho": rho, "p": p, "items": int(t.size)}
    return out
