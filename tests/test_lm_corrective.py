"""Corrective unlearning on the tofu-synth GPT: ERA's token-level routing (forward unchanged, gradient
masked, Cloud et al. 2024 §3), its ablation, and the study end to end on the tiny task."""
import pytest
import torch

from unlearnkit.corrective import corrective
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig
from unlearnkit.lm.model import LMForward, init_lm_params
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.methods.lm.era import RoutedLMForward, ablate_mlp, widened_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_tofu(get_lm_task("tofu-synth-tiny"))


def _one(params, i=0):
    return {k: v[i].clone().requires_grad_(True) for k, v in params.items()}


def test_widening_keeps_the_originals_initialisation_and_ablation_gives_their_shape(tiny):
    config, seeds = tiny.config, [3, 4]
    wide, narrow = widened_params(config, seeds, [0], 16), init_lm_params(config, seeds)
    w = config.n_inner or 4 * config.n_embd
    assert wide["transformer.h.0.mlp.c_fc.weight"].shape[-1] == w + 16
    ablated = ablate_mlp(wide, [0], w)
    assert {k: v.shape for k, v in ablated.items()} == {k: v.shape for k, v in narrow.items()}
    for k in narrow:  # the original units start where the originals start
        torch.testing.assert_close(ablated[k], narrow[k], rtol=0, atol=0)


def test_routing_keeps_the_forward_and_scales_only_the_routed_tokens_gradient(tiny):
    config = tiny.config
    w = config.n_inner or 4 * config.n_embd
    fwd = RoutedLMForward(config, [0], 16, -0.75, True, pad_id=0)
    p = widened_params(config, [5], [0], 16)
    x, y = (t[:6] for t in tiny.tensors)
    grads, losses = {}, {}
    for name, route in (("plain", torch.zeros_like(x, dtype=torch.bool)), ("routed", torch.ones_like(x, dtype=torch.bool))):
        one = _one(p)
        nll, _ = fwd.routed_loss(one, x, y, route)
        losses[name] = nll.detach()
        grads[name] = dict(zip(one, torch.autograd.grad(nll, list(one.values()), allow_unused=True)))
    torch.testing.assert_close(losses["routed"], losses["plain"])  # m⊙a + (1 − m)⊙sg(a) = a
    fc = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(grads["routed"][fc][:, :w], -0.75 * grads["plain"][fc][:, :w])  # original units
    torch.testing.assert_close(grads["routed"][fc][:, w:], grads["plain"][fc][:, w:])           # added units
    # downstream of the routed activations nothing changes
    torch.testing.assert_close(grads["routed"]["transformer.ln_f.weight"], grads["plain"]["transformer.ln_f.weight"])
    assert fwd.state["route"] is None  # scoring after training sees a plain MLP


def test_silent_added_units_make_the_wide_model_the_ablated_one(tiny):
    config = tiny.config
    w = config.n_inner or 4 * config.n_embd
    p = widened_params(config, [1, 2], [0], 8)
    p["transformer.h.0.mlp.c_proj.weight"][:, w:] = 0  # the added units write nothing to the residual stream
    x = tiny.tensors[0][:4]
    wide = torch.vmap(RoutedLMForward(config, [0], 8, -0.75, True, pad_id=0), in_dims=(0, None))(p, x)
    narrow = torch.vmap(LMForward(config), in_dims=(0, None))(ablate_mlp(p, [0], w), x)
    torch.testing.assert_close(wide, narrow)


def test_lm_corrective_era_removes_what_it_routed_and_keeps_the_rest(tiny_lm_cache, tmp_path, checked_budget):
    config = RunConfig(task="tofu-synth-tiny", methods=("none", "era"), models=2, bootstrap=0, cache_dir=tiny_lm_cache)
    res = corrective(config, "authors:0.1", (0.5,), out=tmp_path / "out")
    (half,) = res["fractions"]
    assert half["identified"] == 10 and res["manipulation"]["size"] == 20
    rows = {r["label"]: r for r in half["rows"]}
    none, era = rows["none"]["probability"], rows["era"]["probability"]
    assert era["identified"] < none["identified"] / 2  # the routed knowledge went with the ablated units
    assert era["unidentified"] > era["identified"]     # what nobody identified trained as retain data
    assert rows["era"]["model_utility"] > 0.5 * rows["none"]["model_utility"]
    assert set(rows["era"]["klom_p95"]) == {"forget", "retain", "val", "identified", "unidentified"}
    assert (tmp_path / "out" / "figures" / "corrective.png").exists()
    # a rerun's estimate: every arm is cached now (ERA's widened one under its own key) and every job's cell
    # kept (keyed as each fraction's LMBench keys it): nothing to train
    budget = checked_budget(lambda: corrective(config, "authors:0.1", (0.5,)))
    assert budget.flops == budget.method_flops == 0


def test_lm_corrective_budget_counts_each_fraction_and_filters_arm(tiny, tmp_path, checked_budget):
    """Each identified fraction runs the methods again; filter retrains on D ∖ S_F, an arm of its own below
    f = 1 and the corrected oracles' at f = 1."""
    n = len(tiny.items)  # 20 forget items, 10 identified at f = 0.5

    def flops(methods, fractions):
        config = RunConfig(task="tofu-synth-tiny", methods=methods, models=2, cache_dir=str(tmp_path / "cache"))
        return checked_budget(lambda: corrective(config, "authors:0.1", fractions)).flops
    reference = flops(("none",), (1.0,))
    assert flops(("none",), (0.5, 1.0)) == reference
    assert flops(("none", "filter"), (1.0,)) == reference
    filtered = flops(("none", "filter"), (0.5, 1.0)) - reference
    assert filtered == pytest.approx(reference * (n - 10) / (n + 2 * (n - 20)))  # one more arm, on D ∖ S_F
    ga = flops(("none", "ga"), (0.5, 1.0)) - reference
    assert ga == pytest.approx(3 * (flops(("none", "ga"), (0.5,)) - reference))  # 10 then 20 forget items


@pytest.mark.parametrize("kwargs,match", [
    ({"fractions": (0.0, 1.0)}, "lie in"),
    ({"methods": ("none", "ssd")}, "unknown language-model method"),
    ({"sets": (("era", "blocks", "3"),)}, "the model has 1 blocks"),
    ({"spec": "authors:40"}, "keep one"),
])
def test_lm_corrective_bad_input_fails_before_training(tmp_path, kwargs, match):
    config = RunConfig(task="tofu-synth-tiny", methods=kwargs.get("methods", ("none", "era")), models=2,
                       hparams=kwargs.get("sets", ()), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UnlearnkitError, match=match):
        corrective(config, kwargs.get("spec", "authors:0.1"), kwargs.get("fractions", (1.0,)), out=tmp_path / "out")
    assert not (tmp_path / "cache" / "zoo").exists() or not any((tmp_path / "cache" / "zoo").iterdir())
    assert not (tmp_path / "out" / "corrective.json").exists()
