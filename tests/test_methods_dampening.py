"""SSD, Potion and their shared diagonal-Fisher importances (digits-mlp, forget class 3, N=4 models)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unlearnkit.methods.potion  # noqa: F401  (registers potion, potion+finetune)
import unlearnkit.methods.ssd  # noqa: F401  (registers ssd, ssd+finetune)
from unlearnkit.data import load_dataset
from unlearnkit.engine import predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.forget import build_forget_set
from unlearnkit.methods import REGISTRY, Context, make_hparams
from unlearnkit.methods.importance import diagonal_fisher
from unlearnkit.methods.potion import (
    PotionFinetuneParams,
    PotionParams,
    finite_ratios,
    percentile_sorted,
    potion_alpha,
    potion_finetune,
    potion_search,
)
from unlearnkit.methods.ssd import SSDFinetuneParams, SSDParams, dampen, ssd, ssd_finetune, ssd_importances
from unlearnkit.metrics import accuracy
from unlearnkit.models import build_model
from unlearnkit.tasks import get_task
from unlearnkit.zoo import ORIGINAL_SEEDS, ZooCache, arm_seeds, template, train_models

N = 4


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Trained digits-mlp originals and the class-3 forget set, built as experiment.run builds its Context."""
    task = get_task("digits-mlp")
    ds = load_dataset(task.dataset, None, task.train_size, 0)
    forget = build_forget_set("class:3", ds, 0)
    cache = ZooCache(str(tmp_path_factory.mktemp("zoo")))
    seeds = arm_seeds(ORIGINAL_SEEDS, N)
    originals = train_models(task, ds, torch.arange(len(ds.y_train)), seeds, cache, "originals")
    return Context(task, ds, template(task, ds), originals.params, forget.positions,
                   forget.retain_positions(len(ds.y_train)), seeds, 0, cache)


@pytest.fixture(scope="module")
def ssd_imp(ctx):
    return ssd_importances(ctx, 128)


@pytest.fixture(scope="module")
def potion_imp(ctx):
    return ssd_importances(ctx, 512, data_positions=ctx.retain)


@pytest.fixture(scope="module")
def search(ctx, potion_imp):
    return potion_search(ctx, PotionParams(), *potion_imp)


def _acc(ctx, params, split):
    if split == "val":
        x, y = ctx.dataset.x_val, ctx.dataset.y_val
    else:
        pos = torch.as_tensor(getattr(ctx, split))
        x, y = ctx.dataset.x_train[pos], ctx.dataset.y_train[pos]
    return accuracy(predict(ctx.forward, params, x), y).numpy()


# --- importances ---------------------------------------------------------------------------------------

def test_diagonal_fisher_equals_per_model_autograd_loop(ctx):
    positions = np.arange(200)  # 3 batches of 64 and a partial one of 8 (counted as a whole batch)
    fisher = diagonal_fisher(ctx, positions, 64, name="check")
    order = ctx.stream("check", positions, 64).epoch_order(0)
    x, y = ctx.dataset.x_train, ctx.dataset.y_train
    for i in range(N):
        model = build_model("mlp", ctx.dataset.input_shape, 10, **ctx.task.model_kwargs)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(ctx.originals[name][i])
        total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        batches = [order[i, b:b + 64] for b in range(0, len(positions), 64)]
        for idx in batches:
            model.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            for name, p in model.named_parameters():
                total[name] += p.grad ** 2
        for name in total:
            torch.testing.assert_close(fisher[name][i], total[name] / len(batches), rtol=1e-4, atol=1e-10)


