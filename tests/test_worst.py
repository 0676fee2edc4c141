"""Hard-to-unlearn forget sets: Fan et al.'s bi-level worst case (forget/worst.py) and its proxies."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from unlearnkit.cli import cli
from unlearnkit.engine import EpochStream, Forward, Optim, fit
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import ForgetResources, RunConfig, prepare
from unlearnkit.forget import KINDS, build_forget_set
from unlearnkit.forget.worst import (
    SELECTION,
    memorisation,
    per_example_losses,
    project,
    top_k,
    unlearn_weighted,
)
from unlearnkit.models import build_model, init_params
from unlearnkit.zoo import template

HARD = ("worst", "easy", "lowest-loss", "memorised", "influence")
K = 20


def _exact_projection(a: np.ndarray, k: float) -> np.ndarray:
    """The projection onto {w ∈ [0,1]^n, Σw = k} by sorting: Σ clip(a − μ, 0, 1) is piecewise linear and
    decreasing in μ with kinks at a_i and a_i − 1; find the piece where it equals k and interpolate."""
    kinks = np.unique(np.concatenate([a, a - 1]))

    def total(mu):
        return np.clip(a - mu, 0, 1).sum()
    values = np.array([total(mu) for mu in kinks])  # decreasing along increasing kinks
    j = np.flatnonzero(values >= k).max()
    if values[j] == k or j == len(kinks) - 1:
        mu = kinks[j]
    else:
        lo, hi = kinks[j], kinks[j + 1]
        mu = lo + (values[j] - k) / (values[j] - values[j + 1]) * (hi - lo)
    return np.clip(a - mu, 0, 1)


@pytest.mark.parametrize("n, k", [(7, 1), (7, 3), (7, 6), (12, 2.5), (50, 10)])
def test_projection_is_the_capped_simplex_projection(n, k):
    g = torch.Generator().manual_seed(n)
    for scale in (0.3, 3.0):
        a = torch.randn(n, generator=g, dtype=torch.float64) * scale + 0.5
        w = project(a, k)
        assert abs(float(w.sum()) - k) < 1e-9
        assert float(w.min()) >= 0 and float(w.max()) <= 1
        torch.testing.assert_close(project(w, k), w, atol=1e-9, rtol=0)           # a projection is idempotent
        np.testing.assert_allclose(w.numpy(), _exact_projection(a.numpy(), k), atol=1e-9)
        # it is the nearest point: no feasible point of a random sample is closer to a
        for _ in range(20):
            other = project(torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5, k)
            assert float((other - a).norm()) >= float((w - a).norm()) - 1e-12
    with pytest.raises(ValueError):
        project(torch.zeros(3), 4)


def test_top_k_binarises_largest_weights_with_deterministic_ties():
    w = np.array([0.2, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert top_k(w, 3).tolist() == [1, 2, 3]                       # tie at 0.5: the earlier position
    assert top_k(w, 3, then=[0, 0, 0, 0, 0, 1]).tolist() == [1, 3, 5]  # ... unless `then` breaks it
    assert top_k(w, 2, then=[0, 0, 0, 0, 0, 1]).tolist() == [1, 3]
    binary = np.zeros(6)
    binary[top_k(project(torch.tensor(w), 3).numpy(), 3)] = 1      # the projection keeps the order
    assert binary.tolist() == [0, 1, 1, 1, 0, 0]


def test_sign_sgd_moves_every_weight_by_the_step_against_its_gradient(digits):
    forward = Forward(build_model("logreg", digits.input_shape, 10).to("meta"))
    init = init_params("logreg", digits.input_shape, 10, [1, 2])

    def loss(p, batch, frozen):
        x, y, _ = batch["train"]
        return F.cross_entropy(forward(p, x), y)
    stream = EpochStream(torch.arange(64), [1, 2], 64)
    out = fit(loss, init, {"train": stream}, (digits.x_train, digits.y_train), 1, Optim("sign", 0.01, 0.9, 0.1))
    for i in range(2):
        one = {k: v[i].clone().requires_grad_(True) for k, v in init.items()}
        F.cross_entropy(forward(one, digits.x_train[:64]), digits.y_train[:64]).backward()
        for k in init:   # momentum and weight decay play no part (the reference's sign_step)
            torch.testing.assert_close(out[k][i], init[k][i] - 0.01 * one[k].grad.sign())


def test_memorisation_is_correctness_in_minus_out():
    masks = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 1.0]])
    margins = torch.tensor([[2.0, -1, 3, 9], [1, 1, -2, 9], [-1, 2, 1, 9], [-3, -1, 2, 9]])  # 4th column: val
    score, gap = memorisation(masks, margins)
    # example 0: correct on both models that saw it, on neither of the two that did not → 1 − 0
    # example 1: in (models 1, 2) correct 2/2; out (0, 3) 0/2 → 1; example 2: in 3/3 correct, out 0/1 → 1
    torch.testing.assert_close(score, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(gap, torch.tensor([1.5 - (-2.0), 1.5 - (-1.0), 2.0 - (-2.0)], dtype=torch.float64))
    assert torch.isnan(memorisation(torch.ones(2, 1), torch.ones(2, 1))[0]).all()  # never left out: unknown


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each hard kind at K = 20 on digits-mlp, N = 2 (one cache for all: the originals and subset models
    are trained once)."""
    cache = str(tmp_path_factory.mktemp("hard-cache"))
    out = {}
    for kind in HARD:
        config = RunConfig(task="digits-mlp", forget=f"{kind}:{K}", models=2, cache_dir=cache, datamodel_models=10,
                           methods=("none",))
        out[kind] = prepare(config)
    return out


