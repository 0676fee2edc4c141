"""Tests for margins, KLoM and the KLoM summaries (unlearnkit.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from unlearnkit.errors import Diverged
from unlearnkit.metrics.klom import klom
from unlearnkit.metrics.margins import accuracy, margins, mean_cross_entropy
from unlearnkit.metrics.summary import bootstrap_p95, summarize

EPS = 1e-5
LN_1_OVER_EPS = math.log(1 / EPS)  # ≈ 11.513


# ---------------------------------------------------------------------------------------------------
# Independent reimplementations of the reference (EasyDUB) KLoM, one example at a time.
# ---------------------------------------------------------------------------------------------------

def _edges(p: np.ndarray, q: np.ndarray, bins: int = 20) -> np.ndarray:
    lo = min(p.min(), q.min())
    hi = max(p.max(), q.max())
    if lo >= hi:
        hi = lo + 1
    return np.linspace(lo, hi, bins + 1)


def _kl_from_probs(p_prob: np.ndarray, q_prob: np.ndarray) -> float:
    q_safe = np.where(p_prob > 0, np.maximum(q_prob, EPS), q_prob)
    return float(scipy.stats.entropy(p_prob, q_safe))


def ref_klom_one(p: np.ndarray, q: np.ndarray) -> float:
    """EasyDUB's reference: np.digitize, counts for bins 1..20 (the pooled maximum falls in bin 21)."""
    p, q = np.clip(p, -100, 100), np.clip(q, -100, 100)
    edges = _edges(p, q)

    def probs(x):
        idx = np.digitize(x, edges)
        counts = np.array([(idx == b).sum() for b in range(1, 21)], dtype=float)
        return counts / counts.sum()

    return _kl_from_probs(probs(p), probs(q))


def hist_klom_one(p: np.ndarray, q: np.ndarray) -> float:
    """The same computation with np.histogram-style counting (last bin closed: the maximum counts)."""
    p, q = np.clip(p, -100, 100), np.clip(q, -100, 100)
    edges = _edges(p, q)

    def probs(x):
        counts = np.histogram(x, bins=edges)[0].astype(float)
        return counts / counts.sum()

    return _kl_from_probs(probs(p), probs(q))


def ref_klom(u: np.ndarray, o: np.ndarray, one=ref_klom_one) -> np.ndarray:
    return np.array([one(u[:, j], o[:, j]) for j in range(u.shape[1])])


# ---------------------------------------------------------------------------------------------------
# margins
# ---------------------------------------------------------------------------------------------------

LOGITS = [
    [[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [1.0, 1.0, 1.0]],
    [[-2.0, 0.0, 4.0], [10.0, 0.0, -5.0], [0.3, 0.2, 0.1]],
]
LABELS = [0, 2, 1]


def test_margins_match_hand_computation():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    labels = torch.tensor(LABELS)
    got = margins(logits, labels)
    assert got.shape == (2, 3)
    for m in range(2):
        for e in range(3):
            row, y = LOGITS[m][e], LABELS[e]
            others = sum(math.exp(v) for j, v in enumerate(row) if j != y)
            expected = row[y] - math.log(others)
            assert got[m, e].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # A few values worked out by hand: [1,1,1] label 1 → 1 − ln(2e) = −ln 2; [2,1,0] label 0 → 2 − ln(e + 1).
    assert got[0, 2].item() == pytest.approx(-math.log(2))
    assert got[0, 0].item() == pytest.approx(2 - math.log(math.e + 1))


def test_margins_equal_log_odds_of_softmax():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    labels = torch.tensor(LABELS)
    p = torch.softmax(logits, dim=2).gather(2, labels.view(1, -1, 1).expand(2, -1, 1)).squeeze(2)
    torch.testing.assert_close(margins(logits, labels), torch.log(p) - torch.log1p(-p))

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (50,), generator=g)
    p = torch.softmax(logits, dim=2).gather(2, labels.view(1, -1, 1).expand(4, -1, 1)).squeeze(2)
    torch.testing.assert_close(margins(logits, labels), torch.log(p) - torch.log1p(-p))


@pytest.mark.parametrize("logits, labels", [
    (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)),              # 2-D logits
    (torch.zeros(2, 3, 4), torch.zeros(4, dtype=torch.long)),           # wrong label length
    (torch.zeros(2, 3, 4), torch.tensor([0, 1, 4])),                    # label out of range (too big)
    (torch.zeros(2, 3, 4), torch.tensor([0, -1, 2])),                   # label out of range (negative)
])
def test_margins_reject_bad_shapes(logits, labels):
    with pytest.raises(ValueError):
        margins(logits, labels)