# --- SSD -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,lam", [(10.0, 1.0), (10.0, 20.0), (2.0, 0.5)])
def test_ssd_rule_matches_manual_computation(ctx, ssd_imp, alpha, lam):
    d, f = ssd_imp
    out = dampen(ctx.originals, d, f, alpha, lam)
    n_selected = 0
    for k, theta in ctx.originals.items():
        sel = f[k] > alpha * d[k]
        n_selected += int(sel.sum())
        assert torch.equal(out[k][~sel], theta[~sel])  # untouched wherever I_F <= α·I_D
        beta = torch.clamp(lam * d[k][sel] / f[k][sel], max=1.0)
        torch.testing.assert_close(out[k][sel], beta * theta[sel])
        if lam <= alpha:  # every selected β = λ·I_D/I_F < λ/α: the clamp never fires
            assert (beta < lam / alpha).all()
        assert (out[k].abs() <= theta.abs()).all()  # never grows
        assert (out[k] * theta >= 0).all()  # never flips sign
    assert n_selected > 0


def test_ssd_method_uses_full_training_set_and_forget_importances(ctx, ssd_imp):
    out = ssd(ctx, SSDParams())
    expected = dampen(ctx.originals, *ssd_imp, 10.0, 1.0)
    for k in out:
        assert torch.equal(out[k], expected[k])
    assert (_acc(ctx, out, "forget") < _acc(ctx, ctx.originals, "forget")).all()


