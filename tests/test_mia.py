"""Membership-inference metrics (unlearnkit.metrics.mia) on synthetic Gaussian margins with fixed seeds."""
import numpy as np
import pytest
import torch

from unlearnkit.metrics.margins import margins
from unlearnkit.metrics.mia import (
    auc,
    neurips23_epsilons,
    neurips23_forget_score,
    neurips23_score,
    softmax_features,
    svc_mia,
    threshold_mia,
    ulira,
)


def arms(n_models, n_examples, seed, shift=None):
    """Two independent arms of margins, per example N(μ_e, σ_e²); `shift` (in σ units, per example) moves the
    first arm, as an original model that memorised those examples would."""
    rng = np.random.default_rng(seed)
    mu, sd = rng.normal(1.0, 3.0, n_examples), rng.uniform(0.5, 2.0, n_examples)
    a = rng.normal(size=(n_models, n_examples)) * sd + mu
    b = rng.normal(size=(n_models, n_examples)) * sd + mu
    if shift is not None:
        a = a + shift * sd
    return a, b


# --- U-LiRA ------------------------------------------------------------------------------------------------


def test_ulira_two_samples_of_one_distribution_score_chance():
    a, b = arms(40, 600, seed=0)  # "retrain": oracles against oracles
    res = ulira(a, b, forget=np.arange(300), unseen=np.arange(300, 600))
    assert abs(res["accuracy"] - 0.5) < 0.05
    assert abs(res["unseen_accuracy"] - 0.5) < 0.05
    assert abs(res["auc"] - 0.5) < 0.05
    assert res["per_model"].shape == (40,) and res["tpr_unlearned"].shape == (40,)
    assert res["tnr_oracle"].shape == (40,) and res["per_example"].shape == (300,)
    assert np.isclose(res["per_model"].mean(), res["accuracy"])
    assert np.isclose(res["per_example"].mean(), res["accuracy"])


def test_ulira_exposes_a_memorised_forget_set():
    shift = np.r_[np.full(300, 4.0), np.zeros(300)]  # originals: forget margins far up, validation unchanged
    a, b = arms(40, 600, seed=1, shift=shift)
    res = ulira(a, b, forget=np.arange(300), unseen=np.arange(300, 600))
    assert res["accuracy"] > 0.9 and res["auc"] > 0.95
    assert (res["tpr_unlearned"] > 0.85).all() and (res["tnr_oracle"] > 0.85).all()
    assert abs(res["unseen_accuracy"] - 0.5) < 0.05  # the control: nothing changed where nobody trained


def test_ulira_leaves_the_target_out():
    """With only a few models, fitting the target's own arm with the target in would flatter the attack:
    leave-one-out keeps a 'retrain' comparison near (here, at or below) chance."""
    a, b = arms(6, 2000, seed=2)
    res = ulira(a, b, forget=np.arange(1000), unseen=np.arange(1000, 2000))
    assert res["accuracy"] < 0.55


# --- NeurIPS 2023 challenge ------------------------------------------------------------------------------

# Margins of 8 models on 6 examples (rows: examples); expected ε computed with the reference
# google-deepmind/unlearning_evaluation metric.py (_get_epsilons, run on CPU; its `assert thr_eps` patched to
# `assert len(thr_eps)`, which otherwise raises on any array of kept thresholds).
U = [[0.58, 1.81, 0.77, 0.37, -3.06, 1.82, 2.12, 3.67], [2.8, 0.09, 2.08, 2.43, 0.91, 1.06, 1.46, -2.21],
     [6.03, 4.93, 2.71, 2.44, 3.43, 1.88, 3.04, 2.22], [2.05, -0.17, 2.67, -0.79, 2.0, 3.84, -0.53, 1.44],
     [2.76, 5.53, 4.44, 3.8, 0.94, 4.27, 3.72, 0.62], [-1.12, 0.45, -0.02, -0.31, -1.1, 0.58, 0.46, -0.14]]
