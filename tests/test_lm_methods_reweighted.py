"""WGA, SatImp, CE-U and PDU: their losses against the formulas, the properties their papers state, and a
tiny-ensemble run of each."""
import math

import numpy as np
import pytest
import torch

import unlearnkit.methods.lm.ceu  # noqa: F401  (registers the methods: not yet in methods/lm/__init__.py)
import unlearnkit.methods.lm.pdu  # noqa: F401
import unlearnkit.methods.lm.satimp  # noqa: F401
import unlearnkit.methods.lm.wga  # noqa: F401
from unlearnkit.lm.evaluate import token_stats
from unlearnkit.lm.model import causal_lm_loss, shifted_token_logprobs
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY
from unlearnkit.methods.lm.base import answer_nll
from unlearnkit.methods.lm.ceu import ceu_loss, drop_first_answer_tokens
from unlearnkit.methods.lm.pdu import logit_margin_loss, pdu_dual_update, pdu_objective, pdu_state
from unlearnkit.methods.lm.satimp import satimp_loss, satimp_weights
from unlearnkit.methods.lm.wga import wga_loss

pytestmark = pytest.mark.usefixtures("one_thread")

# two rows, 4 answer positions; 0 marks positions off the answer
LP = torch.tensor([[-0.1, -2.0, -0.7, 0.0], [-3.0, -0.01, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


def _answer_lps():
    return [lp for lp, m in zip(LP.flatten().tolist(), MASK.flatten().tolist()) if m]


# --- WGA -------------------------------------------------------------------------------------------

def test_wga_loss_equals_its_formula():
    beta = 2.0
    # Wang et al. 2025 (WGA): mean over answer tokens of p^β · log p, p^β a constant
    want = np.mean([math.exp(lp) ** beta * lp for lp in _answer_lps()])
    assert wga_loss(LP, MASK, beta).item() == pytest.approx(want, rel=1e-6)


def test_wga_with_beta_zero_is_gradient_ascent_and_weights_each_tokens_gradient_by_p_beta():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 2, 0, -100]])
    lp, mask = shifted_token_logprobs(logits, labels)
    ga = -causal_lm_loss(logits, labels)
    assert wga_loss(lp, mask, 0.0).item() == pytest.approx(ga.item(), rel=1e-6)
    g_wga, = torch.autograd.grad(wga_loss(lp, mask, 0.0), logits, retain_graph=True)
    g_ga, = torch.autograd.grad(ga, logits, retain_graph=True)
    torch.testing.assert_close(g_wga, g_ga)
    # for β > 0 the gradient with respect to each token's log p is p^β / (number of answer tokens)
    lp_leaf = LP.clone().requires_grad_(True)
    wga_loss(lp_leaf, MASK, 1.5).backward()
    torch.testing.assert_close(lp_leaf.grad, torch.where(MASK, LP.exp() ** 1.5 / MASK.sum(), torch.zeros_like(LP)))


# --- SatImp ----------------------------------------------------------------------------------------

def test_satimp_loss_equals_its_formula():
    b1, b2 = 5.0, 1.0
    # Yang et al. 2025 (SatImp): mean over answer tokens of p^β1 (1 − p)^β2 · log p
    want = np.mean([math.exp(lp) ** b1 * (1 - math.exp(lp)) ** b2 * lp for lp in _answer_lps()])
    assert satimp_loss(LP, MASK, b1, b2).item() == pytest.approx(want, rel=1e-6)


def test_satimp_weights_combine_saturation_and_importance():
    p = torch.linspace(0.001, 0.999, 999)
    w = satimp_weights(p.log(), 5.0, 1.0)
    assert p[w.argmax()].item() == pytest.approx(5 / 6, abs=2e-3)      # peak at β1 / (β1 + β2)
    assert w[0] < 1e-12 and w[-1] < 1e-3                              # nothing for unlearned or certain tokens
    low = p < 5 / 6
    assert (w[low].diff() > 0).all()   # saturation: among tokens below the peak, less likely ones weigh less
    assert (w[~low].diff() < 0).all()  # importance: among the most confident, more confident ones weigh less
    # without the importance factor it is WGA with β = β1
    assert satimp_loss(LP, MASK, 3.0, 0.0).item() == pytest.approx(wga_loss(LP, MASK, 3.0).item(), rel=1e-6)


# --- CE-U ------------------------------------------------------------------------------------------

