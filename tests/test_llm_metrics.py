"""Tests for the language-model unlearning metrics (unlearnkit.metrics.llm), against hand computations."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score

from unlearnkit.metrics.klom import klom
from unlearnkit.metrics.llm import (
    MODEL_UTILITY_COMPONENTS,
    answer_logprob_stats,
    forget_quality,
    loss_score,
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    privleak,
    probability,
    probability_with_options,
    rouge_l_f1,
    rouge_l_recall,
    sequence_scores,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
    verbatim_prompt,
    vocab_logprob_moments,
    zlib_score,
)

E = math.e


# --- per-answer statistics and probability ----------------------------------------------------------

def test_answer_logprob_stats_and_probability():
    assert answer_logprob_stats([-1.0, -2.0, -3.0]) == (-6.0, -2.0, 3)
    assert probability([-1.0, -2.0, -3.0]) == pytest.approx(E ** -2)   # P^{1/|a|} = (e^-6)^{1/3}
    assert probability(torch.tensor([-0.5, -0.5])) == pytest.approx(E ** -0.5)
    assert probability(np.zeros(4)) == 1.0


def test_probability_with_options():
    # p_correct = e^-1; wrong options e^-1 and e^-2 (mean of [-2, -2]).
    got = probability_with_options([[-1.0]], [[[-1.0], [-2.0, -2.0]]])
    assert got == pytest.approx([E ** -1 / (E ** -1 + E ** -1 + E ** -2)])


# --- truth ratio ------------------------------------------------------------------------------------

def test_truth_ratio_by_hand():
    para = [[-1.0, -1.0],            # item 0: P_para = e^-1
            [-0.5]]                  # item 1: P_para = e^-0.5
    pert = [[[-2.0, -2.0], [-4.0]],  # item 0: per-answer means -2, -4 → geometric mean e^-3
            [[-0.5], [-0.25, -0.75]]]  # item 1: both means -0.5 → e^-0.5
    r = truth_ratio(para, pert)
    assert r == pytest.approx([E ** -2, 1.0])
    # Geometric, not arithmetic, mean over perturbed answers (the code, not the paper's formula).
    assert r[0] != pytest.approx((E ** -2 + E ** -4) / 2 / E ** -1)
    # Forget statistic: mean of min(R, 1/R); retain term: mean of max(0, 1 − R).
    assert truth_ratio_forget_score(r) == pytest.approx((E ** -2 + 1.0) / 2)
    assert truth_ratio_retain_score(r) == pytest.approx((1 - E ** -2) / 2)
    assert truth_ratio_retain_score([3.0, 0.0]) == pytest.approx(0.5)  # R > 1 clipped at 0
    assert truth_ratio_forget_score([4.0, 0.25]) == pytest.approx(0.25)


def test_truth_ratio_accepts_arrays_and_tensors():
    para = np.array([[-1.0, -1.0], [-0.5, -0.5]])
    pert = torch.tensor([[[-2.0, -2.0], [-4.0, -4.0]], [[-0.5, -0.5], [-0.5, -0.5]]])
    assert truth_ratio(para, pert) == pytest.approx([E ** -2, 1.0])


def test_truth_ratio_openunlearning_eps():
    para, pert = [[-30.0]], [[[-29.0]]]
    assert truth_ratio(para, pert, eps=0.0) == pytest.approx([E])             # exact, log space
    ou = truth_ratio(para, pert)                                                # default: OpenUnlearning's formula
    assert ou == pytest.approx([E ** -29 / (E ** -30 + 1e-10)])
    assert ou[0] < 0.01
    # Where P_para is not tiny the two agree to ~1e-9 relative.
    assert truth_ratio([[-1.0]], [[[-2.0]]]) == pytest.approx(truth_ratio([[-1.0]], [[[-2.0]]], eps=0.0))


# --- forget quality ---------------------------------------------------------------------------------

def test_forget_quality_is_scipy_ks_pvalue():
    rng = np.random.default_rng(0)
    u, o = rng.lognormal(0.5, 1, 40), rng.lognormal(0, 1, 40)
    assert forget_quality(u, o) == scipy.stats.ks_2samp(u, o).pvalue
    assert forget_quality(o, o) == 1.0
    # TOFU's code tests 1/R, OpenUnlearning R: same p-value (KS is invariant under monotone maps).
    assert forget_quality(1 / u, 1 / o) == pytest.approx(forget_quality(u, o))
    assert forget_quality(u * 100, o) < 1e-6


# --- ROUGE-L ----------------------------------------------------------------------------------------

def test_rouge_l_recall_by_hand():
    # LCS("the cat sat on the mat", "the cat on the mat") = "the cat on the mat" = 5 tokens.
    assert rouge_l_recall("the cat sat on the mat", "the cat on the mat") == 1.0     # 5/5
    assert rouge_l_recall("the cat on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l_recall("The CAT", "the cat") == 1.0                                 # lowercased
    assert rouge_l_recall("a b c d", "b d a c") == 0.5                                 # LCS 2 of 4
    assert rouge_l_recall("x y", "the cat") == 0.0
    assert rouge_l_recall("", "the cat") == 0.0 and rouge_l_recall("the cat", "") == 0.0


def test_rouge_l_f1_by_hand_and_the_verbatim_prompt():
    """MUSE's ROUGE-L F1: 2PR/(P+R) over the LCS; 1 for identical texts, symmetric, 0 without a common token;
    VerbMem's prompt is the question and the answer's first half, its reference the rest."""
    assert rouge_l_f1("the cat sat on the mat", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l_f1("a b c d", "b d a c") == rouge_l_f1("b d a c", "a b c d") == 0.5
    assert rouge_l_f1("The cat.", "the cat", alnum=True) == 1.0
    assert rouge_l_f1("x y", "the cat") == 0.0 and rouge_l_f1("", "the cat") == 0.0
    assert verbatim_prompt("Where was Ann born?", "Ann was born in Oslo.") == ("Where was Ann born? Ann was born",
                                                                              "in Oslo.")
    assert verbatim_prompt("Q?", "Yes.") is None


def test_rouge_l_punctuation_option():
    assert rouge_l_recall("the cat.", "the cat") == 0.5            # whitespace tokens: "cat." ≠ "cat"
    assert rouge_l_recall("the cat.", "the cat", alnum=True) == 1.0  # rouge_score's character rule
    with pytest.raises(TypeError):
        rouge_l_recall(None, "x")


# --- model utility ----------------------------------------------------------------------------------

def test_model_utility_harmonic_mean():
    assert model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    nine = np.linspace(0.1, 0.9, 9)
    assert model_utility(nine) == pytest.approx(scipy.stats.hmean(nine))
    assert model_utility(dict(zip(MODEL_UTILITY_COMPONENTS, nine))) == pytest.approx(scipy.stats.hmean(nine))
    assert model_utility([0.9] * 8 + [0.0]) == 0.0
    with pytest.raises(ValueError):
        model_utility([0.5, -0.1])
    with pytest.raises(ValueError):
        model_utility([])


# --- MIA scores -------------------------------------------------------------------------------------

def test_loss_and_zlib_scores():
    assert loss_score([-1.0, -3.0]) == -2.0
    text = "hello hello hello world"
    assert zlib_score([-1.0, -3.0], text) == pytest.approx(-2.0 / len(zlib.compress(text.encode())))


def test_min_k_by_hand():
    lp = [-0.1, -5.0, -0.2, -3.0, -0.3]
    assert min_k_score(lp, k=0.4) == -4.0            # 2 lowest of 5: -5, -3
    assert min_k_score(lp) == -4.0                   # default k = 0.4
    assert min_k_score(lp, k=1.0) == pytest.approx(np.mean(lp))
    assert min_k_score(lp, k=0.1) == -5.0            # floor(0.5) = 0 → at least one token


def test_min_k_plus_plus_by_hand():
    lp, mu, sigma = [-1.0, -2.0, -3.0], [-1.5, -1.5, -1.5], [0.5, 1.0, 2.0]
    # s = (lp − mu)/sigma = [1, -0.5, -0.75]
    assert min_k_plus_plus_score(lp, mu, sigma, k=0.4) == pytest.approx(-0.75)    # floor(1.2) = 1
    assert min_k_plus_plus_score(lp, mu, sigma, k=0.7) == pytest.approx(-0.625)   # floor(2.1) = 2
    # σ = 0 is clamped to 1e-3 (variance 1e-6), as OpenUnlearning does.
    assert min_k_plus_plus_score([-1.0], [-0.5], [0.0], k=1.0) == pytest.approx(-500.0)


def test_vocab_logprob_moments():
    ln2 = math.log(2)
    lp = np.log([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    mu, sigma = vocab_logprob_moments(lp)
    # Row 0: μ = ½ln½ + ½ln¼ = −1.5 ln2; E[(log p)²] = 2.5 ln²2 → σ = 0.5 ln2. Uniform row: σ = 0.
    assert mu == pytest.approx([-1.5 * ln2, -math.log(3)])
    assert sigma == pytest.approx([0.5 * ln2, 0.0], abs=1e-7)
    # Same as OpenUnlearning's torch formula.
    t = torch.log_softmax(torch.randn(4, 7, dtype=torch.float64), -1)
    mu_t = (t.exp() * t).sum(-1)
    var_t = (t.exp() * t.square()).sum(-1) - mu_t.square()
    mu2, s2 = vocab_logprob_moments(t)
    assert mu2 == pytest.approx(mu_t.numpy()) and s2 == pytest.approx(var_t.sqrt().numpy())
    # A zero-probability token (log p = −inf) contributes nothing.
    mu3, s3 = vocab_logprob_moments(np.array([[0.0, -np.inf]]))
    assert mu3[0] == 0.0 and s3[0] == 0.0


def test_mia_auc_separates_members():
    rng = np.random.default_rng(0)
    members = [rng.normal(-0.5, 0.3, 20).clip(max=0) for _ in range(100)]
    nonmembers = [rng.normal(-2.0, 0.8, 20).clip(max=0) for _ in range(100)]
    for score in (loss_score, min_k_score, lambda t: zlib_score(t, "some answer text")):
        auc = mia_auc([score(t) for t in members], [score(t) for t in nonmembers])
        assert auc > 0.9
    same = rng.normal(-1, 0.5, 4000)
    assert mia_auc(same[:2000], same[2000:]) == pytest.approx(0.5, abs=0.04)
    assert mia_auc([-1.0, -0.5], [-3.0, -2.0]) == 1.0
    # OpenUnlearning's convention (forget labelled 0, loss-like scores) gives the same number.
    m, n = np.array([-1.0, -0.4, -2.5]), np.array([-2.0, -1.5, -0.7])
    assert mia_auc(m, n) == roc_auc_score([0, 0, 0, 1, 1, 1], np.r_[-m, -n])


def test_privleak_by_hand():
    assert privleak(0.9, 0.5) == pytest.approx(-80.0)   # (0.1 − 0.5)/0.5 × 100: under-unlearned
    assert privleak(0.3, 0.5) == pytest.approx(40.0)    # (0.7 − 0.5)/0.5 × 100: over-unlearned
    assert privleak(0.62, 0.62) == 0.0
    with pytest.raises(ValueError):
        privleak(1.2, 0.5)


# --- sequence-level KLoM ----------------------------------------------------------------------------

def test_sequence_scores_by_hand():
    s = sequence_scores([[[-1.0, -3.0], [-0.5]],
                         [[-2.0], [-0.1, -0.3]]])
    assert s.shape == (2, 2)
    assert s == pytest.approx(np.array([[-2.0, -0.5], [-2.0, -0.2]]))


def test_sequence_scores_feed_klom_unchanged():
    rng = np.random.default_rng(0)
    n_models, lengths = 30, [5, 8, 3]

    def arm(shift_item0: float):
        return [[(rng.normal(-1.0 - (shift_item0 if j == 0 else 0.0), 0.2, L)).clip(max=0)
                 for j, L in enumerate(lengths)] for _ in range(n_models)]

    u, o = sequence_scores(arm(2.0)), sequence_scores(arm(0.0))
    assert u.shape == o.shape == (n_models, len(lengths))
    k = klom(u, o)
    assert k.shape == (3,)
    assert k[0] > 5 and k[0] > 3 * max(k[1], k[2])   # the item the unlearned arm still treats differently
    assert np.allclose(klom(o, o), 0.0)


# --- bad inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: answer_logprob_stats([]),                                   # empty token list
    lambda: probability(np.array([])),
    lambda: loss_score([-1.0, float("nan")]),
    lambda: loss_score([0.5, 1.2]),                                     # NLLs passed instead of log-probs
    lambda: probability([[-1.0, -2.0]]),                                # not 1-D
    lambda: truth_ratio([[-1.0], [-2.0]], [[[-1.0]]]),                  # 2 items vs 1
    lambda: truth_ratio([[-1.0]], [[[]]]),                              # empty perturbed answer
    lambda: truth_ratio([], []),
    lambda: probability_with_options([[-1.0]], []),
    lambda: min_k_score([-1.0, -2.0], k=0.0),                           # k outside (0, 1]
    lambda: min_k_score([-1.0, -2.0], k=1.5),
    lambda: min_k_score([-1.0, -2.0], k=-0.2),
    lambda: min_k_plus_plus_score([-1.0, -2.0], [0.0], [1.0, 1.0]),     # mismatched lengths
    lambda: min_k_plus_plus_score([-1.0], [0.0], [-1.0]),               # negative sigma
    lambda: min_k_plus_plus_score([-1.0], [0.0], [1.0], k=2),
    lambda: vocab_logprob_moments(np.zeros(3)),                         # not (T, V)
    lambda: vocab_logprob_moments(np.zeros((2, 3))),                    # not a log-softmax
    lambda: forget_quality([], [1.0]),
    lambda: forget_quality([[1.0]], [1.0]),
    lambda: mia_auc([], [1.0]),
    lambda: sequence_scores([[[-1.0], [-2.0]], [[-1.0]]]),              # models cover different items
    lambda: sequence_scores([[[-1.0], []]]),
    lambda: truth_ratio_retain_score([-0.5]),
])
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()
