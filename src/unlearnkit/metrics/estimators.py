"""Low-variance estimators of KLoM's per-example KL(P_unlearned ‖ P_oracle), for small N.

The reference histogram estimator (`klom.klom`, 20 bins) needs ~100 models per arm: two samples of one
distribution read a mean KLoM of ~3.9 at N = 16 (its noise floor). These estimators read the same
divergence from the same margins with far less noise, at the price of assumptions; neither replaces the
histogram as the headline that compares with published numbers (EasyDUB, Georgiev et al. 2024).

- `gauss`: the closed-form KL between normal fits of the two samples,
  KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ln(σ₂/σ₁) + (σ₁² + (μ₁ − μ₂)²) / (2σ₂²) − ½.
  Exact when margins are Gaussian; blind to shape (an example that some models misclassify has a
  bimodal margin distribution, and two bimodal samples with equal moments read 0).
- `knn`: the k-nearest-neighbour estimator of Wang, Kulkarni & Verdú 2009 ("Divergence estimation
  for multidimensional densities via k-nearest-neighbor distances", IEEE Trans. Inf. Theory 55(5), eq. 5),
  in d = 1: D̂ = (1/n) Σᵢ ln(ν_k(i) / ρ_k(i)) + ln(m / (n − 1)), where ρ_k(i) is the distance from xᵢ to
  its k-th nearest neighbour among the other x's (the n unlearned margins) and ν_k(i) to its k-th
  nearest among the m oracle margins. Consistent without a shape assumption; k = 3 trades its variance
  (k = 1) against its bias (benchmarks/klom_estimators.py).

Both clip margins to [−100, 100] like the histogram, report KL in nats, clip estimates below at 0 (KL is
non-negative: a negative estimate means "no difference seen") and cap them at the histogram's ln(1/1e-5)
≈ 11.5, so that the three columns live on one scale.
"""
from __future__ import annotations

import numpy as np

CLIP, CAP = 100.0, float(np.log(1e5))
MIN_STD = 1e-3    # a collapsed sample (every model gives one margin) still has a finite normal fit
MIN_DIST = 1e-6   # tied margins (clipped at ±100, or copies of one model) still have a finite log-distance
KNN_K = 3


def gauss_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row KL between normal fits (unbiased variances): p (E, n), q (E, m) → (E,)."""
    p, q = np.clip(p, -CLIP, CLIP), np.clip(q, -CLIP, CLIP)
    mu1, mu2 = p.mean(1), q.mean(1)
    s1 = np.maximum(p.std(1, ddof=1), MIN_STD)
    s2 = np.maximum(q.std(1, ddof=1), MIN_STD)
    kl = np.log(s2 / s1) + (s1 ** 2 + (mu1 - mu2) ** 2) / (2 * s2 ** 2) - 0.5
    return np.clip(kl, 0.0, CAP)


def knn_kl(p: np.ndarray, q: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Per-row k-NN KL estimate (Wang, Kulkarni & Verdú 2009, eq. 5, d = 1): p (E, n), q (E, m) → (E,).
    With fewer than k + 1 models a side, k shrinks to what the samples allow."""
    n, m = p.shape[1], q.shape[1]
    if k < 1:
        raise ValueError(f"the k-NN estimator needs k ≥ 1, got k = {k}")
    k = min(k, n - 1, m)
    p, q = np.clip(p, -CLIP, CLIP), np.clip(q, -CLIP, CLIP)
    within = np.abs(p[:, :, None] - p[:, None, :])          # (E, n, n); the zero self-distance sorts first
    rho = np.partition(within, k, axis=2)[:, :, k]
    across = np.abs(p[:, :, None] - q[:, None, :])          # (E, n, m)
    nu = np.partition(across, k - 1, axis=2)[:, :, k - 1]
    d = np.log(np.maximum(nu, MIN_DIST)) - np.log(np.maximum(rho, MIN_DIST))
    kl = d.mean(1) + np.log(m / (n - 1))
    return np.clip(kl, 0.0, CAP)


# name -> (function, one line for `unlearnkit list`)
ESTIMATORS = {
    "hist": (None, "20-bin histogram (Georgiev et al. 2024; the reference, comparable with published numbers)"),
    "gauss": (gauss_kl, "KL between per-example normal fits (low variance; blind to bimodal margins)"),
    "knn": (knn_kl, f"k-nearest-neighbour KL, k = {KNN_K} (Wang, Kulkarni & Verdú 2009; low variance, no shape assumption)"),
}
