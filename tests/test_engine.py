"""The shared loop: N models trained at once must equal N models trained one by one."""
import pytest
import torch
import torch.nn.functional as F

from unlearnkit.engine import EpochStream, Forward, Optim, accumulate, fit, predict
from unlearnkit.engine.compute import bf16_fast, resolve, use
from unlearnkit.errors import Diverged, UnlearnkitError
from unlearnkit.models import build_model, init_params

SEEDS = [3, 7, 11]


def _setup(digits, family="mlp", **kw):
    forward = Forward(build_model(family, digits.input_shape, 10, **kw).to("meta"))
    init = init_params(family, digits.input_shape, 10, SEEDS, **kw)

    def loss(params, batch, frozen):
        x, y, _ = batch["train"]
        return F.cross_entropy(forward(params, x), y)
    return forward, init, loss


@pytest.mark.parametrize("optim", [Optim("sgd", 0.05, 0.9, 5e-4, "linear"), Optim("adam", 1e-3, weight_decay=1e-4)])
def test_vectorised_fit_equals_per_model_torch_optim(digits, optim):
    forward, init, loss = _setup(digits, width=32, depth=1)
    stream = EpochStream(torch.arange(len(digits.y_train)), SEEDS, 64)
    steps = 30
    stacked = fit(loss, init, {"train": stream}, (digits.x_train, digits.y_train), steps, optim)
    for i, seed in enumerate(SEEDS):
        model = build_model("mlp", digits.input_shape, 10, width=32, depth=1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(init[name][i])
        if optim.name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=0.9, nesterov=True,
                                  weight_decay=optim.weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        batches = EpochStream(torch.arange(len(digits.y_train)), [seed], 64).batches()
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = optim.lr_at(step, steps)
            idx = next(batches)[0]
            opt.zero_grad()
            F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx]).backward()
            opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(stacked[name][i], p.detach(), rtol=1e-4, atol=1e-5)


def test_model_does_not_depend_on_its_neighbours(digits):
    forward, init, loss = _setup(digits, "logreg")
    data = (digits.x_train, digits.y_train)
    pos = torch.arange(len(digits.y_train))
    both = fit(loss, init, {"train": EpochStream(pos, SEEDS, 32)}, data, 20, Optim(lr=0.1))
    alone = fit(loss, {k: v[1:2] for k, v in init.items()}, {"train": EpochStream(pos, SEEDS[1:2], 32)},
                data, 20, Optim(lr=0.1))
    for k in init:
        torch.testing.assert_close(both[k][1:2], alone[k], rtol=1e-5, atol=1e-6)


def test_update_mask_freezes_coordinates(digits):
    forward, init, loss = _setup(digits, "logreg")
    mask = {k: (torch.rand_like(v) < 0.3).float() for k, v in init.items()}
    out = fit(loss, init, {"train": EpochStream(torch.arange(100), SEEDS, 32)}, (digits.x_train, digits.y_train),
              10, Optim(lr=0.5, weight_decay=1e-2), update_mask=mask)
    for k in init:
        frozen = mask[k] == 0
        assert torch.equal(out[k][frozen], init[k][frozen])
        assert (out[k][~frozen] != init[k][~frozen]).float().mean() > 0.9


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_parameters_the_loss_does_not_use_are_left_alone(digits, name):
    """As torch.optim: a parameter without a gradient is skipped (RMU's loss never reaches later blocks)."""
    _, init, _ = _setup(digits, "mlp")

    def first_layer_only(params, batch, frozen):
        x, _, _ = batch["train"]
        return (x.flatten(1) @ params["1.weight"].T).pow(2).mean()
    out = fit(first_layer_only, init, {"train": EpochStream(torch.arange(64), SEEDS, 32)},
              (digits.x_train, digits.y_train), 4, Optim(name, lr=0.01, weight_decay=1e-3))
    assert not torch.equal(out["1.weight"], init["1.weight"])
    assert all(torch.equal(out[k], init[k]) for k in init if k != "1.weight")


