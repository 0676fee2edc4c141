"""IAU (Liu et al. 2025): the gradient restriction and the one-step update against their formulas, the restricted
recipe's own cache keys, and unlearning that lowers the forget set's margins."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.engine import Forward, predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import Bench, RunConfig, prepare
from unlearnkit.methods import Context, get_method, make_hparams
from unlearnkit.methods.iau import influence_step, restricted
from unlearnkit.metrics import accuracy, margins
from unlearnkit.tasks import Recipe, get_task
from unlearnkit.zoo import ORACLE_SEEDS, arm_seeds, cross_entropy_loss, zoo_key


def test_gradient_restriction_equals_its_formula():
    """ℓ_GR = ℓ + α‖∇_θ ℓ‖₂ on a linear softmax model, the gradient written out by hand:
    ∇_W ℓ = (p − onehot(y))ᵀ x / B and ∇_b ℓ = mean(p − onehot(y)); and the engine's gradient of it is
    autograd's double backpropagation."""
    torch.manual_seed(0)
    forward = Forward(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)).to("meta"))
    w, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    alpha = 0.3
    residual = torch.softmax(x @ w.T + b, -1) - F.one_hot(y, 3)
    grad_norm = torch.cat([(residual.T @ x / 7).flatten(), residual.mean(0)]).norm()
    ce = F.cross_entropy(x @ w.T + b, y)
    params = {"1.weight": w.clone().requires_grad_(), "1.bias": b.clone().requires_grad_()}
    value = cross_entropy_loss(forward, alpha)(params, {"train": (x, y, None)}, {})
    torch.testing.assert_close(value, (ce + alpha * grad_norm).float().to(value.dtype), rtol=1e-6, atol=1e-6)
    assert value > cross_entropy_loss(forward)(params, {"train": (x, y, None)}, {}) + 0.1 * alpha * grad_norm

    value.backward()
    w2, b2 = w.clone().requires_grad_(), b.clone().requires_grad_()
    inner = F.cross_entropy(x @ w2.T + b2, y)
    gw, gb = torch.autograd.grad(inner, (w2, b2), create_graph=True)
    dw, db = torch.autograd.grad(inner + alpha * torch.cat([gw.flatten(), gb]).norm(), (w2, b2))
    torch.testing.assert_close(params["1.weight"].grad, dw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params["1.bias"].grad, db, rtol=1e-5, atol=1e-6)


def test_the_restricted_recipe_has_keys_of_its_own_and_the_plain_recipe_keeps_its(digits):
    task = get_task("digits-mlp")
    assert "grad_penalty" not in task.describe()["recipe"]  # plain arms cached before the field keep their keys
    seeds, everything = [0, 1], torch.arange(len(digits.y_train))
    plain = zoo_key(task, digits, everything, seeds)
    assert zoo_key(restricted(task, 0.0), digits, everything, seeds) == plain
    assert zoo_key(restricted(task, 0.005), digits, everything, seeds) != plain
    assert zoo_key(restricted(task, 0.005), digits, everything, seeds) != zoo_key(restricted(task, 0.01), digits,
                                                                                    everything, seeds)
    with pytest.raises(UnlearnkitError, match="grad_penalty"):
        Recipe(grad_penalty=-1.0)
    with pytest.raises(UnlearnkitError, match="iau.alpha"):
        make_hparams("iau", {"alpha": "-0.1"})


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    config = RunConfig(task="digits-mlp", forget="random:30", methods=("none",), models=2,
                       cache_dir=str(tmp_path_factory.mktemp("iau")), bootstrap=0)
    bench = Bench(prepare(config))
    p = bench.p
    return Context(p.task, p.dataset, bench.forward, bench.originals.params, bench.forget.positions, bench.retain,
                   [0, 1], 0, p.cache)


def test_one_step_update_equals_its_formula(ctx):
    """The reference's unlearning: one fresh Adam step at lr on mean-CE(S_R) − mean-CE(S_F), both full
    batches: θ − lr·g/(|g| + 1e-8), g = ∇L(S_R) − ∇L(S_F), per model and coordinate."""
    ds, lr = ctx.dataset, 1e-3
    x_r, y_r, x_f, y_f = ds.x_train[ctx.retain], ds.y_train[ctx.retain], ds.x_train[ctx.forget], ds.y_train[ctx.forget]

    def objective(p):
        return F.cross_entropy(ctx.forward(p, x_r), y_r) - F.cross_entropy(ctx.forward(p, x_f), y_f)
    stepped = influence_step(ctx, ctx.originals, lr)
    for i in range(ctx.n_models):
        theta = {k: v[i] for k, v in ctx.originals.items()}
        g = torch.func.grad(objective)(theta)
        for k in theta:
            torch.testing.assert_close(stepped[k][i], theta[k] - lr * g[k] / (g[k].abs() + 1e-8), rtol=1e-5,
                                       atol=1e-7)


def test_iau_lowers_forget_margins_and_is_judged_against_its_own_oracles(ctx):
    """The step ascends the forget loss and descends the retain loss: forget margins fall below those of the
    deployed (restricted) models, by more than retain margins do; validation accuracy stands."""
    result = get_method("iau").fn(ctx, make_hparams("iau"))
    assert result.reference == "iau-oracles"
    ds = ctx.dataset
    everything = torch.arange(len(ds.y_train))
    deployed = ctx.train_from_scratch(everything, ctx.seeds, "iau originals", restricted(ctx.task, 0.005))  # cached
    x, y = ds.x_train, ds.y_train
    drop = margins(predict(ctx.forward, deployed, x), y) - margins(result.logits(x), y)
    forget_drop, retain_drop = drop[:, ctx.forget].mean(1), drop[:, ctx.retain].mean(1)
    assert (forget_drop > 0).all() and (forget_drop > retain_drop + 0.02).all(), (forget_drop, retain_drop)
    assert (accuracy(result.logits(ds.x_val), ds.y_val) > 0.9).all()
    # its oracles are the restricted recipe's, not the bench's plain ones
    plain_oracles = ctx.train_from_scratch(ctx.retain, arm_seeds(ORACLE_SEEDS, 2), "oracles")
    assert not torch.allclose(result.oracle_logits(ds.x_val), predict(ctx.forward, plain_oracles, ds.x_val))
    assert ctx.uncharged_flops > 0
