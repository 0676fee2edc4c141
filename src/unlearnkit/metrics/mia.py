"""Membership-inference metrics for unlearning: U-LiRA, the NeurIPS 2023 challenge score, population attacks.

All functions are pure numpy over arrays of shape (models, examples). Scores are margins
φ = log p_y − log(1 − p_y) (`unlearnkit.metrics.margins`), or per-example features from `softmax_features`.

- `ulira`: per-example likelihood-ratio attack (Hayes et al. 2024), adapted to one fixed forget set.
- `neurips23_epsilons`, `neurips23_forget_score`, `neurips23_score`: the NeurIPS 2023 Machine Unlearning
  Challenge metric (google-deepmind/unlearning_evaluation, metric.py and main.py).
- `threshold_mia`, `svc_mia`, `softmax_features`: population attacks (one attacker for all examples), as
  the unlearning literature commonly reports them (OPTML-Group SVC_MIA; Song & Mittal 2021 features).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .margins import as_model_array, check_options, model_pair, whole

# NeurIPS 2023 challenge constants (google-deepmind/unlearning_evaluation @ ffae0ff, metric.py lines 24-26, 77).
DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
BUCKET = 0.5  # compute_forget_score_from_confs: bucket_size = 0.5, points halve per bucket (lines 331-338)
PEAKY_RATIO = 0.01  # _get_epsilons: a sample range under 1% of the other's range scores EPSILON_CAP (line 188)
LOG_FLOOR = math.log(1e-30)  # Song & Mittal's `_log_value` floor, probabilities clipped at 1e-30


# ----------------------------------------------------------------------------------------------------------
# Input checks


def _indices(idx, n: int, name: str) -> np.ndarray:
    idx = idx.detach().cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"{name} mask must have shape ({n},), got {idx.shape}")
        idx = np.flatnonzero(idx)
    if idx.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of example indices, got shape {idx.shape}")
    if idx.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{name} holds repeated indices")
    return idx.astype(np.int64)


def _model_subset(models, n: int) -> np.ndarray:
    return np.arange(n) if models is None else _indices(models, n, "models")


# ----------------------------------------------------------------------------------------------------------
# U-LiRA


def ulira(unlearned, oracle, forget, unseen, min_std: float = 1e-6) -> dict:
    """U-LiRA (Hayes et al. 2024, "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense
    of Privacy", arXiv 2403.01218, SaTML 2025: the "per-example U-MIA"), adapted to one fixed forget set.
    Source note: only the paper's abstract could be read from here; the construction below is LiRA's
    (Carlini et al. 2022, offline/online Gaussians per example) as the abstract and the project's field
    notes describe U-LiRA. The decision threshold (likelihood ratio 1) is our choice for an accuracy.

    unlearned (N_u, E), oracle (N_o, E): margins of every example under each unlearned model (original
    model i, trained on S including S_F, then unlearned) and each oracle (retrained on S_R); `forget` and
    `unseen` index the example axis (unseen = validation points no model trained on).

    The test. For a target model and an example x it fits one Gaussian to x's logit-scaled
    confidence (our margin) under shadow models that trained on x and then unlearned it, and one under
    shadow models that never trained on x (LiRA, Carlini et al. 2022), and predicts "x was unlearned" when
    the likelihood ratio N(φ; μ_u, σ_u²) / N(φ; μ_out, σ_out²) exceeds 1. Per-example Gaussians are what make
    the attack strong: easy and hard examples get their own references. It is scored by accuracy on a
    balanced set of pairs (target, x): half with x unlearned by the target, half with x never seen by it;
    0.5 means the attacker cannot tell, which exact retraining achieves by construction.

    How this differs from the paper, and why. The paper trains shadow models on random subsets of the data
    and unlearns a freshly drawn random forget set from each, so every example is "unlearned" under some
    shadows and "never seen" under others, and a target's held-out test points can serve as the negatives.
    Here the forget set is fixed: every unlearned model unlearned the same S_F and no model ever trained on
    a validation point, so the "unlearned" hypothesis exists only for forget points. Therefore:
      - hypotheses are realised by the two arms: for x ∈ S_F, unlearned models are draws of "x trained then
        unlearned", oracles are draws of "x never seen" (the oracle is exactly the paper's "out" world);
      - targets: every unlearned model (its forget points are positives) and every oracle (its forget
        points, which it never saw, are the negatives, standing in for the paper's unseen test points), so
        the balanced set is {(unlearned target, x)} ∪ {(oracle target, x)}, x ∈ S_F, each half weighted ½;
      - the target is left out of its own arm's Gaussian (leave-one-out), as the paper keeps the target out
        of its shadows; without it the test would partly recognise the target itself;
      - `unseen` points cannot be scored by the paper's test (no model unlearned them); the same statistic
        computed on them is returned as a control (`unseen_accuracy`): it measures how well the arms are told
        apart on data neither trained on (drift of the whole model, not membership). Ideal 0.5 too.
    Consequence: the forget score catches any difference between unlearned and oracle models on the forget
    points, membership or global damage; compare with `unseen_accuracy` to see which.

    Decision rule: log-likelihood ratio > 0 (likelihood ratio 1, the Bayes rule for the balanced prior).
    Gaussians: mean and population standard deviation (ddof=0, as LiRA's reference code), σ floored at
    `min_std`. Needs at least 3 models per arm (2 left after leaving the target out).

    Returns dict:
      accuracy: ½(mean TPR over unlearned targets + mean TNR over oracle targets) on S_F; 0.5 ideal, above
        0.5 = forget points reveal they were trained on (or the models differ there), 1 = always told apart;
      per_model (N_u,): ½(TPR of unlearned target i + mean oracle TNR) (its mean is `accuracy`);
      tpr_unlearned (N_u,), tnr_oracle (N_o,): each target's fraction of forget points classified right;
      per_example (|S_F|,): ½(fraction of unlearned targets flagging x + fraction of oracles clearing x),
        the per-example vulnerability the paper stresses;
      auc: threshold-free AUC of the log-likelihood ratio, unlearned-target pairs vs oracle-target pairs;
      unseen_accuracy, unseen_per_model, unseen_per_example: the same on `unseen` (control).
    """
    u, o = model_pair(unlearned, oracle, ("unlearned", "oracle"), "U-LiRA", 3,
                      " (2 left when the target is left out)")
    if not min_std > 0:
        raise ValueError(f"min_std must be positive, got {min_std}")
    n = u.shape[1]
    f_idx = _indices(forget, n, "forget")
    v_idx = _indices(unseen, n, "unseen")
    if np.intersect1d(f_idx, v_idx).size:
        raise ValueError("forget and unseen share examples")
    out = {"n_unlearned": u.shape[0], "n_oracle": o.shape[0]}
    for prefix, idx in (("", f_idx), ("unseen_", v_idx)):
        res = _ulira_block(u[:, idx], o[:, idx], min_std)
        if prefix:
            res = {k: res[k] for k in ("accuracy", "per_model", "per_example", "auc")}
        out.update({prefix + k: v for k, v in res.items()})
    return out


def _gauss(x: np.ndarray, min_std: float):
    """Per-example mean and population std over models, plus their leave-one-out versions per model."""
    n = x.shape[0]
    mean = x.mean(0)
    d = x - mean
    ss = (d ** 2).sum(0)
    std = np.maximum(np.sqrt(ss / n), min_std)
    # Without model i: mean − d_i/(n−1); Σ_{k≠i}(x_k − μ_{−i})² = ss − d_i² − d_i²/(n−1).
    loo_mean = mean - d / (n - 1)
    loo_var = np.maximum((ss - d ** 2 - d ** 2 / (n - 1)) / (n - 1), 0.0)
    return mean, std, loo_mean, np.maximum(np.sqrt(loo_var), min_std)


def _log_normal(x, mu, sd):
    return -np.log(sd) - 0.5 * ((x - mu) / sd) ** 2


def _ulira_block(u: np.ndarray, o: np.ndarray, min_std: float) -> dict:
    u_mu, u_sd, u_loo_mu, u_loo_sd = _gauss(u, min_std)
    o_mu, o_sd, o_loo_mu, o_loo_sd = _gauss(o, min_std)
    llr_u = _log_normal(u, u_loo_mu, u_loo_sd) - _log_normal(u, o_mu, o_sd)  # (N_u, E): positives
    llr_o = _log_normal(o, u_mu, u_sd) - _log_normal(o, o_loo_mu, o_loo_sd)  # (N_o, E): negatives
    tpr = (llr_u > 0).mean(1)
    tnr = (llr_o <= 0).mean(1)
    acc = 0.5 * (tpr.mean() + tnr.mean())
    per_example = 0.5 * ((llr_u > 0).mean(0) + (llr_o <= 0).mean(0))
    return {"accuracy": float(acc), "per_model": 0.5 * (tpr + tnr.mean()), "tpr_unlearned": tpr,
            "tnr_oracle": tnr, "per_example": per_example, "auc": float(auc(llr_u.ravel(), llr_o.ravel()))}


def auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC of telling `pos` from `neg` by a higher score, along the last axis (leading axes: one AUC each,
    e.g. per model): the Mann–Whitney statistic P(pos > neg) + ½ P(pos = neg) (Hanley & McNeil 1982), which
    is sklearn's `roc_auc_score` with `pos` labelled 1, ties included."""
    from scipy.stats import rankdata

    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    ranks = rankdata(np.concatenate([pos, neg], -1), axis=-1)
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ----------------------------------------------------------------------------------------------------------
# NeurIPS 2023 Machine Unlearning Challenge


def neurips23_epsilons(unlearned, retrained, delta: float = DELTA, chunk: int = 16) -> np.ndarray:
    """Per-example ε of the NeurIPS 2023 Machine Unlearning Challenge, margins (N_u, E), (N_r, E) → (E,).

    Source: google-deepmind/unlearning_evaluation @ ffae0ff, metric.py (`_get_epsilons`, lines 165-301, and
    the two rate functions). The confidence there is log p_y − log(1 − p_y) (lines 29-61), our margin. Why:
    (ε, δ)-unlearning says no test can tell unlearned from retrained models apart by more than e^ε; the
    best of a family of tests on each example, run over many models, lower-bounds that example's ε.

    Per example, exactly as the reference:
      - positive class = the arm with the larger median (on a tie the unlearned arm: `median_r > median_u`);
      - if the smaller of the two sample ranges is under 1% of the larger: ε = 50 (a collapsed arm);
      - single thresholds (lines 132-162): torch.linspace(min, max, ⌈100·(max − min)⌉) over both samples
        (a float32 grid, as torch builds it); predict positive when φ ≥ t;
      - interval thresholds (lines 64-129): "positive" = the arm with the smaller range (the other one on a
        tie), w = its range; right ends r = linspace(min_P + w − 2, max_P + 2, ⌈100·(that span)⌉), for each
        r, 400 left ends linspace(r − w − 2, r − w + 2); predict positive when l ≤ φ ≤ r;
      - rates are fractions of models (float32, as the reference); per threshold: perfect separation
        (FPR = FNR = 0) gives ε = ∞; else FPR·FNR = 0 discards the threshold; else
        ε = max(0, ln(1 − δ − FPR) − ln FNR, ln(1 − δ − FNR) − ln FPR), NaN terms ignored
        (lines 223-269);
      - ε = max over kept thresholds, clipped to [0, 50] (line 300).
    Deviations: where no threshold survives (both arms one identical constant) the reference fails an
    assertion; we return 0 (identical samples). N_u ≠ N_r is allowed (the reference needs equal counts).
    The single-threshold grid is torch's float32 linspace up to float rounding of its points. Checked
    bit-equal to the reference run on CPU (its `assert thr_eps`, line 285, raises on any numpy array of
    more than one kept threshold and had to read `assert len(thr_eps)`) on ~300 synthetic examples with
    ties, collapsed and separated arms, N = 7 to 100. Vectorised over examples: ~4.5 ms per example at
    N = 100 on one core (the reference: ~0.2 s on CPU).

    What to expect: ε is not ≈ 0 for two samples of one distribution. Tail thresholds find chance count
    ratios (e.g. 4 of 100 models vs 1 of 100: ε = ln 4), so at N = 100 per arm exact retraining gets mean
    ε ≈ 1.6 and F ≈ 0.15-0.2; compare methods with that null, not with F = 1.
    """
    u, r = model_pair(unlearned, retrained, ("unlearned", "retrained"), "the NeurIPS 2023 ε")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    tables = {}
    eps = np.empty(u.shape[1])
    for s in range(0, u.shape[1], chunk):
        eps[s:s + chunk] = _eps_block(u[:, s:s + chunk].T, r[:, s:s + chunk].T, delta, tables)
    return np.clip(eps, 0.0, EPSILON_CAP)


def _eps_table(n_p: int, n_q: int, delta: float, tables: dict) -> np.ndarray:
    """ε of one threshold as a function of (positives predicted positive, negatives predicted positive),
    (n_p + 1, n_q + 1), in the reference's float32; −inf marks a discarded threshold."""
    key = (n_p, n_q)
    if key not in tables:
        f32 = np.float32
        a = np.arange(n_p + 1, dtype=f32)[:, None]
        b = np.arange(n_q + 1, dtype=f32)[None, :]
        tpr, fnr = a / f32(n_p), (f32(n_p) - a) / f32(n_p)
        fpr, tnr = b / f32(n_q), (f32(n_q) - b) / f32(n_q)
        with np.errstate(divide="ignore", invalid="ignore"):
            e = np.fmax(np.log(f32(1 - delta) - fpr) - np.log(fnr), np.log(f32(1 - delta) - fnr) - np.log(fpr))
        e = np.clip(e, 0, None)
        e = np.where(fpr * fnr == 0, np.nan, e)
        e = np.where((fpr + fnr == 0) & (tpr + tnr == 2), np.inf, e)
        tables[key] = np.where(np.isnan(e), -np.inf, e).astype(np.float64).ravel()
    return tables[key]


def _eps_block(u: np.ndarray, r: np.ndarray, delta: float, tables: dict) -> np.ndarray:
    """u: (e, N_u), r: (e, N_r) → (e,) ε before the final clip."""
    e = u.shape[0]
    u_rng, r_rng = np.ptp(u, 1), np.ptp(r, 1)
    r_pos = np.median(r, 1) > np.median(u, 1)
    best = np.full(e, -np.inf)
    for flag in (True, False):  # single thresholds, positive = larger median
        rows = np.flatnonzero(r_pos == flag)
        if rows.size:
            p, q = (r[rows], u[rows]) if flag else (u[rows], r[rows])
            best[rows] = np.maximum(best[rows], _single_rule(p, q, delta, tables))
    pos_rng, neg_rng = np.where(r_pos, r_rng, u_rng), np.where(r_pos, u_rng, r_rng)
    r_peaky = np.where(pos_rng >= neg_rng, ~r_pos, r_pos)  # the reference swaps when pos_diff >= neg_diff
    for flag in (True, False):  # interval thresholds, positive = the peakier arm
        rows = np.flatnonzero(r_peaky == flag)
        if rows.size:
            p, q = (r[rows], u[rows]) if flag else (u[rows], r[rows])
            best[rows] = np.maximum(best[rows], _interval_rule(p, q, delta, tables))
    best = np.where(np.isneginf(best), 0.0, best)  # no threshold survived: identical constant samples
    with np.errstate(divide="ignore", invalid="ignore"):
        peaky = np.minimum(u_rng, r_rng) / np.maximum(u_rng, r_rng) < PEAKY_RATIO  # 0/0 is NaN: not peaky
    return np.where(peaky, EPSILON_CAP, best)


def _grid_count(c: np.ndarray, value_at, guess: np.ndarray, n, strict: bool = False,
                passes: int = 2) -> np.ndarray:
    """Number of points of an increasing per-row grid of n points that are ≤ c (< c if `strict`), from an
    arithmetic guess corrected against the grid values themselves (value_at(i), i in [0, n)). A guess from
    float arithmetic is off by at most one, which one pass corrects; a second is insurance where cheap."""
    before = np.greater_equal if strict else np.greater  # grid point i − 1 is not counted: it lies past c
    counted = np.less if strict else np.less_equal       # grid point i is counted
    g = np.clip(guess, 0, n)
    for _ in range(passes):
        g = np.where((g > 0) & before(value_at(np.maximum(g - 1, 0)), c), g - 1, g)
        g = np.where((g < n) & counted(value_at(np.minimum(g, np.maximum(n - 1, 0))), c), g + 1, g)
    return g


def _single_rule(p: np.ndarray, q: np.ndarray, delta: float, tables: dict) -> np.ndarray:
    """Max ε over the reference's single thresholds (predict positive when φ ≥ t). p: (e, N_P), q: (e, N_Q)."""
    both = np.concatenate([p, q], 1)
    lo, hi = both.min(1), both.max(1)
    n_t = np.ceil((hi - lo) * THRESHOLDS_PER_UNIT).astype(np.int64)  # float64, as the reference
    # torch.linspace(lo, hi, n_t) in the default dtype float32: start + i·step below halfway,
    # end − (n−1−i)·step above, a single point is `start`.
    f32 = np.float32
    lo32, hi32 = lo.astype(f32), hi.astype(f32)
    step = np.where(n_t > 1, (hi32 - lo32) / np.maximum(n_t - 1, 1).astype(f32), f32(0))
    half = n_t // 2

    def value_at(i):  # i: (e, m) indices into each row's grid
        i32 = i.astype(f32)
        below = lo32[:, None] + step[:, None] * i32
        above = hi32[:, None] - step[:, None] * (n_t[:, None] - 1 - i).astype(f32)
        v = np.where((i < half[:, None]) | (n_t[:, None] == 1), below, above)
        return v.astype(np.float64)

    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.floor((both - lo[:, None]) / step.astype(np.float64)[:, None]) + 1
    guess = np.where(n_t[:, None] > 1, np.nan_to_num(guess, nan=0.0, posinf=0.0, neginf=0.0), 1).astype(np.int64)
    idx = _grid_count(both, value_at, guess, n_t[:, None])  # (e, N): thresholds at or below each sample
    n_p = p.shape[1]
    ip, iq = idx[:, :n_p], idx[:, n_p:]
    # The counts (#P ≥ t_m, #Q ≥ t_m) = (#{i_c > m}) change only where m reaches some i_c: those m, and m = 0.
    cand = np.concatenate([np.zeros((p.shape[0], 1), np.int64), np.clip(idx, 0, np.maximum(n_t - 1, 0)[:, None])], 1)
    a = (ip[:, None, :] > cand[:, :, None]).sum(2)
    b = (iq[:, None, :] > cand[:, :, None]).sum(2)
    vals = _eps_table(n_p, q.shape[1], delta, tables)[a * (q.shape[1] + 1) + b]
    return np.where(n_t > 0, vals.max(1), -np.inf)


def _interval_rule(p: np.ndarray, q: np.ndarray, delta: float, tables: dict) -> np.ndarray:
    """Max ε over the reference's interval thresholds (positive when l ≤ φ ≤ r); p is the peakier arm.

    For right end r_j and left end l_{j,k}: #in = #{φ ≤ r_j} − #{φ < l_{j,k}}, clipped at 0 (l > r: empty).
    Both counts come from per-sample grid positions (no comparison of every sample with every threshold)
    and are carried for both arms at once in one integer, (n_q + 1)·#P + #Q, which is exactly the index
    into the ε table; when l > r both differences are ≤ 0, so clipping the combined value at 0 is exact."""
    e, n_p, n_q = p.shape[0], p.shape[1], q.shape[1]
    k = math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT)  # 400 left ends per right end
    p_min, p_max = p.min(1), p.max(1)
    width = p_max - p_min
    start, stop = (p_min + width) - BUFFER, p_max + BUFFER
    n_r = np.ceil((stop - start) * THRESHOLDS_PER_UNIT).astype(np.int64)  # 400 or 401 by float rounding
    j_max = int(n_r.max())
    # np.linspace(start, stop, n_r): start + j·step, the last point exactly `stop`.
    step_r = (stop - start) / np.maximum(n_r - 1, 1)

    def right_at(j):
        return np.where(j == (n_r - 1)[:, None], stop[:, None], start[:, None] + j * step_r[:, None])

    right = right_at(np.arange(j_max)[None, :])  # (e, J)
    valid = np.arange(j_max)[None, :] < n_r[:, None]
    both = np.concatenate([p, q], 1)  # (e, N)
    weight = np.concatenate([np.full(n_p, n_q + 1), np.ones(n_q, np.int64)])  # mixed radix: P counts, Q counts
    rows = np.arange(e)[:, None]

    # #{φ ≤ r_j} = #{samples whose first right end ≥ φ is at or before j}: jc = #{j: r_j < φ}.
    with np.errstate(invalid="ignore", divide="ignore"):
        guess = np.ceil((both - start[:, None]) / step_r[:, None])
    jc = _grid_count(both, right_at, np.nan_to_num(guess, nan=0.0, posinf=j_max, neginf=0.0).astype(np.int64),
                     n_r[:, None], strict=True)
    hist = np.zeros((e, j_max + 1), np.int64)
    np.add.at(hist, (np.broadcast_to(rows, jc.shape), jc), weight[None, :])
    at_most_r = np.cumsum(hist, 1)[:, :j_max]  # (e, J), combined

    # #{φ < l_{j,k}} = #{samples with kc ≤ k}, kc = #{k: l_{j,k} ≤ φ};
    # left ends np.linspace(r − w − 2, r − w + 2, 400).
    l_start = (right - width[:, None]) - BUFFER
    l_stop = (right - width[:, None]) + BUFFER
    l_step = (l_stop - l_start) / (k - 1)

    def left_at(i):  # (e, J, N) indices → left-end values
        return np.where(i == k - 1, l_stop[:, :, None], l_start[:, :, None] + i * l_step[:, :, None])

    guess = np.floor((both[:, None, :] - l_start[:, :, None]) / l_step[:, :, None]).astype(np.int64) + 1
    kc = _grid_count(both[:, None, :], left_at, guess, k, passes=1)  # (e, J, N) in [0, K]
    flat = (np.arange(e * j_max).reshape(e, j_max, 1) * (k + 1) + kc).ravel()
    below = np.bincount(flat, weights=np.broadcast_to(weight, kc.shape).ravel(), minlength=e * j_max * (k + 1))
    below = np.cumsum(below.reshape(e, j_max, k + 1)[:, :, :k], 2)  # (e, J, K), combined, exact in float64
    code = np.maximum(at_most_r[:, :, None] - below.astype(np.int64), 0)
    vals = _eps_table(n_p, n_q, delta, tables)[code].max(2)
    return np.where(valid, vals, -np.inf).max(1)


def neurips23_forget_score(eps, n_models: int | None = None) -> float:
    """Forget score F = mean over examples of 2^(−⌊ε/0.5⌋) (metric.py lines 329-349): ε in [0, 0.5) earns 1
    point, each further 0.5 halves it. F = 1 when no example's ε is measurable; F → 0 as examples leak.

    The reference also gives 0 points to any ε ≥ ⌈ln(N − 1)⌉, its "max epsilon" for N models (line 327,
    N = the number of unlearned models): pass `n_models` to reproduce that cut (ε ≥ 5 at N = 100, ≥ 7 at
    N = 512; it changes F by at most 2^−10 per example at N = 100); None applies the formula alone.
    """
    eps = np.asarray(eps, dtype=np.float64)
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"eps must be a non-empty 1-D array, got shape {eps.shape}")
    if not np.isfinite(eps).all() or (eps < 0).any():
        raise ValueError("eps must be finite and non-negative")
    bucket = np.floor(eps / BUCKET)
    points = np.exp2(-bucket)
    if n_models is not None:
        if n_models < 2:
            raise ValueError(f"n_models must be at least 2, got {n_models}")
        n_buckets = int(math.ceil(math.log(n_models - 1)) / BUCKET) if n_models > 2 else 0
        points = np.where(bucket < n_buckets, points, 0.0)
    return float(points.mean())


def neurips23_score(forget_score, retain_acc_u, retain_acc_r, test_acc_u, test_acc_r) -> float:
    """Final challenge score F · (RA_u / RA_r) · (TA_u / TA_r) (main.py line 337), with RA, TA the mean retain
    and test accuracies of the unlearned (u) and retrained (r) models (scalars or per-model arrays). Why:
    forgetting by destroying the model must not pay; the ratios are not capped at 1, as in the reference."""
    f = float(forget_score)
    if not (np.isfinite(f) and 0 <= f <= 1):
        raise ValueError(f"forget_score must lie in [0, 1], got {forget_score}")
    means = []
    for name, acc in (("retain_acc_u", retain_acc_u), ("retain_acc_r", retain_acc_r),
                      ("test_acc_u", test_acc_u), ("test_acc_r", test_acc_r)):
        a = np.asarray(acc, dtype=np.float64).ravel()
        if a.size == 0 or not np.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise ValueError(f"{name} must be non-empty accuracies in [0, 1]")
        means.append(a.mean())
    if means[1] == 0 or means[3] == 0:
        raise ValueError("retrained retain and test accuracies must be positive")
    return f * (means[0] / means[1]) * (means[2] / means[3])


# ----------------------------------------------------------------------------------------------------------
# Population attacks


def softmax_features(logits, labels, chunk: int = 8, workers: int = 1) -> dict:
    """Per-example features of each model's softmax, logits (models, examples, classes) → dict of
    (models, examples) arrays: correct (bool, argmax = label), confidence (p_y), entropy (−Σ p log p) and
    m_entropy, the modified entropy of Song & Mittal 2021 ("Systematic Evaluation of Privacy Risks of
    Machine Learning Models", USENIX Security 2021, their "Mentr"):
    −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i), which, unlike entropy, uses the label and is monotone in
    the right direction (low for confident-correct members).
    Logarithms are floored at log(1e-30) as in Song & Mittal's code (and OPTML-Group's MIA.py
    `_log_value`); log(1 − p) is computed without cancellation. Note: OPTML-Group's SVC_MIA.py `m_entropy`
    (lines 12-22) indexes columns by every label of the batch and takes log p for log(1 − p), so its
    m_entropy differs from this definition; we follow the paper. `workers` threads take blocks of `chunk`
    models (NumPy releases the GIL in this work; the same numbers whatever their count)."""
    check_options("softmax_features", [(k, v, whole(v), "a whole number >= 1")
                                       for k, v in (("chunk", chunk), ("workers", workers))])
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (models, examples, classes), got shape {logits.shape}")
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.shape != (logits.shape[1],):
        raise ValueError(f"labels must be ({logits.shape[1]},), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[2]):
        raise ValueError(f"labels must lie in [0, {logits.shape[2]})")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    m, n, c = logits.shape
    out = {"correct": np.empty((m, n), bool), "confidence": np.empty((m, n)), "entropy": np.empty((m, n)),
           "m_entropy": np.empty((m, n))}
    lab = labels.astype(np.int64)
    cols = np.arange(c)[None, None, :]

    def block(s: int) -> None:  # models s … s + chunk, written into their own rows of `out`
        z = logits[s:s + chunk].astype(np.float64)
        top = z.argmax(2)
        out["correct"][s:s + chunk] = top == lab[None, :]
        lse = _logsumexp(z, 2)
        logp = z - lse[:, :, None]
        p = np.exp(logp)
        # log(1 − p_i): log1p(−p_i) is accurate for p_i ≤ ½; only the top class can exceed ½, and for it
        # 1 − p = Σ_{j≠top} p_j exactly: logsumexp over the other logits − lse.
        log1mp = np.log1p(-np.minimum(p, 0.5))
        others = np.where(cols == top[:, :, None], -np.inf, z)
        with np.errstate(divide="ignore"):
            log1mp_top = _logsumexp(others, 2) - lse if c > 1 else np.full(top.shape, -np.inf)
        log1mp = np.where((cols == top[:, :, None]) & (p > 0.5), log1mp_top[:, :, None], log1mp)
        logp_f, log1mp_f = np.maximum(logp, LOG_FLOOR), np.maximum(log1mp, LOG_FLOOR)
        is_y = cols == lab[None, :, None]
        out["confidence"][s:s + chunk] = np.take_along_axis(p, lab[None, :, None].repeat(z.shape[0], 0), 2)[:, :, 0]
        out["entropy"][s:s + chunk] = -(p * logp_f).sum(2)
        out["m_entropy"][s:s + chunk] = -np.where(is_y, np.exp(log1mp) * logp_f, p * log1mp_f).sum(2)
    starts = range(0, m, chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            list(pool.map(block, starts))
    else:
        for s in starts:
            block(s)
    return out


def _logsumexp(z: np.ndarray, axis: int) -> np.ndarray:
    mx = z.max(axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(z - mx).sum(axis, keepdims=True)) + mx).squeeze(axis)


def threshold_mia(member_scores, nonmember_scores, higher_is_member: bool = True, models=None) -> dict:
    """Population threshold attack (Yeom et al. 2018; the "population U-MIAs" of Hayes et al. 2024):
    per target model, one threshold on a per-example score (loss, confidence or margin) for all examples.

    member_scores (M, n_in), nonmember_scores (M, n_out): the same M models' scores on members (e.g. the
    forget or retain set) and non-members (validation). `higher_is_member`: True for confidence or margin,
    False for loss. `models`: optional indices of the rows to average over.
    Per model: balanced accuracy ½(TPR + TNR) at the best threshold (chosen on these same points, so an
    optimistic attacker; 0.5 = chance) and the AUC (ties count ½). Returns accuracy and auc (means over
    models), per_model_accuracy and per_model_auc."""
    mem = as_model_array(member_scores, "member", "scores")
    non = as_model_array(nonmember_scores, "nonmember", "scores")
    if mem.shape[0] != non.shape[0]:
        raise ValueError(f"member and nonmember scores come from {mem.shape[0]} and {non.shape[0]} models")
    rows = _model_subset(models, mem.shape[0])
    sign = 1.0 if higher_is_member else -1.0
    s = sign * np.concatenate([mem[rows], non[rows]], 1)
    is_mem = np.zeros(s.shape[1], bool)
    is_mem[:mem.shape[1]] = True
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, 1)
    lab = is_mem[order]
    tpr = np.cumsum(lab, 1) / mem.shape[1]
    fpr = np.cumsum(~lab, 1) / non.shape[1]
    group_end = np.ones_like(lab)
    group_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]  # a threshold can only cut between distinct values
    bal = np.where(group_end, 0.5 * (tpr + 1 - fpr), 0.5)
    acc = np.maximum(bal.max(1), 0.5)
    aucs = auc(s[:, :mem.shape[1]], s[:, mem.shape[1]:])
    return {"accuracy": float(acc.mean()), "auc": float(aucs.mean()), "per_model_accuracy": acc,
            "per_model_auc": aucs}


