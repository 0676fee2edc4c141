"""OpenUnlearning's conventions (the default) against the alternatives, on the same inputs, and the metrics
added from it: extraction strength, exact memorisation, the prob_mean truth ratio, the Reference and
GradNorm attacks. Each formula is checked against a hand computation; each convention is computed both
ways on the same inputs, and the test states the difference it makes.

The `ou_*` helpers restate OpenUnlearning's code (src/evals/metrics/) for one item, written from its
semantics: they are the reference the defaults must reproduce."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from unlearnkit.lm.evaluate import (
    ITEM_FIELDS,
    MIA_ATTACKS,
    ItemScores,
    _cut_mask,
    answer_seq,
    gradnorm_scores,
    labelled_texts,
    score_items,
)
from unlearnkit.lm.model import LMForward, init_lm_params, shifted_token_logprobs
from unlearnkit.lm.scoring import lm_row, memorisation, mia_aucs
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm.tokenizer import encode_pairs
from unlearnkit.metrics import llm as M
from unlearnkit.runs import RunConfig

E = math.e
LEGACY = M.Conventions(one_token="score", zlib_text="answer", tr_eps=0.0, es_no_match="paper")


# --- OpenUnlearning's formulas for one item, restated -----------------------------------------------

def ou_min_k(labelled_lp, k=0.4):
    """mia/min_k.py on utils.tokenwise_logprobs: the last labelled prediction dropped; empty → 0; loss-like."""
    lp = np.asarray(labelled_lp)[:-1]
    if lp.size == 0:
        return 0
    return -np.mean(np.sort(lp)[:max(1, int(len(lp) * k))])


def ou_extraction_strength(labelled_hits):
    """memorization.py: loop k over 0..T−1 (T without the EOS position), break at the first matching
    suffix; the loop variable is what is left when none matches."""
    h = list(labelled_hits)[:-1]
    if not h:
        return 0
    for k in range(len(h)):
        if all(h[k:]):
            break
    return 1 - k / len(h)


def ou_truth_ratio(lp_para_mean, lp_pert_means):
    return np.exp(np.mean(lp_pert_means)) / (np.exp(lp_para_mean) + 1e-10)


def ou_prob_mean_ratio(lp_para_mean, lp_pert_means):
    c, w = np.exp(lp_para_mean), np.exp(np.mean(lp_pert_means))
    return c / (c + w + 1e-10)


# --- hand computations of the added formulas --------------------------------------------------------

def test_extraction_strength_by_hand():
    assert M.extraction_strength([1, 0, 1, 1]) == 0.5               # the run of hits ending the answer: 2 of 4
    assert M.extraction_strength([1, 1, 1]) == 1.0
    assert M.extraction_strength([1, 0, 1, 1], drop_last=True) == pytest.approx(1 / 3)   # [1, 0, 1]
    # Not even the last token: the definition gives 0, OpenUnlearning's loop 1/T.
    assert M.extraction_strength([1, 1, 0, 0], no_match="paper") == 0.0
    assert M.extraction_strength([1, 1, 0, 0]) == 0.25
    assert M.extraction_strength([True]) == 1.0


def test_exact_memorization_by_hand():
    assert M.exact_memorization([1, 0, 1, 1]) == 0.75
    assert M.exact_memorization([1, 0, 1, 1], drop_last=True) == pytest.approx(2 / 3)
    assert math.isnan(M.exact_memorization([1], drop_last=True))                  # undefined, as in OpenUnlearning
    assert M.exact_memorization([0], drop_last=True, one_token="score") == 0.0


def test_truth_ratio_prob_by_hand():
    para, pert = [[-1.0, -1.0]], [[[-2.0, -2.0], [-4.0]]]      # P_para = e^-1, P_pert = e^-3 (geometric)
    assert M.truth_ratio_prob(para, pert) == pytest.approx([E ** -1 / (E ** -1 + E ** -3 + 1e-10)])
    assert M.truth_ratio_prob(para, pert, eps=0.0) == pytest.approx([1 / (1 + E ** -2)])  # 1 / (1 + R)
    assert M.truth_ratio_prob(para, pert)[0] == pytest.approx(ou_prob_mean_ratio(-1.0, [-2.0, -4.0]))


def test_reference_and_grad_norm_scores_by_hand():
    assert M.reference_score([-1.0, -3.0], [-2.0, -2.0]) == 0.0
    assert M.reference_score([-1.0, -1.0], [-3.0]) == 2.0                   # target fits better: member-like
    grads = [np.array([3.0, 4.0]), np.array([[1.0, 0.0], [0.0, 0.0]])]
    assert M.grad_norm_score(grads) == -3.0                                 # −mean(5, 1)
    assert M.grad_norm_score(grads, p=1) == -4.0                            # −mean(7, 1)
    assert M.grad_norm_score([torch.tensor([3.0, -4.0]), torch.ones(2, 2)], p=math.inf) == -2.5
    with pytest.raises(ValueError):
        M.grad_norm_score(grads, p=3)


@pytest.mark.parametrize("call", [
    lambda: M.Conventions(one_token="drop"),
    lambda: M.Conventions(zlib_text="question"),
    lambda: M.Conventions(tr_eps=-1.0),
    lambda: M.Conventions(es_no_match="half"),
    lambda: M.extraction_strength([]),
    lambda: M.extraction_strength([0.5, 1.0]),
    lambda: M.exact_memorization([[1, 0]]),
    lambda: M.min_k_score([-1.0], drop_last=True, one_token="keep"),
    lambda: M.grad_norm_score([]),
])
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


# --- each convention both ways on the same inputs ----------------------------------------------------

def test_min_k_on_a_one_token_answer_both_ways():
    """Convention 1: OpenUnlearning drops the EOS prediction, leaving a one-token answer nothing: score 0."""
    one = [-2.3]
    assert M.min_k_score(one, drop_last=True) == 0.0 == -ou_min_k(one)                  # default: OpenUnlearning
    assert M.min_k_score(one, drop_last=True, one_token="score") == -2.3                # the token scored
    mu, sigma = [-1.0], [0.5]
    assert M.min_k_plus_plus_score(one, mu, sigma, drop_last=True) == 0.0
    assert M.min_k_plus_plus_score(one, mu, sigma, drop_last=True, one_token="score") == pytest.approx(-2.6)
    # Longer answers: the two agree, and both equal OpenUnlearning's.
    lp = [-0.1, -5.0, -0.2, -3.0, -0.3, -0.05]
    assert M.min_k_score(lp, drop_last=True) == M.min_k_score(lp, drop_last=True, one_token="score") == -ou_min_k(lp)
    # What it does to an AUC: held-out items with one token score 0 (the best possible) under OpenUnlearning.
    members = [[-0.2, -0.1, -0.3]] * 4
    held_out = [[-3.0, -2.0, -1.0]] * 3 + [[-4.0]]
    auc = {c: M.mia_auc([M.min_k_score(a, drop_last=True, one_token=c) for a in members],
                        [M.min_k_score(a, drop_last=True, one_token=c) for a in held_out]) for c in M.ONE_TOKEN}
    assert auc == {"zero": 0.75, "score": 1.0}


def test_extraction_strength_when_no_suffix_matches_both_ways():
    hits = [1, 1, 1, 0, 1]          # + EOS hit; OpenUnlearning scores [1, 1, 1, 0]
    assert M.extraction_strength(hits, drop_last=True) == 0.25 == ou_extraction_strength(hits)
    assert M.extraction_strength(hits, drop_last=True, no_match="paper") == 0.0
    for h in ([1, 0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1]):
        assert M.extraction_strength(h, drop_last=True) == pytest.approx(ou_extraction_strength(h))
    assert M.extraction_strength([1], drop_last=True) == 0.0 == ou_extraction_strength([1])


def test_truth_ratio_eps_both_ways_and_what_it_does_to_forget_quality():
    """Convention 3: P_pert / (P_para + 1e-10) (default) against the exact ratio, once P_para < ~1e-8."""
    para, pert = [[-30.0]], [[[-29.0]]]
    ou = M.truth_ratio(para, pert)
    assert ou == pytest.approx([ou_truth_ratio(-30.0, [-29.0])]) and ou[0] < 0.01
    assert M.truth_ratio(para, pert, eps=0.0) == pytest.approx([E])
    # Forget quality: after aggressive unlearning (mean NLLs ~25-35), the exact ratios match an oracle's
    # (R ~ 1) while OpenUnlearning's collapse towards P_pert · 1e10.
    rng = np.random.default_rng(0)
    lp_para = rng.uniform(-35, -25, 40)
    items_para = [[[v]] for v in lp_para]
    items_pert = [[[[v + rng.normal(0, 0.3)]]] for v in lp_para]
    r = {eps: np.concatenate([M.truth_ratio(a, b, eps=eps) for a, b in zip(items_para, items_pert)])
         for eps in (M.OU_EPS, 0.0)}
    oracle = np.exp(rng.normal(0, 0.3, 40))
    fq = {eps: M.forget_quality(v, oracle) for eps, v in r.items()}
    assert fq[0.0] > 0.05 and fq[M.OU_EPS] < 1e-10
    # The forget aggregator min(R, 1/(R + eps)) too.
    assert M.truth_ratio_forget_score([1e-12]) == pytest.approx(1e-12)
    assert M.truth_ratio_forget_score([1.0]) == pytest.approx(M.truth_ratio_forget_score([1.0], eps=0.0))
    # ... whose eps is immaterial (why a row need not know the conventions): R < 1 reads R, R ≥ 1 reads
    # 1/(R + eps) ≈ 1/R, from ratios scored either way.
    for v in r.values():
        assert M.truth_ratio_forget_score(v) == pytest.approx(M.truth_ratio_forget_score(v, eps=0.0), rel=1e-9)


def test_prob_mean_aggregator_against_the_tofu_ratio():
    """Convention 4: OpenUnlearning's prob_mean, mean of P_para / (P_para + P_pert + 1e-10), is 1/(1 + R)
    for the exact R; it reads ½ where closer_to_1_better reads 1 (same, unknown answer)."""
    para = [[[-1.0]], [[-2.0]]]
    pert = [[[[-1.0]]], [[[-0.5], [-1.5]]]]
    r = np.concatenate([M.truth_ratio(a, b, eps=0.0) for a, b in zip(para, pert)])
    prob = np.concatenate([M.truth_ratio_prob(a, b) for a, b in zip(para, pert)])
    assert prob == pytest.approx(1 / (1 + r))
    assert prob == pytest.approx([ou_prob_mean_ratio(-1.0, [-1.0]), ou_prob_mean_ratio(-2.0, [-0.5, -1.5])])
    assert prob[0] == pytest.approx(0.5) and M.truth_ratio_forget_score(r[:1]) == pytest.approx(1.0)


# --- the same conventions through score_items, on real token statistics ------------------------------

@pytest.fixture(scope="module")
def tiny():
    """Two untrained tofu-synth-tiny models (the metrics' conventions do not need trained ones)."""
    torch.manual_seed(0)
    d = load_tofu(get_lm_task("tofu-synth-tiny"))
    fwd = LMForward(d.config)
    return d, fwd, init_lm_params(d.config, [0, 1])


def test_score_items_follows_openunlearning_by_default_and_the_legacy_choices_differ(tiny):
    d, fwd, params = tiny
    items = list(d.items[:12])
    score = lambda conv, max_len=48: score_items(fwd, params, fwd.module, d.tok, items, max_len, mia=True,
                                                 conventions=conv)
    ou, legacy = score(M.OPENUNLEARNING), score(LEGACY)
    assert np.array_equal(ou.seq, legacy.seq) and np.array_equal(ou.mia["loss"], legacy.mia["loss"])
    # zlib: the decoded labelled ids (here " " + answer: the answer's first token carries its space).
    ids, labels = encode_pairs(d.tok, items, [qa.answer for qa in items], 48)
    texts = labelled_texts(d.tok, labels)
    assert texts[0] == " " + items[0].answer
    assert ou.mia["zlib"][1, 3] == pytest.approx(ou.seq[1, 3] / len(zlib.compress(texts[3].encode())))
    assert legacy.mia["zlib"][1, 3] == pytest.approx(ou.seq[1, 3] / len(zlib.compress(items[3].answer.encode())))
    # Truncated items: zlib compresses only what was scored.
    short = score(M.OPENUNLEARNING, 30)
    cut = labelled_texts(d.tok, encode_pairs(d.tok, items, [qa.answer for qa in items], 30)[1])
    assert any(len(c) < len(qa.answer) for c, qa in zip(cut, items))
    assert short.mia["zlib"] == pytest.approx(short.seq / np.array([len(zlib.compress(c.encode())) for c in cut]))
    # Truth ratios: the two eps agree for models whose P_para is not tiny.
    assert ou.truth_ratio == pytest.approx(legacy.truth_ratio, rel=1e-6)
    assert ou.truth_prob == pytest.approx(1 / (1 + legacy.truth_ratio), rel=1e-6)


def test_one_token_answers_through_score_items(tiny):
    """Answers cut to one labelled token: OpenUnlearning's Min-K%/Min-K%++/ES/GradNorm read 0 and its EM is
    undefined; the 'score' option scores the token."""
    d, fwd, params = tiny
    _, labels = encode_pairs(d.tok, d.items, [qa.answer for qa in d.items], 48)
    n_q = (labels == -100).int().argmin(1)                      # question tokens before the answer's first
    common = int(torch.mode(n_q).values)
    items = [qa for qa, n in zip(d.items, n_q) if n == common][:4]
    _, labels = encode_pairs(d.tok, items, [qa.answer for qa in items], common + 1)
    assert len(items) == 4 and ((labels != -100).sum(1) == 1).all()
    run = lambda conv: score_items(fwd, params, fwd.module, d.tok, items, common + 1, mia=True, gradnorm=True,
                                   conventions=conv)
    ou, scored = run(M.OPENUNLEARNING), run(M.Conventions(one_token="score"))
    for a in ("mink", "minkpp", "gradnorm"):
        assert (ou.mia[a] == 0).all() and (scored.mia[a] != 0).all()
    assert (scored.mia["mink"] == scored.seq).all()              # one token: Min-K% = its log-probability
    assert (ou.extraction_strength == 0).all() and np.isnan(ou.exact_memorization).all()
    assert np.isfinite(scored.exact_memorization).all()


def test_memorisation_fields_match_openunlearning_from_the_hits(tiny):
    d, fwd, params = tiny
    items = list(d.items[:10])
    s = score_items(fwd, params, fwd.module, d.tok, items, 48)
    from unlearnkit.lm.model import token_stats
    st = token_stats(fwd, params, *encode_pairs(d.tok, items, [qa.answer for qa in items], 48))
    for i in range(2):
        for j in range(10):
            h = st.hit[i, j][st.mask[j]].numpy()
            assert s.extraction_strength[i, j] == pytest.approx(ou_extraction_strength(h))
            em = h[:-1].mean()
            assert s.exact_memorization[i, j] == pytest.approx(em)
    # exact memorisation differs from the accuracy field by the EOS position only
    n = st.mask.sum(-1).numpy()
    eos_hit = np.array([[st.hit[i, j][st.mask[j]][-1].item() for j in range(10)] for i in range(2)])
    assert s.accuracy == pytest.approx((s.exact_memorization * (n - 1) + eos_hit) / n)


# --- GradNorm, batched with torch.func, against autograd one model and item at a time ----------------

def test_gradnorm_scores_match_per_item_autograd(tiny):
    d, fwd, params = tiny
    items = list(d.items[:6])
    ids, labels = encode_pairs(d.tok, items, [qa.answer for qa in items], 48)
    got = gradnorm_scores(fwd, params, ids, labels, chunk=4)
    keep = _cut_mask(labels[:, 1:] != -100, "zero")
    for i in range(2):
        theta = {k: v[i].clone().requires_grad_(True) for k, v in params.items()}
        for j in range(6):
            lp, _ = shifted_token_logprobs(fwd(theta, ids[j:j + 1]), labels[j:j + 1])
            grads = torch.autograd.grad(-lp[0][keep[j]].mean(), list(theta.values()))
            assert got[i, j] == pytest.approx(M.grad_norm_score(grads), rel=1e-4)
    assert gradnorm_scores(fwd, params, ids, labels, p=1, chunk=6)[0] == pytest.approx(
        gradnorm_scores(fwd, params, ids, labels, p=1, chunk=2)[0], rel=1e-5)


# --- Reference attack, saved scores and rows ----------------------------------------------------------

def test_reference_attack_and_item_scores_round_trip(tiny):
    d, fwd, params = tiny
    items = list(d.items[:8])
    ref_params = init_lm_params(d.config, [5, 6])
    ref = answer_seq(fwd, ref_params, d.tok, items, 48)
    s = score_items(fwd, params, fwd.module, d.tok, items, 48, mia=True, gradnorm=True, reference_seq=ref)
    assert s.mia["ref"] == pytest.approx(s.seq - ref)
    target = score_items(fwd, ref_params, fwd.module, d.tok, items, 48)
    assert ref == pytest.approx(target.seq)
    with pytest.raises(ValueError, match="reference_seq"):
        score_items(fwd, params, fwd.module, d.tok, items, 48, mia=True, reference_seq=ref[:, :3])
    arrays = s.arrays("row/x/forget")
    assert {f"row/x/forget/{f}" for f in ("extraction_strength", "exact_memorization", "truth_prob")} <= set(arrays)
    assert {"row/x/forget/mia/ref", "row/x/forget/mia/gradnorm"} <= set(arrays)
    back = ItemScores.read(arrays, "row/x/forget")
    for f in ITEM_FIELDS:
        a, b = getattr(s, f), getattr(back, f)
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)
    assert back.mia.keys() == s.mia.keys() == set(MIA_ATTACKS)
    # Scores saved before these fields existed still read, and rows then leave them out.
    old = {k: v for k, v in arrays.items() if not k.endswith(("/ref", "/gradnorm", "/truth_prob", "_strength",
                                                              "_memorization"))}
    legacy = ItemScores.read(old, "row/x/forget")
    assert legacy.truth_prob is None and set(legacy.mia) == {"loss", "zlib", "mink", "minkpp"}
    assert memorisation(legacy) == {}
    assert set(mia_aucs({"forget": legacy, "val": legacy})) == {"loss", "zlib", "mink", "minkpp"}


