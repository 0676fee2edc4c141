"""TRAK attribution (Park et al. 2023): features, projection, estimator assembly, and behaviour on digits."""
import pytest
import torch

from unlearnkit.attribution.trak import (
    GaussianProjection,
    calibrate,
    per_example_grads,
    trak_attribution,
    trak_features,
)
from unlearnkit.engine.loop import predict
from unlearnkit.metrics.margins import margins
from unlearnkit.models import init_params
from unlearnkit.tasks import get_task
from unlearnkit.zoo import template, train_models


def _loop_grads(forward, one, x, y):
    """Per-example margin gradients by an explicit autograd loop (no vmap)."""
    rows = []
    for i in range(len(x)):
        live = {k: v.detach().clone().requires_grad_(True) for k, v in one.items()}
        m = margins(forward(live, x[i:i + 1]).unsqueeze(0), y[i:i + 1])[0, 0]
        gs = torch.autograd.grad(m, list(live.values()))
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def _spearman(a, b):
    """Spearman correlation of the columns of a and b (K, T) → (T,)."""
    ra, rb = a.argsort(0).argsort(0).double(), b.argsort(0).argsort(0).double()
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    return (ra * rb).sum(0) / (ra.norm(dim=0) * rb.norm(dim=0))


def test_projected_features_match_an_autograd_loop(digits):
    task = get_task("digits-mlp")   # 9610 parameters: three projection blocks
    forward = template(task, digits)
    params = init_params("mlp", digits.input_shape, digits.num_classes, [0, 1], **task.model_kwargs)
    one = {k: v[1] for k, v in params.items()}
    x, y = digits.x_train[:5], digits.y_train[:5]
    dim = sum(v.numel() for v in one.values())
    proj = GaussianProjection(dim, 32, seed=3, model=1)
    assert proj.n_blocks == 3 and proj._full is not None
    expected = _loop_grads(forward, one, x, y)
    grads, outs = per_example_grads(forward, one, x, y)
    torch.testing.assert_close(grads, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs, margins(predict(forward, params, x), y)[1])
    feats, outs2 = trak_features(forward, one, x, y, proj_dim=32, seed=3, model=1, chunk=2, max_proj_bytes=0)
    torch.testing.assert_close(feats, expected @ proj.matrix(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs2, outs)
    materialised, _ = trak_features(forward, one, x, y, proj_dim=32, seed=3, model=1)
    torch.testing.assert_close(materialised, feats, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("proj_dim", [16, 8])  # n_train = 12: dual (n ≤ k) and primal (n > k) solves
def test_scores_follow_the_trak_formula(digits, proj_dim):
    task = get_task("digits-logreg")
    forward = template(task, digits)
    params = init_params("logreg", digits.input_shape, digits.num_classes, [0, 1])
    x, y, xt, yt = digits.x_train[:12], digits.y_train[:12], digits.x_val[:3], digits.y_val[:3]
    ridge = 0.05
    att = trak_attribution(forward, params, x, y, xt, yt, proj_dim=proj_dim, seed=7, ridge=ridge, chunk=5)
    kernel, q, bias = 0, 0, 0
    for m in range(2):
        one = {k: v[m] for k, v in params.items()}
        proj = GaussianProjection(650, proj_dim, seed=7, model=m).matrix().double()
        phi, phi_t = _loop_grads(forward, one, x, y).double() @ proj, _loop_grads(forward, one, xt, yt).double() @ proj
        lam = ridge * phi.pow(2).sum() / proj_dim
        kernel = kernel + phi @ torch.linalg.inv(phi.T @ phi + lam * torch.eye(proj_dim, dtype=torch.float64)) @ phi_t.T
        logits = forward(one, x)
        q = q + 1 - logits.softmax(1)[torch.arange(12), y].double()
        bias = bias + margins(forward(one, xt).unsqueeze(0), yt)[0]
    expected = (kernel / 2) * (q / 2).unsqueeze(1)
    assert att.method == "trak" and att.weights.shape == (12, 3) and att.bias.shape == (3,)
    torch.testing.assert_close(att.weights, expected.float(), rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(att.bias, bias / 2, rtol=1e-5, atol=1e-5)
    masks = (torch.rand(4, 12) < 0.5).float()
    torch.testing.assert_close(att.predict(masks), masks @ att.weights + att.bias)


def test_projection_is_seeded_and_nearly_norm_preserving():
    g = torch.randn(20, 20000, generator=torch.Generator().manual_seed(0))
    a = GaussianProjection(20000, 512, seed=1, max_bytes=0)
    b = GaussianProjection(20000, 512, seed=1)
    out = a(g)
    torch.testing.assert_close(out, b(g), rtol=1e-4, atol=1e-3)  # same seed, any storage
    torch.testing.assert_close(torch.cat([a(g[:7]), a(g[7:])]), out, rtol=1e-4, atol=1e-3)  # any chunking
    assert not torch.allclose(GaussianProjection(20000, 512, seed=2)(g), out)
    assert not torch.allclose(GaussianProjection(20000, 512, seed=1, model=1)(g), out)
    ratio = out.norm(dim=1) / g.norm(dim=1)
    assert ((ratio > 0.7) & (ratio < 1.3)).all(), ratio


@pytest.fixture(scope="module")
def digits_logreg(digits):
    """3 logistic regressions on 300 digits, 20 models on random halves of them, 60 validation targets."""
    task = get_task("digits-logreg")
    gen = torch.Generator().manual_seed(0)
    n, k = 300, 20
    pos = torch.randperm(len(digits.y_train), generator=gen)[:n].sort().values
    full = train_models(task, digits, pos, seeds=[0, 1, 2])
    halves = torch.stack([torch.randperm(n, generator=gen)[:n // 2].sort().values for _ in range(k)])
    subsets = train_models(task, digits, pos[halves], seeds=list(range(100, 100 + k)))
    forward = template(task, digits)
    xt, yt = digits.x_val[:60], digits.y_val[:60]
    masks = torch.zeros(k, n).scatter_(1, halves, 1.0)
    actual = margins(predict(forward, subsets.params, xt), yt)
    att = trak_attribution(forward, full.params, digits.x_train[pos], digits.y_train[pos], xt, yt)
    return att, digits.y_train[pos], yt, masks, actual


def test_digits_same_class_examples_score_higher(digits_logreg):
    att, y_train, yt, _, _ = digits_logreg
    same = (y_train[:, None] == yt[None, :]).float()
    gap = (att.weights * same).sum(0) / same.sum(0) - (att.weights * (1 - same)).sum(0) / (1 - same).sum(0)
    assert gap.mean() > 0 and (gap > 0).float().mean() >= 0.8, gap


def test_digits_lds_is_positive_and_calibration_fits_margins(digits_logreg):
    att, _, _, masks, actual = digits_logreg
    lds = _spearman(att.predict(masks), actual).mean().item()
    print(f"TRAK LDS on digits-logreg (3 models, 300 train, 20 half-subsets, 60 targets): {lds:.3f}")
    assert lds > 0.05
    cal = calibrate(att, masks, actual)
    assert cal.method == "trak" and cal.bias.shape == att.bias.shape
    torch.testing.assert_close(_spearman(cal.predict(masks), actual).mean().item(), lds)   # a > 0 keeps ranks
    resid = (cal.predict(masks) - actual).pow(2).mean()
    assert resid < (actual - actual.mean(0)).pow(2).mean()       # explains part of the subset variance
    scaled = calibrate(type(att)(att.weights * 5, att.bias, att.method), masks, actual)
    torch.testing.assert_close(scaled.weights, cal.weights, rtol=1e-4, atol=1e-7)   # scale-free


def test_bad_input_is_rejected(digits):
    task = get_task("digits-logreg")
    forward = template(task, digits)
    params = init_params("logreg", digits.input_shape, digits.num_classes, [0])
    x, y = digits.x_train[:10], digits.y_train[:10]
    with pytest.raises(ValueError, match="feature shape"):
        trak_attribution(forward, params, x, y, x[:, :63], y)
    with pytest.raises(ValueError, match="proj_dim"):
        trak_attribution(forward, params, x, y, x, y, proj_dim=0)
    with pytest.raises(ValueError, match="labels"):
        trak_attribution(forward, params, x, y[:9], x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        trak_attribution(forward, params, x, y + 10, x, y)
    with pytest.raises(ValueError, match="ridge"):
        trak_attribution(forward, params, x, y, x, y, ridge=-1.0)
    with pytest.raises(ValueError, match="proj_dim"):
        GaussianProjection(10, 0)
    att = trak_attribution(forward, params, x, y, x[:2], y[:2], proj_dim=4)
    with pytest.raises(ValueError, match="masks"):
        calibrate(att, torch.ones(3, 9), torch.zeros(3, 2))