def svc_mia(shadow_in, shadow_out, target, max_shadow: int = 1000, seed: int = 0, models=None,
            C: float = 3.0, gamma="auto", n_jobs: int = 1) -> dict:
    """SVC membership attack, "MIA-efficacy", as OPTML-Group/Unlearn-Saliency reports it
    (Classification/evaluation/SVC_MIA.py @ a6e89fd, lines 53-150; main_forget.py lines 169-180;
    OPTML-Group/Unlearn-Sparse evaluation/SVC_MIA.py has the same SVC and efficacy, early versions on entropy
    alone).

    Per model and per feature (correct, confidence p_y, entropy, m_entropy; see `softmax_features`): an
    sklearn SVC(kernel="rbf", C=3, gamma="auto") (line 67; gamma = 1/n_features = 1, features unscaled) is
    fit on the model's own shadow members `shadow_in` (label 1; the reference: the first |test| retain
    examples) against shadow non-members `shadow_out` (label 0; the test/validation set), then predicts
    the target (forget) examples. MIA-efficacy = 1 − mean prediction = the fraction of forget examples the
    attack calls NON-members (line 79, forget passed as `target_test`). Direction: higher = the forget set
    looks more like unseen data. Not 1 at best: the goal is the oracle models' value on the same points
    (forget points resemble training data even to a retrained model), so report it next to the oracle arm's.

    shadow_in, shadow_out, target: dicts feature → (M, n) arrays over the same M models (e.g.
    {k: v[:, retain_idx] for k, v in softmax_features(...).items()}), or single 2-D arrays (one feature,
    reported as "feature"). The reference balances the shadow sides by size; here both are subsampled to
    min(n_in, n_out, max_shadow) examples (one seeded draw, the same for every model and feature) to bound
    the SVC cost. `models`: optional row indices to evaluate; `n_jobs` > 1 fits models in parallel (joblib).
    Returns efficacy {feature: mean over models}, per_model {feature: (M,) array}, n_shadow.
    """
    ins, outs, tgts = (_features(x, name) for x, name in
                       ((shadow_in, "shadow_in"), (shadow_out, "shadow_out"), (target, "target")))
    if not (ins.keys() == outs.keys() == tgts.keys()):
        raise ValueError(f"shadow_in, shadow_out and target must have the same features, got {sorted(ins)}, "
                         f"{sorted(outs)}, {sorted(tgts)}")
    shapes = {name: {k: v.shape for k, v in d.items()} for name, d in
              (("shadow_in", ins), ("shadow_out", outs), ("target", tgts))}
    n_models = {s[0] for d in shapes.values() for s in d.values()}
    if len(n_models) != 1:
        raise ValueError(f"all features must come from the same number of models, got shapes {shapes}")
    for name, d in (("shadow_in", ins), ("shadow_out", outs), ("target", tgts)):
        if len({s[1] for s in shapes[name].values()}) != 1:
            raise ValueError(f"{name} features cover different numbers of examples: {shapes[name]}")
    if max_shadow < 1:
        raise ValueError(f"max_shadow must be at least 1, got {max_shadow}")
    m = n_models.pop()
    rows = _model_subset(models, m)
    n_in, n_out = next(iter(ins.values())).shape[1], next(iter(outs.values())).shape[1]
    n = min(n_in, n_out, max_shadow)
    rng = np.random.default_rng(seed)
    pick_in = np.sort(rng.choice(n_in, n, replace=False))
    pick_out = np.sort(rng.choice(n_out, n, replace=False))
    feats = list(ins)
    jobs = [([ins[f][row, pick_in] for f in feats], [outs[f][row, pick_out] for f in feats],
             [tgts[f][row] for f in feats]) for row in rows]
    if n_jobs == 1:
        eff = [_svc_efficacy(*job, C, gamma) for job in jobs]
    else:
        from joblib import Parallel, delayed

        # threads: libsvm fits without the GIL, and nothing is copied to worker processes
        eff = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_svc_efficacy)(*job, C, gamma) for job in jobs)
    eff = np.asarray(eff, dtype=np.float64).reshape(rows.size, len(feats))
    per_model = {f: eff[:, i] for i, f in enumerate(feats)}
    return {"efficacy": {k: float(v.mean()) for k, v in per_model.items()}, "per_model": per_model,
            "n_shadow": n}