def test_unit_rows_take_one_projected_step_and_stay_on_the_sphere(digits):
    """`Optim.unit_rows` (an SAE decoder's constraint): one plain SGD step equals the hand-written projected
    step w ← normalise(w − lr·(g − ⟨g, w⟩w)) per row, rows stay unit-norm over many steps, a purely radial
    gradient moves nothing, and a name the parameters lack fails in one line."""
    forward, init, loss = _setup(digits, "logreg")
    init = {**init, "1.weight": init["1.weight"] / init["1.weight"].norm(dim=-1, keepdim=True)}
    data, optim = (digits.x_train, digits.y_train), Optim(lr=0.5, momentum=0.0, unit_rows=("1.weight",))
    stream = EpochStream(torch.arange(64), SEEDS, 64)
    one = fit(loss, init, {"train": stream}, data, 1, optim)
    idx = next(stream.batches())
    for i in range(len(SEEDS)):
        w = init["1.weight"][i].clone().requires_grad_()
        batch = {"train": (data[0][idx[i]], data[1][idx[i]], idx[i])}
        loss({"1.weight": w, "1.bias": init["1.bias"][i]}, batch, {}).backward()
        g = w.grad - (w.grad * w).sum(-1, keepdim=True) * w.detach()
        step = w.detach() - 0.5 * g
        torch.testing.assert_close(one["1.weight"][i], step / step.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    many = fit(loss, init, {"train": stream}, data, 30, Optim("adam", 0.05, unit_rows=("1.weight",)))
    torch.testing.assert_close(many["1.weight"].norm(dim=-1), torch.ones(len(SEEDS), 10))
    radial = fit(lambda p, b, f: p["1.weight"].pow(2).sum() + 0 * loss(p, b, f), init, {"train": stream}, data, 5,
                 optim)
    torch.testing.assert_close(radial["1.weight"], init["1.weight"])
    with pytest.raises(UnlearnkitError, match="unit_rows names \\['W_dec'\\]"):
        fit(loss, init, {"train": stream}, data, 1, Optim(unit_rows=("W_dec",)))


def test_non_finite_loss_raises_diverged(digits):
    forward, init, _ = _setup(digits, "logreg")

    def explode(params, batch, frozen):  # ascent on squared logits grows the weights geometrically
        x, y, _ = batch["train"]
        return -(forward(params, x) ** 2).mean()
    with pytest.raises(Diverged) as err:
        fit(explode, init, {"train": EpochStream(torch.arange(50), SEEDS, 50)}, (digits.x_train, digits.y_train),
            500, Optim(lr=10.0))
    assert err.value.step < 500 and err.value.models


def test_streams_reproducible_and_cover_the_set():
    s = EpochStream(torch.arange(10, 110), [1, 2], 32)
    first = list(zip(range(s.steps_per_epoch), s.batches()))
    again = list(zip(range(s.steps_per_epoch), s.batches()))
    for (_, a), (_, b) in zip(first, again):
        assert torch.equal(a, b)
    epoch = torch.cat([b for _, b in first], dim=1)
    assert epoch.shape == (2, 100)
    assert torch.equal(epoch[0].sort().values, torch.arange(10, 110))
    assert not torch.equal(epoch[0], epoch[1])  # each model has its own order
    resumed = next(s.batches(start_epoch=1))
    assert torch.equal(resumed, s.epoch_order(1)[:, :32])


def test_predict_shapes(digits):
    forward, init, _ = _setup(digits, "logreg")
    logits = predict(forward, init, digits.x_val, chunk=100)
    assert logits.shape == (len(SEEDS), len(digits.y_val), 10)


def test_accumulate_sums_each_models_own_batches(digits):
    """`accumulate` (the measurements methods take: importances, saliency) is, per model, the sum over one epoch
    of that model's own batches of the one-model function, and the number of batches (a partial last one
    counts); in float32 on the CPU even when the run trains in bf16."""
    forward, init, _ = _setup(digits, width=16, depth=1)
    positions = torch.arange(100)
    stream = EpochStream(positions, SEEDS, 32)  # 100 = 3 × 32 + 4: four batches

    def squared_grad(p, x, y):
        return {k: g.square() for k, g in torch.func.grad(lambda q: F.cross_entropy(forward(q, x), y))(p).items()}

    with use(resolve("cpu", "bf16" if bf16_fast("cpu") else "fp32")):
        total, batches = accumulate(squared_grad, init, stream, (digits.x_train, digits.y_train))
    assert batches == 4
    for i, seed in enumerate(SEEDS):
        one = {k: v[i] for k, v in init.items()}
        expected = {k: torch.zeros_like(v) for k, v in one.items()}
        own = EpochStream(positions, [seed], 32).batches()
        for _ in range(4):
            idx = next(own)[0]
            for k, g in squared_grad(one, digits.x_train[idx], digits.y_train[idx]).items():
                expected[k] += g
        for k in expected:
            assert total[k].dtype == torch.float32 and total[k].device.type == "cpu"
            torch.testing.assert_close(total[k][i], expected[k], rtol=1e-5, atol=1e-7)


def test_flops_are_counted_exactly_from_the_first_step(digits):
    """The loop books steps after the first by example count: partial batches included, the total equals
    a hand count (logreg: forward 2·64·10 and weight-gradient 2·64·10 FLOPs per example)."""
    from torch.utils.flop_counter import FlopCounterMode
    forward, init, loss = _setup(digits, "logreg")
    stream = EpochStream(torch.arange(len(digits.y_train)), SEEDS, 64)  # 1348 = 21·64 + 4: a partial batch
    with FlopCounterMode(display=False) as counter:
        fit(loss, init, {"train": stream}, (digits.x_train, digits.y_train), 2 * stream.steps_per_epoch, Optim())
    assert counter.get_total_flops() == pytest.approx(4 * 64 * 10 * 2 * len(digits.y_train) * len(SEEDS))