def test_each_kind_returns_k_distinct_valid_positions(built):
    sets = {}
    for kind, p in built.items():
        fs = p.forget
        n = len(p.dataset.y_train)
        assert len(fs) == K and len(np.unique(fs.positions)) == K and fs.positions.min() >= 0 and fs.positions.max() < n
        assert np.array_equal(fs.ids, p.dataset.train_ids[fs.positions].numpy())
        sets[kind] = set(fs.positions.tolist())
    assert sets["worst"] != sets["easy"] and not sets["lowest-loss"] & sets["easy"]


def test_proxies_rank_what_they_say(built):
    p = built["lowest-loss"]
    res = ForgetResources(p.config, p.task, p.dataset, p.cache)
    losses = res.original_losses()
    chosen = np.isin(np.arange(len(losses)), p.forget.positions)
    assert losses[chosen].max() <= losses[~chosen].min()
    dm = res.datamodels()
    n = len(p.dataset.y_train)
    torch.testing.assert_close(dm.self_influence()[:50], dm.target_weights(np.arange(50)).diagonal()[:50])
    infl = dm.self_influence()
    chosen = np.isin(np.arange(n), built["influence"].forget.positions)
    assert infl[chosen].min() >= infl[~chosen].max()


def test_worst_set_is_harder_to_unlearn_than_a_random_set_and_the_easy_set(built):
    """The paper's objective on held-out rounds of its own lower level: after sign-SGD fine-tuning on the
    rest, the worst set keeps a lower loss than random:K from the same seed, and the easy set a higher one."""
    p = built["worst"]
    ds = p.dataset
    res = ForgetResources(p.config, p.task, ds, p.cache)
    forward = template(p.task, ds)
    params, seeds = res.originals(), res.seeds()
    random = build_forget_set(f"random:{K}", ds, p.config.seed).positions

    def after_unlearning(positions):
        keep = torch.ones(len(ds.y_train), dtype=torch.float64)
        keep[torch.as_tensor(positions)] = 0
        rounds = []
        for r in (50, 51):  # minibatch orders the search never used
            unlearned = unlearn_weighted(forward, params, (ds.x_train, ds.y_train), keep, seeds,
                                         p.task.recipe.batch_size, SELECTION, r)
            rounds.append(per_example_losses(forward, unlearned, ds.x_train, ds.y_train)[:, positions].mean())
        return float(torch.stack(rounds).mean())
    worst, rand, easy = (after_unlearning(s) for s in (p.forget.positions, random, built["easy"].forget.positions))
    assert worst < rand < easy, (worst, rand, easy)
    assert worst < 0.5 * rand and easy > 5 * rand


def test_deterministic_from_the_seed_and_cached(built, monkeypatch):
    p = built["worst"]
    config = p.config
    monkeypatch.setattr("unlearnkit.forget.worst.bilevel_weights", lambda *a, **k: pytest.fail("not cached"))
    assert np.array_equal(prepare(config).forget.positions, p.forget.positions)       # loaded from the cache
    monkeypatch.undo()
    fresh = prepare(RunConfig(**{**config.__dict__, "cache_dir": ""}))                   # computed again, no cache
    assert np.array_equal(fresh.forget.positions, p.forget.positions)
    other = prepare(RunConfig(**{**config.__dict__, "cache_dir": "", "seed": 1}))
    assert not np.array_equal(other.forget.positions, p.forget.positions)


class _Untouchable:
    """Resources that fail the test if a spec reaches for them: bad K must be refused first."""

    def __getattr__(self, name):
        pytest.fail(f"a bad spec reached resources.{name}")


@pytest.mark.parametrize("kind", HARD)
@pytest.mark.parametrize("arg, needle", [
    ("0", "K must be in [1, 1347]"),
    ("1348", "the training set has 1348"),
    ("5000", "asks for 5000 examples; the training set has 1348"),
    ("-5", "K must be a whole number without a decimal point"),
    ("1.5", "K must be a whole number without a decimal point"),
    ("0.1", "K must be a whole number without a decimal point"),
    ("ten", "K must be a whole number without a decimal point"),
    ("10:3", "takes {kind}:K"),
])
def test_bad_k_is_refused_before_anything_is_trained(digits, kind, arg, needle):
    with pytest.raises(UnlearnkitError) as err:
        build_forget_set(f"{kind}:{arg}", digits, 0, _Untouchable())
    assert needle.format(kind=kind) in str(err.value)


def test_bad_k_through_a_run_trains_nothing(tmp_path):
    with pytest.raises(UnlearnkitError, match="asks for 99999 examples"):
        prepare(RunConfig(task="digits-mlp", forget="worst:99999", models=2, cache_dir=str(tmp_path)))
    assert not list((tmp_path / "zoo").glob("*/models.safetensors"))


def test_list_shows_the_new_kinds():
    out = CliRunner().invoke(cli, ["list"]).output
    for kind in HARD:
        assert kind in KINDS and f"  {kind:<16} {kind}:K" in out