@pytest.mark.parametrize("fn", [margins, accuracy, mean_cross_entropy])
def test_functions_of_logits_take_arrays_and_name_bad_input(fn):
    """The same checks everywhere: NumPy arrays are taken, and NaN logits, float labels, labels of another
    length or out of range are refused by name, not computed into a silent 0 or NaN."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 5, 3, generator=g), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(fn(logits.numpy(), labels.numpy()), fn(logits, labels))
    for bad_logits, bad_labels, match in [
            (logits, labels.double(), "integer classes"), (logits, labels[:4], "one per example"),
            (logits, labels + 10, r"lie in \[0, 3\)"), (logits.flatten(1), labels, "shape")]:
        with pytest.raises(ValueError, match=match):
            fn(bad_logits, bad_labels)
    with pytest.raises(Diverged, match=r"logits contain NaN in model\(s\) \[1\]"):
        fn(torch.stack([logits[0], logits[1].index_fill(0, torch.tensor([2]), float("nan"))]), labels)
    if fn is not margins:
        with pytest.raises(ValueError, match="no examples"):
            fn(logits[:, :0], labels[:0])


def test_reference_binning_with_an_arm_all_at_the_pooled_maximum_is_the_references_value():
    """The reference's binning drops the pooled maximum; when that is every oracle sample (all clipped at
    +100), its histogram is empty. data-unlearning-bench guards that total (zeros), then scipy renormalises
    the eps-floored q over p's support: a finite KL of ln k − H(p), which hides how far apart the arms are
    (the reference binning's defect); before, it was NaN and killed the row. The default counts the maximum."""
    def guarded_reference(p, q):  # ref_klom_one with data-unlearning-bench's guard of an empty histogram
        p, q = np.clip(p, -100, 100), np.clip(q, -100, 100)
        edges = _edges(p, q)

        def probs(x):
            counts = np.array([(np.digitize(x, edges) == b).sum() for b in range(1, 21)], dtype=float)
            return counts / counts.sum() if counts.sum() else counts
        return _kl_from_probs(probs(p), probs(q))

    u, o = np.array([[90.0], [94.0], [94.1], [110.0]]), np.array([[150.0], [130.0], [200.0], [101.0]])
    ours = klom(u, o, reference_binning=True)[0]
    assert ours == pytest.approx(guarded_reference(u[:, 0], o[:, 0]), abs=1e-12)
    assert ours == pytest.approx(np.log(2) - scipy.stats.entropy([1 / 3, 2 / 3]))  # ln k − H(p): 0.057
    assert klom(u, o)[0] > 5  # counted, the maximum separates the arms


def test_summaries_and_klom_options_refuse_bad_input():
    u, o, splits = _bootstrap_case()
    for kwargs, match in [({"reps": 0}, "reps"), ({"level": 1.5}, "level"), ({"max_examples": 0}, "max_examples")]:
        with pytest.raises(ValueError, match=match):
            bootstrap_p95(u, o, splits, **kwargs)
    with pytest.raises(ValueError, match="cover 90 and 10 examples"):
        bootstrap_p95(u, o[:, :10], splits)
    for bad, match in [({**splits, "forget": np.array([], int)}, "non-empty"),
                       ({**splits, "val": np.arange(60, 95)}, "outside the 90 examples"),
                       ({**splits, "val": np.arange(60, 90) + 0.5}, "example positions")]:
        with pytest.raises(ValueError, match=match):
            summarize(klom(u, o), bad)
    with pytest.raises(ValueError, match="finite numbers"):
        summarize(np.full(90, np.nan), splits)
    for kwargs in ({"bins": 0}, {"eps": 0.0}, {"clip": 0.0}, {"chunk": 0}):
        with pytest.raises(ValueError, match=f"klom: {next(iter(kwargs))} must be"):
            klom(u, o, **kwargs)


# ---------------------------------------------------------------------------------------------------
# klom: agreement with the reference
# ---------------------------------------------------------------------------------------------------

def _margin_cases():
    rng = np.random.default_rng(1234)
    shape = (16, 200)
    yield "normal", rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    yield "shifted", rng.normal(0, 1, shape), rng.normal(1.5, 2, shape)
    yield "collapsed", np.full(shape, 0.25), rng.normal(0, 1, shape)
    yield "both_collapsed", np.full(shape, 3.0), np.full(shape, 3.0)
    yield "beyond_100", rng.normal(0, 150, shape), rng.normal(30, 150, shape)
    yield "all_clipped", rng.uniform(150, 300, shape), rng.uniform(120, 200, shape)
    yield "per_example_scale", (rng.normal(0, 1, shape) * rng.uniform(0.1, 50, (1, shape[1]))), \
        rng.normal(0, 5, shape)


@pytest.mark.parametrize("name, u, o", list(_margin_cases()), ids=[c[0] for c in _margin_cases()])
def test_klom_reference_mode_matches_easydub(name, u, o):
    expected = ref_klom(u, o)
    assert np.isfinite(expected).all()
    got = klom(u, o, reference_binning=True)
    assert got.shape == (u.shape[1],)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, u, o", list(_margin_cases()), ids=[c[0] for c in _margin_cases()])
def test_klom_default_mode_matches_histogram_counting(name, u, o):
    np.testing.assert_allclose(klom(u, o), ref_klom(u, o, one=hist_klom_one), rtol=1e-9, atol=1e-12)


def test_klom_different_model_counts_and_small_chunks():
    rng = np.random.default_rng(7)
    u, o = rng.normal(0, 1, (12, 50)), rng.normal(0.5, 1, (30, 50))
    expected = ref_klom(u, o, one=hist_klom_one)
    np.testing.assert_allclose(klom(u, o, chunk=7), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(klom(torch.from_numpy(u), torch.from_numpy(o)), expected, rtol=1e-9, atol=1e-12)


def test_default_differs_from_reference_by_counting_the_pooled_maximum():
    # The pooled maximum (9) lies in the unlearned sample only; the reference drops it, the default counts it.
    u = np.arange(10, dtype=float)[:, None]            # 0, 1, ..., 9
    o = (np.arange(10, dtype=float) * 0.5)[:, None]    # 0, 0.5, ..., 4.5
    ref = ref_klom(u, o)[0]
    hist = ref_klom(u, o, one=hist_klom_one)[0]
    assert abs(ref - hist) > 0.1  # the case is one where the binning matters
    assert klom(u, o, reference_binning=True)[0] == pytest.approx(ref, rel=1e-9)
    assert klom(u, o)[0] == pytest.approx(hist, rel=1e-9)

    # By hand, default mode: range [0, 9], 20 bins of width 0.45. The unlearned values 0..9 fall into
    # 10 distinct bins (9 in the closed last bin), each with p = 1/10. The oracle fills bins of 0, 1, 2, 3, 4
    # (0/0.5 in bin 1, 1/1.5 in bin 3, 2/2.5 in bin 5, 3/3.5 in bin 7, 4/4.5 in bin 9 and 10);
    # check against the directly computed histogram instead of re-deriving every bin.
    edges = np.linspace(0, 9, 21)
    p = np.histogram(u[:, 0], edges)[0] / 10
    q = np.histogram(o[:, 0], edges)[0] / 10
    assert p[-1] == pytest.approx(0.1)  # the maximum is counted
    assert klom(u, o)[0] == pytest.approx(_kl_from_probs(p, q), rel=1e-9)


# ---------------------------------------------------------------------------------------------------
# klom: properties
# ---------------------------------------------------------------------------------------------------

def test_identical_samples_give_zero():
    rng = np.random.default_rng(3)
    u = rng.normal(0, 2, (20, 40))
    np.testing.assert_allclose(klom(u, u.copy()), 0.0, atol=1e-12)
    np.testing.assert_allclose(klom(u, u.copy(), reference_binning=True), 0.0, atol=1e-12)
    const = np.full((5, 3), -7.0)
    np.testing.assert_allclose(klom(const, const), 0.0, atol=1e-12)


@pytest.mark.parametrize("reference", [False, True])
def test_well_separated_samples_hit_the_eps_cap(reference):
    rng = np.random.default_rng(4)
    u = rng.normal(0, 0.01, (20, 30))
    o = rng.normal(50, 0.01, (20, 30))
    got = klom(u, o, reference_binning=reference)
    assert np.all(np.abs(got - LN_1_OVER_EPS) < 0.1)


def test_klom_never_exceeds_the_eps_cap():
    rng = np.random.default_rng(5)
    u = rng.normal(rng.uniform(-50, 50, (1, 300)), rng.uniform(0.01, 10, (1, 300)), (10, 300))
    o = rng.normal(rng.uniform(-50, 50, (1, 300)), rng.uniform(0.01, 10, (1, 300)), (10, 300))
    got = klom(u, o)
    assert np.all(got >= -1e-12)
    assert np.all(got <= LN_1_OVER_EPS + 1e-4)


def test_direction_is_kl_unlearned_to_oracle():
    rng = np.random.default_rng(6)
    spread = rng.normal(0, 1, (100, 1))
    collapsed = np.full((100, 1), 0.1)
    forward = klom(collapsed, spread)[0]
    backward = klom(spread, collapsed)[0]
    # Manual KL(unlearned ‖ oracle), default (last-bin-closed) binning.
    assert forward == pytest.approx(hist_klom_one(collapsed[:, 0], spread[:, 0]), rel=1e-9)
    assert backward == pytest.approx(hist_klom_one(spread[:, 0], collapsed[:, 0]), rel=1e-9)
    # The collapsed-vs-spread case reads small one way and large the other (README: 2.1 vs 6.9).
    assert 1.0 < forward < 4.0
    assert backward > 5.0
    assert backward - forward > 2.0


def test_noise_floor_matches_shared_readme():
    rng = np.random.default_rng(2024)
    e = 2000
    a, b = rng.normal(0, 1, (100, e)), rng.normal(0, 1, (100, e))
    mean100 = klom(a, b).mean()
    assert 0.2 < mean100 < 0.5
    a20, b20 = rng.normal(0, 1, (20, e)), rng.normal(0, 1, (20, e))
    mean20 = klom(a20, b20).mean()
    assert mean20 > 2.0
    assert mean20 > 4 * mean100


@pytest.mark.parametrize("u, o", [
    (np.zeros(10), np.zeros(10)),                       # 1-D unlearned
    (np.zeros((5, 10)), np.zeros(10)),                  # 1-D oracle
    (np.zeros((5, 10)), np.zeros((5, 11))),             # different example counts
    (np.zeros((1, 10)), np.zeros((5, 10))),             # one unlearned model
    (np.zeros((5, 10)), np.zeros((1, 10))),             # one oracle model
    (np.zeros((5, 10, 2)), np.zeros((5, 10, 2))),       # 3-D
])
def test_klom_rejects_bad_shapes(u, o):
    with pytest.raises(ValueError):
        klom(u, o)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["unlearned", "oracle"])
def test_klom_rejects_non_finite_margins(bad, side):
    u, o = np.zeros((4, 6)), np.ones((4, 6))
    (u if side == "unlearned" else o)[2, 3] = bad
    with pytest.raises(ValueError):
        klom(u, o)


# ---------------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------------

def test_summarize_matches_numpy():
    rng = np.random.default_rng(8)
    values = rng.exponential(1.0, 300)
    splits = {"forget": np.arange(0, 20), "retain": rng.choice(np.arange(20, 250), 100, replace=False),
              "val": np.arange(250, 300)}
    out = summarize(values, splits)
    assert set(out) == {"klom_p95", "klom_mean", "klom_median"}
    for name, idx in splits.items():
        v = values[idx]
        assert out["klom_p95"][name] == pytest.approx(np.percentile(v, 95), rel=1e-12)
        assert out["klom_mean"][name] == pytest.approx(v.mean(), rel=1e-12)
        assert out["klom_median"][name] == pytest.approx(np.median(v), rel=1e-12)
        assert isinstance(out["klom_p95"][name], float)
    # Splits really use their own indices: the forget split differs from the whole array.
    assert out["klom_mean"]["forget"] != pytest.approx(values.mean(), rel=1e-6)


def _bootstrap_case():
    rng = np.random.default_rng(9)
    e = 90
    u = rng.normal(0, 1, (20, e))
    o = rng.normal(0, 1, (20, e))
    o[:, :30] += 3.0  # the forget split differs strongly
    splits = {"forget": np.arange(0, 30), "retain": np.arange(30, 60), "val": np.arange(60, 90)}
    return u, o, splits


def test_bootstrap_p95_interval_contains_point():
    u, o, splits = _bootstrap_case()
    point = summarize(klom(u, o), splits)["klom_p95"]
    ci = bootstrap_p95(u, o, splits, reps=30, seed=0)
    assert set(ci) == set(splits)
    for name in splits:
        lo, hi = ci[name]
        assert lo <= hi
        assert lo <= point[name] + 1e-12
        assert point[name] <= hi + 1e-12
    assert point["forget"] > point["retain"]
    assert ci["forget"][1] > ci["forget"][0]  # a real interval, not a point


def test_bootstrap_p95_is_deterministic_for_a_seed():
    u, o, splits = _bootstrap_case()
    a = bootstrap_p95(u, o, splits, reps=20, seed=11)
    b = bootstrap_p95(u, o, splits, reps=20, seed=11)
    assert a == b
    c = bootstrap_p95(u, o, splits, reps=20, seed=12)
    assert c != a
    assert bootstrap_p95(u, o, splits, reps=20, seed=11, workers=3) == a  # threads change nothing


def test_a_subsampled_bootstrap_is_centred_on_the_whole_splits_p95():
    """Replicates may read a subsample of a large split; the interval still holds the whole split's p95."""
    u, o, splits = _bootstrap_case()
    point = summarize(klom(u, o), splits)["klom_p95"]
    ci = bootstrap_p95(u, o, splits, reps=20, seed=3, max_examples=7)
    for name in splits:
        assert ci[name][0] <= point[name] <= ci[name][1]


# --- small-N KLoM estimators (metrics.estimators) ---

def test_gauss_estimator_is_the_closed_form_kl_of_normal_fits():
    from unlearnkit.metrics.estimators import gauss_kl
    rng = np.random.default_rng(0)
    p, q = rng.normal(1.0, 2.0, (3, 50)), rng.normal(0.0, 1.0, (3, 60))
    m1, m2, s1, s2 = p.mean(1), q.mean(1), p.std(1, ddof=1), q.std(1, ddof=1)
    expected = np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    np.testing.assert_allclose(gauss_kl(p, q), expected)
    np.testing.assert_allclose(klom(p.T, q.T, estimator="gauss"), expected)  # klom takes (models, examples)


@pytest.mark.parametrize("estimator", ["gauss", "knn"])
def test_small_n_estimators_read_a_low_floor_and_the_true_divergence(estimator):
    """Two samples of N(0, 1) read near 0 at N = 16 (the histogram reads ~3.9 there); at N = 400 a shift of
    half a standard deviation reads its true KL, 0.125 nats (Wang, Kulkarni & Verdú 2009: consistent)."""
    rng = np.random.default_rng(1)
    floor = klom(rng.normal(size=(16, 2000)), rng.normal(size=(16, 2000)), estimator=estimator)
    assert floor.mean() < 0.5 and klom(rng.normal(size=(16, 500)), rng.normal(size=(16, 500))).mean() > 3
    shifted = klom(rng.normal(0.5, 1, (400, 300)), rng.normal(size=(400, 300)), estimator=estimator)
    assert shifted.mean() == pytest.approx(0.125, abs=0.04)


def test_knn_estimator_sees_a_difference_the_gaussian_fit_cannot():
    """Bimodal against unimodal margins with equal mean and variance: the normal fits coincide (gauss ≈ 0),
    the k-NN estimate does not (margins of examples that some models misclassify are bimodal)."""
    rng = np.random.default_rng(2)
    n, e = 200, 200
    bimodal = rng.choice([-1.0, 1.0], (n, e)) + rng.normal(0, 0.1, (n, e))
    unimodal = rng.normal(0, np.sqrt(1.01), (n, e))
    assert klom(bimodal, unimodal, estimator="gauss").mean() < 0.05
    assert klom(bimodal, unimodal, estimator="knn").mean() > 0.5


def test_knn_estimator_works_with_very_few_models_and_refuses_unknown_estimators():
    rng = np.random.default_rng(3)
    assert np.isfinite(klom(rng.normal(size=(2, 10)), rng.normal(size=(2, 10)), estimator="knn")).all()
    with pytest.raises(ValueError, match="unknown KLoM estimator 'kde'"):
        klom(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), estimator="kde")


def test_a_best_step_rule_picks_the_best_step_that_meets_its_constraints():
    from unlearnkit.metrics.trajectory import StepRule
    curves = {"steps": [0, 5, 10, 15], "forget_quality": [0.01, 0.3, 0.6, 0.9],
              "model_utility": [0.5, 0.48, 0.46, 0.2]}
    assert StepRule.parse("max:forget_quality").select(curves)["step"] == 15
    picked = StepRule.parse("max:forget_quality; model_utility >= 0.9x").select(curves)
    assert picked["step"] == 10 and picked["model_utility"] == 0.46  # 0.2 < 0.9 × 0.5 rules out step 15
    assert StepRule.parse("max:forget_quality;model_utility>=0.99").select(curves)["step"] is None
    assert StepRule.parse("min:model_utility;forget_quality<=0.3").select(curves)["step"] == 5
    for bad in ("forget_quality", "max:accuracy", "max:forget_quality;model_utility>>1", "max:model_utility;x>=1"):
        with pytest.raises(ValueError):
            StepRule.parse(bad)