def test_ceu_loss_equals_its_formula():
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0], [1.0, 3.0, -2.0, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 1]])  # positions 0 and 1 predict the answer tokens 2 and 1
    want = []
    for t, y in ((0, 2), (1, 1)):
        z = logits[0, t].tolist()
        others = [math.exp(v) for j, v in enumerate(z) if j != y]
        q = [0.0 if j == y else math.exp(v) / sum(others) for j, v in enumerate(z)]
        lse = math.log(sum(math.exp(v) for v in z))
        want.append(-sum(qj * (v - lse) for qj, v in zip(q, z)))
    assert ceu_loss(logits, labels).item() == pytest.approx(np.mean(want), rel=1e-6)


def test_ceu_target_excludes_the_true_token_and_its_gradient_there_is_the_probability():
    """Yang 2025: the target is the model's distribution with the true logit at −∞; the gradient on the
    logits is softmax(z) − q, so p_y on the true logit, and the gradients over the vocabulary sum to 0."""
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels = torch.tensor([[-100, 4, 0, 5]])
    ceu_loss(logits, labels).backward()
    p = torch.softmax(logits.detach()[0, :3], -1)
    targets = labels[0, 1:]
    on_true = logits.grad[0, torch.arange(3), targets]
    torch.testing.assert_close(on_true, p[torch.arange(3), targets] / 3)  # mean over 3 answer tokens
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(1, 4), atol=1e-7, rtol=0)
    # the other tokens are pulled up in proportion to their probability: −p_j p_y / (1 − p_y) / 3
    pull = -logits.grad[0, 0] * 3
    py = p[0, 4]
    want = p[0] * py / (1 - py)
    want[4] = -py
    torch.testing.assert_close(pull, want)
    # a model that already gives the true token probability ~0 has (almost) nothing left to unlearn
    z = torch.zeros(1, 2, 6)
    z[0, 0, 4] = -30.0
    assert ceu_loss(z, torch.tensor([[-100, 4]])).item() == pytest.approx(math.log(5), rel=1e-6)


def test_ceu_leaves_out_the_first_answer_token():
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, 5, 6, -100, -100, -100]])
    assert drop_first_answer_tokens(labels, 1).tolist() == [[-100, -100, -100, 8, 9, -100],
                                                             [-100, -100, 6, -100, -100, -100]]
    assert torch.equal(drop_first_answer_tokens(labels, 0), labels)


# --- PDU -------------------------------------------------------------------------------------------

def test_logit_margin_loss_equals_its_formula_and_is_zero_only_when_flat():
    logits = torch.tensor([[[1.0, 4.0, -1.0], [0.0, 0.5, 2.5], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, 0, 2]])
    want = np.mean([(4.0 - 4.0 / 3) ** 2, (2.5 - 1.0) ** 2])  # (max − mean)² at the two answer positions
    assert logit_margin_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert logit_margin_loss(logits + 3.0, labels).item() == pytest.approx(want, rel=1e-6)  # shift-invariant
    flat = torch.full((1, 3, 3), 2.0)
    assert logit_margin_loss(flat, labels).item() == 0.0  # uniform next-token distribution


def test_pdu_dual_update_rises_while_the_constraint_is_violated():
    lam, eps, on = torch.tensor([1.0, 1.0, 0.2]), torch.tensor([0.5, 0.5, 0.5]), torch.tensor([True, True, True])
    new = pdu_dual_update(lam, torch.tensor([0.9, 0.3, 0.1]), eps, 2.0, on)
    # max(0, λ + η (L − ε)): violated → up by η·0.4; slack → down by η·0.2; projected at 0
    torch.testing.assert_close(new, torch.tensor([1.8, 0.6, 0.0]))
    held = pdu_dual_update(lam, torch.tensor([0.9, 0.3, 0.1]), eps, 2.0, torch.tensor([False, True, False]))
    torch.testing.assert_close(held, torch.tensor([1.0, 0.6, 0.2]))  # warm-up: λ held


# --- every method on a tiny ensemble ------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


