"""Summaries of per-example KLoM over the forget, retain and validation splits."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .klom import klom
from .margins import check_options, model_pair, whole

SPLITS = ("forget", "retain", "val")


def summarize(values: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{'klom_p95': {split: ...}, 'klom_mean': ..., 'klom_median': ...} for per-example `values`.

    The headline is the 95th percentile (a method must be good on nearly every point, not on average),
    as Georgiev et al. 2024 ("Attribute-to-Delete: Machine Unlearning via Datamodel Matching", arXiv
    2410.23232, appendix E.1, and EasyDUB's tables) report KLoM per split.
    """
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise ValueError(f"values must be finite numbers, one per example, got {values.dtype} of shape {values.shape}")
    splits = checked_splits(splits, len(values))
    out = {"klom_p95": {}, "klom_mean": {}, "klom_median": {}}
    for name, idx in splits.items():
        v = values[idx]
        out["klom_p95"][name] = float(np.percentile(v, 95))
        out["klom_mean"][name] = float(v.mean())
        out["klom_median"][name] = float(np.median(v))
    return out


def checked_splits(splits: dict, n: int) -> dict[str, np.ndarray]:
    """Each split as an array of positions among `n` examples: non-empty, whole numbers, in range."""
    out = {}
    for name, idx in splits.items():
        idx = np.asarray(idx)
        if idx.ndim != 1 or not len(idx) or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"split {name!r} must be a non-empty 1-D array of example positions, got "
                             f"{idx.dtype} of shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"split {name!r} has positions {idx.min()}…{idx.max()}, outside the {n} examples")
        out[name] = idx
    return out


def bootstrap_p95(unlearned: np.ndarray, oracle: np.ndarray, splits: dict[str, np.ndarray], reps: int = 100,
                  seed: int = 0, max_examples: int = 2000, level: float = 0.95, workers: int = 1,
                  values: np.ndarray | None = None, **klom_kwargs) -> dict[str, list[float]]:
    """Bootstrap confidence interval of each split's KLoM p95, resampling *models*.

    Each replicate draws N_u unlearned and N_o oracle models with replacement and recomputes KLoM: the
    spread of the replicates shows how much the p95 depends on which models happened to be trained.
    Resampling with replacement duplicates models, which coarsens the histograms and biases every
    replicate's KLoM upwards (strongly so at small N), so the interval is the replicates' spread
    around their median, re-centred on the point estimate: [p95 − (med* − q_lo*), p95 + (q_hi* − med*)].
    For speed, a split larger than `max_examples` is represented in the replicates by a fixed random
    subsample (the centre, p95, is the whole split's, so the interval always holds the headline; `values`:
    the per-example KLoM of every example when the caller has it), and `workers` threads compute the
    replicates (the same numbers whatever their count).
    The interval is this project's (the KLoM papers report points): percentiles of a nonparametric
    bootstrap over the models (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"), re-centred
    as above.
    """
    check_options("bootstrap_p95", [(n, v, whole(v), "a whole number >= 1")
                                    for n, v in (("reps", reps), ("max_examples", max_examples), ("workers", workers))]
                  + [("level", level, 0 < level < 1, "in (0, 1)")])
    unlearned, oracle = model_pair(unlearned, oracle, ("unlearned", "oracle"), "KLoM", min_examples=0)
    full = klom(unlearned, oracle, **klom_kwargs) if values is None else np.asarray(values)
    if full.shape != (unlearned.shape[1],):
        raise ValueError(f"values must hold one KLoM per example ({unlearned.shape[1]}), got shape {full.shape}")
    splits = checked_splits(splits, unlearned.shape[1])
    rng = np.random.default_rng(seed)
    chosen = {k: (rng.choice(v, max_examples, replace=False) if len(v) > max_examples else v)
              for k, v in splits.items()}
    cols = np.concatenate(list(chosen.values()))
    bounds = np.cumsum([0] + [len(v) for v in chosen.values()])
    u, o = unlearned[:, cols], oracle[:, cols]

    def p95s(k: np.ndarray) -> np.ndarray:
        return np.array([np.percentile(k[a:b], 95) for a, b in zip(bounds[:-1], bounds[1:])])

    point = np.array([np.percentile(full[v], 95) for v in splits.values()])  # the headline, whatever the subsample
    draws = [(rng.integers(0, len(u), len(u)), rng.integers(0, len(o), len(o))) for _ in range(reps)]

    def replicate(draw) -> np.ndarray:
        return p95s(klom(u[draw[0]], o[draw[1]], **klom_kwargs))
    if workers > 1:  # numpy releases the GIL in the histogram work; the draws are fixed above, so same result
        with ThreadPoolExecutor(workers) as pool:
            stats = np.stack(list(pool.map(replicate, draws)))
    else:
        stats = np.stack([replicate(d) for d in draws])
    tail = 100 * (1 - level) / 2
    lo, mid, hi = (np.percentile(stats, q, axis=0) for q in (tail, 50, 100 - tail))
    return {name: [float(max(point[j] - (mid[j] - lo[j]), 0.0)), float(point[j] + (hi[j] - mid[j]))]
            for j, name in enumerate(chosen)}