def test_ssd_edge_cases_have_no_nan():
    theta = {"w": torch.tensor([[1.0, -2.0, 3.0, -4.0], [1.0, 1.0, 1.0, 1.0]])}
    d = {"w": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])}
    f = {"w": torch.tensor([[1.0, 0.0, 0.0, 20.0], [1.0, 0.0, 0.0, 20.0]])}
    out = dampen(theta, d, f, 10.0, 1.0)["w"]
    # I_D = 0 < I_F: selected, β = 0;  I_F = 0: never selected;  I_F = 20 > 10·I_D: β = 1/20
    assert torch.equal(out[0], torch.tensor([0.0, -2.0, 3.0, -4.0 / 20]))
    per_model = dampen(theta, d, f, torch.tensor([10.0, 30.0]), 1.0)["w"]  # a per-model α
    assert torch.equal(per_model, torch.tensor([[0.0, -2.0, 3.0, -0.2], [0.0, 1.0, 1.0, 1.0]]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [2.0 ** 10, 2.0 ** -10])
def test_ssd_invariant_to_scaling_both_importances(ctx, ssd_imp, scale):
    d, f = ssd_imp
    base = dampen(ctx.originals, d, f, 10.0, 1.0)
    scaled = dampen(ctx.originals, {k: v * scale for k, v in d.items()}, {k: v * scale for k, v in f.items()},
                    10.0, 1.0)
    for k in base:
        assert torch.equal(base[k], scaled[k])


def test_ssd_forget_everything_changes_nothing(ctx, ssd_imp):
    everything = np.concatenate([ctx.retain, ctx.forget])  # the positions and stream ssd_importances uses for D
    i_f = diagonal_fisher(ctx, everything, 128, name="importance:D")
    for k in i_f:
        assert torch.equal(i_f[k], ssd_imp[0][k])  # deterministic: same batches give the same importances
    for alpha in (1.0, 10.0):
        out = dampen(ctx.originals, ssd_imp[0], i_f, alpha, 1.0)
        for k in out:
            assert torch.equal(out[k], ctx.originals[k])


def test_ssd_finetune_recovers_utility(ctx):
    original, dampened = ctx.originals, ssd(ctx, SSDParams())
    repaired = ssd_finetune(ctx, SSDFinetuneParams())
    assert (_acc(ctx, dampened, "forget") < _acc(ctx, original, "forget")).all()
    assert _acc(ctx, repaired, "val").mean() >= _acc(ctx, dampened, "val").mean()
    assert _acc(ctx, repaired, "retain").mean() >= _acc(ctx, dampened, "retain").mean()
    assert _acc(ctx, repaired, "forget").mean() < 0.5  # fine-tuning on S_R does not bring class 3 back


# --- Potion --------------------------------------------------------------------------------------------

def test_percentile_matches_numpy():
    values = np.sort(np.random.default_rng(0).exponential(size=1001))
    for q in (0.0, 12.5, 99.961, 100.0):
        assert percentile_sorted(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


@pytest.mark.parametrize("s", [0.004, 0.05, 0.5, 5.0])
def test_potion_selects_about_ln_1_plus_100s_percent(ctx, potion_imp, s):
    d, f = potion_imp
    for i, r in enumerate(finite_ratios(d, f)):
        alpha = potion_alpha(r, s)
        expected = math.log1p(100 * s) / 100 * len(r)
        ties = int((r == alpha).sum())
        assert abs(int((r > alpha).sum()) - expected) <= ties + 1
        # the same count through SSD's rule I_F > α·I_D on the parameters with a finite ratio
        selected = sum(int(((f[k][i] > alpha * d[k][i]) & (d[k][i] > 0)).sum()) for k in d)
        assert abs(selected - expected) <= ties + 1 + 0.001 * len(r)


def test_potion_s_sequence_and_stopping_rule(ctx, potion_imp, search):
    s0 = len(ctx.forget) / (len(ctx.forget) + len(ctx.retain)) / 25
    d, f = potion_imp
    ratios = finite_ratios(d, f)
    assert np.allclose(search.forget_acc, _acc(ctx, search.params, "forget"))
    for i in range(N):
        k = np.arange(search.tries[i])
        np.testing.assert_allclose(search.history[i], s0 * 1.1 ** k, rtol=1e-12)
        assert search.s[i] == search.history[i][-1]
        assert search.met[i] or search.tries[i] == 500
        if search.met[i]:
            assert search.forget_acc[i] <= 0.0 * search.original_acc[i]
        if search.tries[i] > 1:  # the previous s did not satisfy the rule
            sl = slice(i, i + 1)
            prev = dampen({n: v[sl] for n, v in ctx.originals.items()}, {n: v[sl] for n, v in d.items()},
                          {n: v[sl] for n, v in f.items()}, potion_alpha(ratios[i], search.history[i][-2]))
            assert _acc(ctx, prev, "forget")[0] > 0.0
    assert search.met.all()  # ρ = 0 terminates on this task: class 3 is fully forgotten


def test_potion_each_try_starts_from_originals(ctx, potion_imp, search):
    once = dampen(ctx.originals, *potion_imp, torch.as_tensor(search.alpha), 1.0)
    for k in once:
        assert torch.equal(search.params[k], once[k])  # one dampening of θo: nothing compounded


def test_potion_max_tries_keeps_last_s(ctx, potion_imp, search):
    capped = potion_search(ctx, PotionParams(max_tries=3), *potion_imp)
    s0 = search.history[0][0]
    assert (capped.tries == 3).all() and not capped.met.any()
    np.testing.assert_allclose(capped.s, s0 * 1.1 ** 2, rtol=1e-12)
    first = potion_search(ctx, PotionParams(rho=1.0), *potion_imp)  # a <= a0 holds at once
    assert (first.tries == 1).all() and first.met.all()


def test_potion_finetune_runs(ctx):
    out = potion_finetune(ctx, PotionFinetuneParams(rho=1.0, epochs=0.5))
    assert all(torch.isfinite(v).all() for v in out.values())
    assert _acc(ctx, out, "retain").mean() > 0.9


# --- registration and validation -----------------------------------------------------------------------

def test_registered_with_summaries():
    for name in ("ssd", "ssd+finetune", "potion", "potion+finetune"):
        assert REGISTRY[name].summary


@pytest.mark.parametrize("method,field,value", [("ssd", "alpha", "0"), ("ssd", "lambda_", "-1"),
                                                ("potion", "rho", "2"), ("ssd+finetune", "epochs", "0"),
                                                ("potion+finetune", "max_tries", "0")])
def test_bad_hyperparameters_name_the_field(method, field, value):
    with pytest.raises(UnlearnkitError, match=field):
        make_hparams(method, {field: value})
