"""LM unlearning losses against their papers' formulas, and every LM method on a tiny ensemble."""
import math

import numpy as np
import pytest
import torch

from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY
from unlearnkit.methods.lm.flat import flat_loss
from unlearnkit.methods.lm.npo import npo_loss
from unlearnkit.methods.lm.rmu import rmu_update_mask
from unlearnkit.methods.lm.simnpo import simnpo_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# --- formulas on small cases ------------------------------------------------------------------------

def test_npo_loss_equals_its_formula():
    logp, ref, beta = torch.tensor([-2.0, -30.0, -1.5]), torch.tensor([-1.0, -25.0, -3.0]), 0.1
    # Zhang et al. 2024, Eq. 3: -(2/β) E log σ(-β log(π_θ/π_ref))
    want = np.mean([-(2 / beta) * math.log(_sigmoid(-beta * (a - b))) for a, b in zip(logp.tolist(), ref.tolist())])
    assert npo_loss(logp, ref, beta).item() == pytest.approx(want, rel=1e-6)
    # at the start of unlearning (π_θ = π_ref) it is (2/β)·log 2 whatever the sequence
    assert npo_loss(ref, ref, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_gradient_is_weighted_gradient_ascent_and_tends_to_it():
    """§4 of the NPO paper: ∇L_NPO = E[w_θ · ∇(−log π_θ)·(−1)] with w = 2σ(β·log(π_θ/π_ref)) → 1 as β → 0."""
    ref = torch.tensor([-4.0, -6.0])
    for beta in (1.0, 0.1, 1e-4):
        logp = torch.tensor([-3.0, -9.0], requires_grad=True)
        npo_loss(logp, ref, beta).backward()
        w = 2 * torch.sigmoid(beta * (logp.detach() - ref))
        torch.testing.assert_close(logp.grad, w / len(ref))
    assert torch.allclose(logp.grad, torch.full((2,), 0.5), atol=1e-3)  # β → 0: plain ascent on Σ log π / n


def test_simnpo_loss_equals_its_formula():
    logp, length, beta, delta = torch.tensor([-12.0, -3.0]), torch.tensor([6, 3]), 2.5, 0.2
    # Fan et al. 2024, Eq. 4 as coded: -(2/β) log σ(β·(−log π/|y| − δ)) averaged
    want = np.mean([-(2 / beta) * math.log(_sigmoid(beta * (-lp / n - delta)))
                    for lp, n in zip(logp.tolist(), length.tolist())])
    assert simnpo_loss(logp, length, beta, delta).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("divergence,expected", [
    ("tv", lambda e, f: -math.tanh(e) / 2 + math.tanh(f) / 2),
    ("kl", lambda e, f: -e + math.exp(f - 1)),
    ("pearson", lambda e, f: -e + f + f * f / 4),
    ("js", lambda e, f: -(math.log(2) - math.log1p(math.exp(-e))) + math.log1p(math.exp(f)) - math.log(2)),
])
def test_flat_loss_is_the_negative_variational_bound(divergence, expected):
    pe, pf = torch.tensor(0.3), torch.tensor(0.8)
    assert flat_loss(pe, pf, divergence).item() == pytest.approx(expected(0.3, 0.8), rel=1e-6)
    # the bound rewards a likelier template answer and penalises a likelier forget answer
    assert flat_loss(pe + 0.1, pf, divergence) < flat_loss(pe, pf, divergence) < flat_loss(pe, pf + 0.1, divergence)


def test_rmu_updates_only_the_chosen_mlp_output_projections():
    params = {f"transformer.h.{b}.mlp.c_proj.weight": torch.zeros(2, 3, 3) for b in range(4)}
    params["transformer.h.1.attn.c_proj.weight"] = torch.zeros(2, 3, 3)
    mask = rmu_update_mask(params, layer=3, blocks=2)
    assert {k for k, v in mask.items() if v.item() == 1} == {"transformer.h.1.mlp.c_proj.weight",
                                                              "transformer.h.2.mlp.c_proj.weight"}


def test_bad_lm_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="beta"):
        make_hparams("npo", {"beta": "0"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="divergence"):
        make_hparams("flat", {"divergence": "hellinger"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="no hyperparameter"):
        make_hparams("ga", {"temperature": "2"}, LM_REGISTRY)


# --- every method on a tiny ensemble ------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


@pytest.mark.parametrize("method", ["finetune", "ga", "graddiff", "ga+kl", "npo", "simnpo", "llmu", "rmu", "flat",
                                    "idk"])
def test_each_lm_method_moves_the_models_and_stays_finite(bench, method):
    hp = make_hparams(method, {"epochs": "1"}, LM_REGISTRY)
    ctx = bench.context()
    out = LM_REGISTRY[method].fn(ctx, hp)
    assert out.keys() == bench.originals.params.keys()
    assert all(torch.isfinite(v).all() for v in out.values())
    moved = [k for k in out if not torch.equal(out[k], bench.originals.params[k])]
    assert moved, f"{method} changed nothing"
    if method == "rmu":  # only the MLP output projection of the steered block
        assert moved == ["transformer.h.0.mlp.c_proj.weight"]
    for i in range(2):  # both models of the ensemble moved, each its own way
        assert any(not torch.equal(out[k][i], bench.originals.params[k][i]) for k in moved)


def _forget_logprob(bench, params):
    return bench.score(params)["forget"].seq.mean()


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff", "idk"])
def test_forgetting_methods_lower_the_forget_answers_probability(bench, method):
    out = LM_REGISTRY[method].fn(bench.context(), make_hparams(method, {"epochs": "3"}, LM_REGISTRY))
    assert _forget_logprob(bench, out) < _forget_logprob(bench, bench.originals.params) - 0.5


def test_idk_makes_refusals_likely_on_forget_questions(bench):
    ctx = bench.context()
    out = LM_REGISTRY["idk"].fn(ctx, make_hparams("idk", {"epochs": "5"}, LM_REGISTRY))
    x, y = ctx.refusals
    rows = torch.as_tensor(ctx.forget)
    from unlearnkit.lm.evaluate import token_stats
    before = token_stats(ctx.forward, bench.originals.params, x[rows], y[rows])
    after = token_stats(ctx.forward, out, x[rows], y[rows])
    n = before.mask.sum(-1)
    assert (after.lp.sum(-1) / n).mean() > (before.lp.sum(-1) / n).mean() + 1.0
    assert after.hit.sum() > before.hit.sum()  # more refusal tokens are the top-1 prediction
