"""KLoM: KL divergence of margins between unlearned and oracle models, per example.

Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" (arXiv
2410.23232), appendix E.1, and the reference implementation in EasyDUB (RoyRin/data-unlearning-bench,
`compute_binned_KL_div`). For each example: clip both samples of margins to [−100, 100]; cut the pooled
range [min, max] into 20 equal bins; histogram each sample; floor q at 1e-5 where p > 0; renormalise
(as scipy.stats.entropy, which data-unlearning-bench calls, does; the newer EasyDUB-code does not, a
difference of at most ~1e-4 nats); KL in nats.

Direction: KL(P_unlearned ‖ P_oracle) — the unlearned models' distribution comes first. One published
version of the benchmark computed it reversed; the direction matters (a collapsed unlearned
distribution against a spread oracle reads very differently the two ways).

Binning: the reference's `np.digitize` puts the pooled maximum past the last edge and so drops it from
every histogram. By default we count it (last bin closed, as `np.histogram` does);
`reference_binning=True` reproduces the reference's behaviour to compare with published numbers.
With the floor, KLoM is at most about ln(1/eps) ≈ 11.5.
"""
from __future__ import annotations

import numpy as np

from .estimators import ESTIMATORS
from .margins import check_options, model_pair, whole

BINS, CLIP, EPS = 20, 100.0, 1e-5
# Two samples of one distribution read mean KLoM ≈ 3.0 at N = 20, 0.86 at 50, 0.34 at 100 (shared/README.md):
# below about this many models per arm the noise floor is high and retain/validation KLoM unstable.
SETTLED_N = 80


def klom(unlearned, oracle, bins: int = BINS, clip: float = CLIP, eps: float = EPS,
         reference_binning: bool = False, chunk: int = 4096, estimator: str = "hist") -> np.ndarray:
    """Per-example KLoM for margins of shape (models, examples): (N_u, E) and (N_o, E) → (E,).

    `estimator`: "hist" (this module's reference histogram; `bins`, `eps` and `reference_binning` apply
    to it alone) or one of the small-N estimators of `metrics.estimators` ("gauss", "knn")."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown KLoM estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    check_options("klom", [("bins", bins, whole(bins), "a whole number >= 1"), ("clip", clip, clip > 0, "> 0"),
                           ("eps", eps, 0 < eps < 1, "in (0, 1)"), ("chunk", chunk, whole(chunk), "a whole number >= 1")])
    p_all, q_all = model_pair(unlearned, oracle, ("unlearned", "oracle"), "KLoM", min_examples=0)
    out = np.empty(p_all.shape[1])
    fn = ESTIMATORS[estimator][0]
    if fn is not None:  # pairwise distances: (E, N, N) per block, so smaller blocks
        chunk = max(1, min(chunk, 2 ** 22 // (p_all.shape[0] * max(p_all.shape[0], q_all.shape[0]))))
    for s in range(0, p_all.shape[1], chunk):
        p, q = p_all[:, s:s + chunk].T, q_all[:, s:s + chunk].T
        out[s:s + chunk] = _klom_block(p, q, bins, clip, eps, reference_binning) if fn is None else fn(p, q)
    return out


def _klom_block(p: np.ndarray, q: np.ndarray, bins: int, clip: float, eps: float, reference: bool):
    """p: (E, N_u), q: (E, N_o) → (E,), all examples at once."""
    p, q = np.clip(p, -clip, clip), np.clip(q, -clip, clip)
    lo = np.minimum(p.min(1), q.min(1))
    hi = np.maximum(p.max(1), q.max(1))
    hi = np.where(lo >= hi, lo + 1, hi)  # all margins equal: one unit-wide range, as the reference does
    # Edges as np.linspace builds them: start + i·step, with the last edge exactly `stop`.
    edges = lo[:, None] + np.arange(bins + 1)[None, :] * ((hi - lo) / bins)[:, None]
    edges[:, -1] = hi
    p_prob, q_prob = (_histogram(s, edges, bins, reference) for s in (p, q))
    q_safe = np.where(p_prob > 0, np.maximum(q_prob, eps), q_prob)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_prob = p_prob / p_prob.sum(1, keepdims=True)
        q_safe = q_safe / q_safe.sum(1, keepdims=True)
        terms = np.where(p_prob > 0, p_prob * np.log(p_prob / q_safe), 0.0)
    return terms.sum(1)


def _histogram(samples: np.ndarray, edges: np.ndarray, bins: int, reference: bool) -> np.ndarray:
    """Row-wise histograms (E, bins) of samples (E, n) over per-row edges (E, bins + 1), normalised.

    Bin index = np.digitize(x, edges) = the number of edges <= x (1..bins are the bins, bins + 1 is "at
    the maximum"). It is found arithmetically, then corrected against the edges themselves, so it is
    exactly np.digitize's (a rounding error can move the arithmetic guess by one) in O(E·n), not O(E·n·bins)."""
    e, n = samples.shape
    rows = np.arange(e)[:, None]
    lo, width = edges[:, :1], (edges[:, -1:] - edges[:, :1]) / bins
    idx = np.clip(np.floor((samples - lo) / width), -1, bins + 1).astype(np.int64) + 1
    idx = np.minimum(idx, bins + 1)
    bounded = np.concatenate([np.full((e, 1), -np.inf), edges, np.full((e, 1), np.inf)], 1)  # bounded[k] = edges[k-1]
    for _ in range(2):
        idx = np.where(bounded[rows, idx] > samples, idx - 1, idx)       # guessed one too high
        idx = np.where(bounded[rows, idx + 1] <= samples, idx + 1, idx)  # guessed one too low
    if not reference:
        idx = np.minimum(idx, bins)
    counts = np.bincount((rows * (bins + 2) + idx).ravel(), minlength=e * (bins + 2)).reshape(e, bins + 2)
    counts = counts[:, 1:bins + 1].astype(np.float64)
    total = counts.sum(1, keepdims=True)
    # an arm whose every sample the reference's binning drops (all at the pooled maximum) is all zeros, not
    # 0/0, as data-unlearning-bench guards it (its renormalised KL then hides the gap: reference mode only)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