def test_pdu_dual_variable_evolves_per_model_inside_the_vmapped_loss(bench):
    """The dual state in `frozen` advances once per step, per model, from each model's own retain loss:
    held for the warm-up steps, then λ ← max(0, λ + η·(L_R − ε)); the loss uses the λ before the update."""
    ctx = bench.context()
    hp = make_hparams("pdu", {"alpha": "10", "dual_step": "3", "retain_eps": "0.05"}, LM_REGISTRY)
    loss = torch.vmap(pdu_objective(ctx, hp, warmup_steps=1), in_dims=(0, 0, 0))
    x, y = ctx.train_data
    gen = torch.Generator().manual_seed(0)
    idx = {"forget": torch.as_tensor(ctx.forget)[torch.randint(len(ctx.forget), (2, 4), generator=gen)],
           "retain": torch.as_tensor(ctx.retain)[torch.randint(len(ctx.retain), (2, 4), generator=gen)]}
    batch = {k: (x[i], y[i], i) for k, i in idx.items()}
    frozen = {"dual": torch.full((2,), 10.0), "step": torch.zeros(2), "eps": torch.full((2,), 0.05)}
    with torch.no_grad():
        retain = torch.stack([answer_nll(ctx, {k: v[m] for k, v in ctx.originals.items()}, x[idx["retain"][m]],
                                         y[idx["retain"][m]]) for m in range(2)])
        forget = torch.stack([logit_margin_loss(ctx.forward({k: v[m] for k, v in ctx.originals.items()},
                                                            x[idx["forget"][m]]), y[idx["forget"][m]])
                              for m in range(2)])
    assert (retain > 0.05).all()  # the constraint is violated: λ must rise
    expected = torch.full((2,), 10.0)
    for step in range(3):
        out = loss(ctx.originals, batch, frozen)
        torch.testing.assert_close(out, forget + expected * (retain - 0.05), rtol=1e-5, atol=1e-4)
        if step >= 1:
            expected = expected + 3.0 * (retain - 0.05)
        torch.testing.assert_close(frozen["dual"], expected, rtol=1e-5, atol=1e-5)
        assert frozen["step"].tolist() == [step + 1] * 2
    assert (frozen["dual"] > 10.0).all() and frozen["dual"][0] != frozen["dual"][1]


def test_pdu_dual_state_advances_through_the_training_loop(bench):
    """Through `fit` itself (which places `frozen` once, and on the CPU shares it): one dual step per
    optimizer step after the warm-up, and with ε = 0 the constraint is always violated, so λ only rises."""
    ctx = bench.context()
    hp = make_hparams("pdu", {"epochs": "2", "retain_eps": "1e-6", "dual_warmup": "0.5"}, LM_REGISTRY)
    streams = ctx.pair_streams(hp)
    total = streams["forget"].steps(hp.epochs)
    state = pdu_state(ctx, hp)
    ctx.fit(pdu_objective(ctx, hp, round(0.5 * total)), streams, hp.epochs, hp.optim(), frozen=state)
    assert state["step"].tolist() == [total] * 2
    assert (state["dual"] > hp.alpha).all()
    # the default ε is relative to each original's own retain NLL
    eps = pdu_state(ctx, make_hparams("pdu", {}, LM_REGISTRY))["eps"]
    assert (eps > 0).all() and eps[0] != eps[1]


def _forget_logprob(ctx, params):
    """Mean over forget items of the answer's mean token log-probability (the `seq` score), per model."""
    x, y = ctx.train_data
    rows = torch.as_tensor(ctx.forget)
    stats = token_stats(ctx.forward, params, x[rows], y[rows])
    return (stats.lp.sum(-1) / stats.mask.sum(-1)).mean(-1)


@pytest.mark.parametrize("method", ["wga", "satimp", "ceu", "pdu"])
def test_each_reweighted_method_moves_the_models_and_forgets(bench, method):
    ctx = bench.context()
    out = LM_REGISTRY[method].fn(ctx, make_hparams(method, {"epochs": "3"}, LM_REGISTRY))
    assert out.keys() == bench.originals.params.keys()
    assert all(torch.isfinite(v).all() for v in out.values())
    moved = [k for k in out if not torch.equal(out[k], bench.originals.params[k])]
    assert moved, f"{method} changed nothing"
    for i in range(2):  # both models of the ensemble moved
        assert any(not torch.equal(out[k][i], bench.originals.params[k][i]) for k in moved)
    assert (_forget_logprob(ctx, out) < _forget_logprob(ctx, bench.originals.params) - 0.2).all()


def test_bad_reweighted_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="beta"):
        make_hparams("wga", {"beta": "-1"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="beta2"):
        make_hparams("satimp", {"beta2": "-0.5"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="ignore_first"):
        make_hparams("ceu", {"ignore_first": "-1"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="dual_warmup"):
        make_hparams("pdu", {"dual_warmup": "2"}, LM_REGISTRY)