R = [[0.05, 0.85, 1.02, -0.23, -2.88, 1.35, 0.82, 1.65], [3.04, 0.92, 0.8, 2.03, -0.22, 0.65, 2.56, -0.93],
     [3.84, 3.12, 1.43, 0.69, 1.3, 0.88, 1.69, 1.01], [-1.77, -3.77, -0.31, -3.27, -2.79, -0.42, -2.22, -2.26],
     [2.55, 5.35, 4.24, 3.59, 0.76, 4.08, 3.52, 0.4], [-0.79, -0.14, -0.3, -1.01, 0.05, -0.45, 0.37, 0.19]]
REFERENCE_EPS = [1.609421968460083, 0.9162747263908386, 1.7917461395263672, 1.7917461395263672,
                 1.098585605621338, 1.609421968460083]


def test_neurips_epsilons_match_the_reference():
    eps = neurips23_epsilons(np.array(U).T, np.array(R).T)
    np.testing.assert_allclose(eps, REFERENCE_EPS, rtol=0, atol=1e-12)
    assert neurips23_forget_score(eps, n_models=8) == pytest.approx(0.20833333333333334)  # reference's F


def test_neurips_identical_arms_score_one_and_separated_arms_zero():
    a, _ = arms(20, 50, seed=3)
    eps = neurips23_epsilons(a, a.copy())
    assert (eps == 0).all() and neurips23_forget_score(eps, n_models=20) == 1.0
    sep = neurips23_epsilons(a + 100.0, a)  # perfect separation: ε = ∞, capped
    assert (sep == 50.0).all() and neurips23_forget_score(sep) < 1e-12
    peaky = neurips23_epsilons(np.full_like(a, 1.0) + 1e-4 * a, a)  # a collapsed arm: the cap
    assert (peaky == 50.0).all()


def test_neurips_retrain_beats_memorised_originals():
    """Two samples of one distribution do not give ε ≈ 0 here: with 100 models per arm, the reference's
    thresholds in the tails find chance ratios such as 4/100 vs 1/100 (ε = ln 4), so F is about 0.15–0.2 for
    an exact unlearner, while originals that memorised the forget set score F ≈ 0."""
    a, b = arms(100, 40, seed=4)
    f_null = neurips23_forget_score(neurips23_epsilons(a, b), n_models=100)
    a_mem, b_mem = arms(100, 40, seed=4, shift=np.full(40, 6.0))
    eps_mem = neurips23_epsilons(a_mem, b_mem)
    f_mem = neurips23_forget_score(eps_mem, n_models=100)
    assert 0.1 < f_null < 0.4
    assert f_mem < 0.01 and eps_mem.min() > 3.5


def test_neurips_forget_score_buckets():
    eps = np.array([0.0, 0.49, 0.5, 1.2, 4.9, 5.0, 50.0])
    points = np.array([1, 1, 0.5, 0.25, 2.0 ** -9, 2.0 ** -10, 2.0 ** -100])
    assert neurips23_forget_score(eps) == pytest.approx(points.mean())
    cut = points.copy()
    cut[eps >= 5] = 0  # the reference's ⌈ln(N − 1)⌉ = 5 at N = 100
    assert neurips23_forget_score(eps, n_models=100) == pytest.approx(cut.mean())
    assert neurips23_forget_score(eps, n_models=2) == 0.0  # ⌈ln 1⌉ = 0: no bucket


def test_neurips_score_scales_with_accuracy_ratios():
    assert neurips23_score(0.6, 0.9, 0.9, 0.8, 0.8) == pytest.approx(0.6)
    assert neurips23_score(0.6, 0.45, 0.9, 0.8, 0.8) == pytest.approx(0.3)
    assert neurips23_score(0.6, 0.9, 0.9, 0.4, 0.8) == pytest.approx(0.3)
    assert neurips23_score(0.6, [0.8, 1.0], 0.9, [0.7, 0.9], np.array([0.8, 0.8])) == pytest.approx(0.6)
    assert neurips23_score(0.5, 1.0, 0.5, 0.8, 0.8) == pytest.approx(1.0)  # not capped, as the reference


# --- population attacks ----------------------------------------------------------------------------------