def _fake_scores(rng, n_models=2, shift=0.0):
    def block(n, tr=True, options=False, mia=False):
        seq = rng.normal(-1 + shift, 0.3, (n_models, n)).clip(max=0)
        s = ItemScores(seq=seq, accuracy=rng.uniform(0, 1, (n_models, n)), rouge=rng.uniform(0, 1, (n_models, n)))
        if tr:
            s.truth_ratio = np.exp(rng.normal(0, 0.5, (n_models, n)))
            s.truth_prob = 1 / (1 + s.truth_ratio)
        if options:
            s.prob_options = rng.uniform(0, 1, (n_models, n))
        s.extraction_strength = rng.uniform(0, 1, (n_models, n))
        s.exact_memorization = rng.uniform(0, 1, (n_models, n))
        s.exact_memorization[0, 0] = np.nan
        if mia:
            s.mia = {a: rng.normal(shift, 1, (n_models, n)) for a in MIA_ATTACKS}
        return s
    return {"forget": block(10, mia=True), "retain": block(12), "world": block(8, options=True),
            "val": block(10, tr=False, mia=True)}


def test_lm_row_reports_the_added_metrics():
    rng = np.random.default_rng(0)
    s, o = _fake_scores(rng, shift=0.5), _fake_scores(rng)
    row, _ = lm_row(s, o, RunConfig(bootstrap=0, estimators=()))
    assert set(row["mia_auc"]) == set(MIA_ATTACKS)
    f = s["forget"]
    assert row["extraction_strength"] == pytest.approx(f.extraction_strength.mean())
    em = f.exact_memorization
    assert row["exact_memorization"] == pytest.approx(np.mean([np.nanmean(em[0]), np.nanmean(em[1])]))
    assert row["forget_truth_ratio_prob"] == pytest.approx(f.truth_prob.mean())
    for a in MIA_ATTACKS:
        assert row["mia_auc"][a] == pytest.approx(np.mean([M.mia_auc(f.mia[a][i], s["val"].mia[a][i])
                                                           for i in range(2)]))