def _svc_efficacy(ins: list, outs: list, tgts: list, C: float, gamma) -> list:
    """One model: for each feature, fit the SVC on shadow members (1) vs non-members (0) and return the
    fraction of target examples predicted 0. Identical (value, label) shadow points are merged into one
    point of weight = count (sklearn scales C per sample): the SVC dual depends on duplicates only through
    the sum of their coefficients, so the fit is the same problem, and the binary `correct` feature costs
    4 points instead of 2·n. Each distinct target value is predicted once."""
    from sklearn.svm import SVC

    out = []
    for x_in, x_out, x_t in zip(ins, outs, tgts):
        x = np.concatenate([x_in, x_out])
        y = np.concatenate([np.ones(x_in.size), np.zeros(x_out.size)])
        pts, first, counts = np.unique(np.stack([x, y], 1), axis=0, return_index=True, return_counts=True)
        keep = np.argsort(first)  # the reference's order (members, then non-members): libsvm's result
        pts, counts = pts[keep], counts[keep]  # depends on it within its tolerance
        clf = SVC(C=C, gamma=gamma, kernel="rbf").fit(pts[:, :1], pts[:, 1], sample_weight=counts.astype(np.float64))
        vals, inverse = np.unique(x_t, return_inverse=True)
        out.append(1.0 - clf.predict(vals[:, None])[inverse].mean())
    return out


def _features(x, name: str) -> dict:
    if isinstance(x, dict):
        if not x:
            raise ValueError(f"{name} holds no features")
        return {k: as_model_array(v, f"{name}[{k!r}]", "features") for k, v in x.items()}
    return {"feature": as_model_array(x, name, "features")}