def test_threshold_mia():
    rng = np.random.default_rng(5)
    mem, non = rng.normal(2, 1, (4, 300)), rng.normal(0, 1, (4, 400))
    res = threshold_mia(mem, non)
    assert 0.8 < res["accuracy"] < 0.9 and 0.9 < res["auc"] < 0.95  # Φ(1) ≈ 0.84, Φ(2/√2) ≈ 0.92
    low = threshold_mia(-mem, -non, higher_is_member=False)  # a loss: lower = member
    np.testing.assert_allclose(low["per_model_auc"], res["per_model_auc"])
    assert threshold_mia(mem + 10, non)["accuracy"] == 1.0
    same = threshold_mia(non[:, :200], non[:, 200:])
    assert abs(same["auc"] - 0.5) < 0.06 and same["accuracy"] < 0.6
    ties = threshold_mia(np.ones((2, 5)), np.ones((2, 7)))
    assert ties["accuracy"] == 0.5 and ties["auc"] == 0.5
    assert threshold_mia(mem, non, models=[1])["accuracy"] == res["per_model_accuracy"][1]


def _svc_inputs(forget_like, n=300, models=3, seed=6):
    rng = np.random.default_rng(seed)
    retain = {"confidence": rng.uniform(0.9, 1.0, (models, n)), "correct": rng.random((models, n)) < 0.99}
    val = {"confidence": rng.uniform(0.0, 0.6, (models, n)), "correct": rng.random((models, n)) < 0.3}
    src = retain if forget_like == "retain" else val
    forget = {k: np.concatenate([v[:, n // 2:], v[:, :n // 2]], 1)[:, :200] for k, v in src.items()}
    return retain, val, forget


def test_svc_mia_efficacy_direction():
    """MIA-efficacy = fraction of forget examples predicted non-member: high when they look like validation
    data (forgotten), low when they look like retain data (remembered)."""
    forgotten = svc_mia(*_svc_inputs("val"))
    remembered = svc_mia(*_svc_inputs("retain"))
    assert forgotten["efficacy"]["confidence"] > 0.95 and remembered["efficacy"]["confidence"] < 0.05
    assert forgotten["efficacy"]["correct"] > 0.6 and remembered["efficacy"]["correct"] < 0.05
    assert forgotten["per_model"]["confidence"].shape == (3,) and forgotten["n_shadow"] == 300
    capped = svc_mia(*_svc_inputs("val"), max_shadow=50, models=[0, 2])
    assert capped["n_shadow"] == 50 and capped["per_model"]["correct"].shape == (2,)
    threaded = svc_mia(*_svc_inputs("val"), n_jobs=2)  # models fitted in threads: the same numbers
    assert all((threaded["per_model"][k] == forgotten["per_model"][k]).all() for k in forgotten["per_model"])
    single = svc_mia(*(d["confidence"] for d in _svc_inputs("val")))
    assert single["efficacy"]["feature"] == forgotten["efficacy"]["confidence"]


def test_softmax_features():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 50, 5, generator=gen, dtype=torch.float64) * 4
    logits[0, 0] = torch.tensor([60.0, 0.0, -5.0, 1.0, 2.0])  # p_y ≈ 1: 1 − p_y underflows naively
    labels = torch.randint(0, 5, (50,), generator=gen)
    labels[0] = 0
    f = softmax_features(logits, labels, chunk=2)
    np.testing.assert_allclose(f["confidence"], torch.sigmoid(margins(logits, labels)).numpy(), rtol=1e-12, atol=0)
    assert (f["correct"] == (logits.argmax(2) == labels).numpy()).all()
    p = torch.softmax(logits, 2).numpy()
    logp = np.log(np.maximum(p, 1e-30))
    np.testing.assert_allclose(f["entropy"], -(p * logp).sum(2), atol=1e-10)
    y = labels.numpy()
    onehot = np.eye(5, dtype=bool)[y][None]
    # Song & Mittal 2021: −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i), logs floored at 1e-30
    m_ent = -np.where(onehot, (1 - p) * logp, p * np.log(np.maximum(1 - p, 1e-30))).sum(2)
    np.testing.assert_allclose(f["m_entropy"], m_ent, atol=1e-9)
    assert 0 < f["m_entropy"][0, 0] < 1e-20  # the confident-correct example stays exactly tiny, not 0 or NaN
    threaded = softmax_features(logits, labels, chunk=1, workers=3)  # blocks of models in threads: the same numbers
    assert all(np.array_equal(threaded[k], f[k]) for k in f)


# --- bad input -------------------------------------------------------------------------------------------

A, B = arms(5, 20, seed=8)
F_IDX, V_IDX = np.arange(10), np.arange(10, 20)
NAN = A.copy()
NAN[2, 3] = np.nan


@pytest.mark.parametrize("call, match", [
    (lambda: ulira(A[0], B, F_IDX, V_IDX), r"must be \(models, examples\)"),
    (lambda: ulira(A, B[:, :19], F_IDX, V_IDX), "cover 20 and 19 examples"),
    (lambda: ulira(A[:2], B, F_IDX, V_IDX), "at least 3 models per arm"),
    (lambda: ulira(A, B, [], V_IDX), "forget is empty"),
    (lambda: ulira(A, B, F_IDX, [18, 20]), r"unseen indices must lie in \[0, 20\)"),
    (lambda: ulira(A, B, [-1, 2], V_IDX), r"forget indices must lie in \[0, 20\)"),
    (lambda: ulira(A, B, F_IDX, np.arange(5, 15)), "share examples"),
    (lambda: ulira(A, B, [1, 1], V_IDX), "repeated"),
    (lambda: ulira(A, B, [0.5], V_IDX), "integer"),
    (lambda: ulira(NAN, B, F_IDX, V_IDX), "NaN or inf"),
    (lambda: neurips23_epsilons(A[:1], B), "at least 2 models"),
    (lambda: neurips23_epsilons(A, B[:, :3]), "cover 20 and 3 examples"),
    (lambda: neurips23_epsilons(A, NAN), "NaN or inf"),
    (lambda: neurips23_epsilons(A.ravel(), B), r"must be \(models, examples\)"),
    (lambda: neurips23_epsilons(A[:, :0], B[:, :0]), "cover no examples"),
    (lambda: neurips23_forget_score([]), "non-empty"),
    (lambda: neurips23_forget_score([0.1, np.nan]), "finite"),
    (lambda: neurips23_forget_score([0.1], n_models=1), "at least 2"),
    (lambda: neurips23_score(1.5, 0.9, 0.9, 0.8, 0.8), r"forget_score must lie in \[0, 1\]"),
    (lambda: neurips23_score(0.5, 0.9, 0.0, 0.8, 0.8), "must be positive"),
    (lambda: neurips23_score(0.5, [], 0.9, 0.8, 0.8), "retain_acc_u"),
    (lambda: threshold_mia(A, B[:4]), "from 5 and 4 models"),
    (lambda: threshold_mia(A, NAN), "NaN or inf"),
    (lambda: threshold_mia(A, B, models=[7]), r"models indices must lie in \[0, 5\)"),
    (lambda: svc_mia({"c": A}, {"d": B}, {"c": A}), "same features"),
    (lambda: svc_mia(A, B[:4], A), "same number of models"),
    (lambda: svc_mia(A, B, NAN), "NaN or inf"),
    (lambda: svc_mia({}, {}, {}), "no features"),
    (lambda: softmax_features(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), r"\(models, examples, classes\)"),
    (lambda: softmax_features(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long)), r"labels must be \(3,\)"),
    (lambda: softmax_features(torch.zeros(2, 3, 4), torch.tensor([0, 1, 4])), r"labels must lie in \[0, 4\)"),
    (lambda: softmax_features(torch.full((2, 3, 4), float("nan")), torch.zeros(3, dtype=torch.long)), "NaN or inf"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_auc_is_sklearns_roc_auc_per_row_ties_included():
    """The one AUC every attack reports (U-LiRA, the threshold attack, the LM attacks): Mann–Whitney, equal
    to sklearn's roc_auc_score with the positives labelled 1, on scores with ties, row by row."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, (3, 40)).astype(float), rng.integers(0, 5, (3, 25)).astype(float)
    expected = [roc_auc_score(np.r_[np.ones(40), np.zeros(25)], np.r_[p, n]) for p, n in zip(pos, neg)]
    np.testing.assert_allclose(auc(pos, neg), expected, rtol=1e-12)
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0 and auc(np.ones(3), np.ones(4)) == 0.5
