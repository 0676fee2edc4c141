"""LAF and LAF+R (Shen et al. 2024): the VAE's and the alignment's formulas, no labels read, the head untouched
by LAF and alone touched by its repair, and forgetting that leaves the rest of the task standing."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from unlearnkit.engine import predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import Bench, RunConfig, prepare
from unlearnkit.methods import Context, get_method, make_hparams
from unlearnkit.methods.laf import alignment_loss, squashed_error, vae_init, vae_objective
from unlearnkit.tasks import get_task


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Two digits MLPs, class 3 forgotten (LAF's class-removal setting)."""
    config = RunConfig(task="digits-mlp", forget="class:3", methods=("none",), models=2,
                       cache_dir=str(tmp_path_factory.mktemp("laf")), bootstrap=0)
    bench = Bench(prepare(config))
    p = bench.p
    return Context(p.task, p.dataset, bench.forward, bench.originals.params, bench.forget.positions, bench.retain,
                   [0, 1], 0, p.cache)


def test_forward_embed_is_what_the_head_reads(ctx):
    params = {k: v[0] for k, v in ctx.originals.items()}
    x = ctx.dataset.x_train[:5]
    hidden = F.relu(x.flatten(1) @ params["1.weight"].T + params["1.bias"])
    torch.testing.assert_close(ctx.forward.embed(params, x), hidden)
    assert ctx.forward.head_names == {"3.weight", "3.bias"}
    torch.testing.assert_close(F.linear(hidden, params["3.weight"], params["3.bias"]), ctx.forward(params, x))


def test_vae_objective_and_scores_equal_their_formulas():
    """Reference Train.vae_loss_function: ‖ê − e‖² (summed over features) + 0.025·KL(N(μ, σ²) ‖ N(0, I)),
    averaged over the batch; LAF's score exp(m/(m+1)) of the reconstruction error m."""
    torch.manual_seed(1)
    p = {k: v[0] for k, v in vae_init(4, 2, [7]).items()}
    e, eps = torch.randn(3, 4), torch.randn(3, 2)

    def layer(name, h):
        return h @ p[f"{name}.weight"].T + p[f"{name}.bias"]
    h = layer("enc2", layer("enc1", e).clamp(min=0)).clamp(min=0)
    mu, sigma = layer("mu", h), layer("logvar", h).mul(0.5).exp()
    e_hat = layer("dec3", layer("dec2", layer("dec1", mu + sigma * eps).clamp(min=0)).clamp(min=0))
    m = ((e_hat - e) ** 2).sum(1)
    kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(vae_objective(p, e, eps, 0.025), (m + 0.025 * kl).mean())
    torch.testing.assert_close(squashed_error(p, e, eps), torch.exp(m / (m + 1)))
    assert ((squashed_error(p, e, eps) >= 1) & (squashed_error(p, e, eps) < torch.e)).all()


def test_alignment_loss_equals_its_formula():
    """Reference extractor_loss_functioncosine: Σ_r log(exp(d_r) / Σ_f exp(d_f/τ)), d = 1 − cos."""
    torch.manual_seed(2)
    e_r, t_r, e_f, t_f = torch.randn(4, 6), torch.randn(4, 6), torch.randn(3, 6), torch.randn(3, 6)

    def d(a, b):
        return 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    expected = sum(torch.log(torch.exp(d(e_r, t_r)[i]) / torch.exp(d(e_f, t_f) / 5.0).sum()) for i in range(4))
    torch.testing.assert_close(alignment_loss(e_r, t_r, e_f, t_f, 5.0), expected)
    # aligned retain embeddings and opposite forget ones are what it rewards
    assert alignment_loss(t_r, t_r, -t_f, t_f, 5.0) < alignment_loss(e_r, t_r, e_f, t_f, 5.0)


def test_laf_reads_no_labels_and_its_repair_touches_only_the_head(ctx):
    """LAF is supervision-free: garbage training labels give the same models, bit for bit. Its losses see
    only embeddings, so the head stays the original's; LAF+R then trains the head alone, with labels."""
    garbage = dataclasses.replace(ctx.dataset, y_train=torch.zeros_like(ctx.dataset.y_train))
    blind = dataclasses.replace(ctx, dataset=garbage)
    small = {"vae_epochs": 1, "vae_min_steps": 0, "epochs": 2}
    laf, laf_blind = (get_method("laf").fn(c, make_hparams("laf", small)) for c in (ctx, blind))
    for k in laf:
        assert torch.equal(laf[k], laf_blind[k])
    head = ctx.forward.head_names
    assert all(torch.equal(laf[k], ctx.originals[k]) for k in head)
    assert not all(torch.equal(laf[k], ctx.originals[k]) for k in laf)  # the extractor moved
    repaired, repaired_blind = (get_method("laf+r").fn(c, make_hparams("laf+r", small)) for c in (ctx, blind))
    for k in laf:
        assert torch.equal(repaired[k], laf[k]) == (k not in head)
    assert not torch.equal(repaired["3.weight"], repaired_blind["3.weight"])  # the repair does read labels


def test_laf_forgets_a_class_and_keeps_the_others(ctx):
    """Class removal (the paper's Table 1 setting, stronger steps for a short run): the forget class's
    training accuracy falls far below the originals', validation accuracy on the other classes stays."""
    ds = ctx.dataset
    out = get_method("laf").fn(ctx, make_hparams("laf", {"vae_epochs": 3, "vae_min_steps": 300, "epochs": 10,
                                                         "lr_ue": 5e-4, "lr_ra": 1e-3}))

    def acc(params, x, y):
        return (predict(ctx.forward, params, x).argmax(-1) == y).float().mean(1)
    x_f, y_f = ds.x_train[ctx.forget], ds.y_train[ctx.forget]
    others = ds.y_val != 3
    assert (acc(ctx.originals, x_f, y_f) > 0.95).all()
    assert (acc(out, x_f, y_f) < 0.5).all()
    assert (acc(out, ds.x_val[others], ds.y_val[others]) > acc(ctx.originals, ds.x_val[others], ds.y_val[others])
            - 0.05).all()


def test_laf_refuses_a_model_without_a_feature_extractor(digits):
    with pytest.raises(UnlearnkitError, match="feature extractor"):
        make_hparams("laf").check_setting(get_task("digits-logreg"), digits, None, 0)
    with pytest.raises(UnlearnkitError, match="repair_epochs"):
        make_hparams("laf+r", {"repair_epochs": "0"})
