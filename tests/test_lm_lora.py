"""LoRA adapters (PEFT) for language-model methods, and reference log-probabilities computed once."""
import pytest
import torch

from unlearnkit.engine.observe import observing
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, prepare
from unlearnkit.lm.lora import LoraForward, LoraSpec
from unlearnkit.lm.model import model_params
from unlearnkit.lm_experiment import lm_jobs
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY
from unlearnkit.methods.lm.base import forget_reference, sequence_logprob

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


def _rows(ctx, positions):
    p = torch.as_tensor(positions)
    return ctx.tokens[0][p], ctx.tokens[1][p]


def test_adapters_start_at_the_base_and_merge_into_the_same_model(bench):
    ctx = bench.context()
    lora = LoraForward(ctx.forward, LoraSpec(4))
    adapters = lora.init_adapters(ctx.seeds)
    x, _ = _rows(ctx, ctx.forget[:4])
    plain = torch.vmap(ctx.forward, in_dims=(0, None))(ctx.originals, x)
    # PEFT's init: B = 0, so the adapted models start exactly at the originals
    assert torch.equal(torch.vmap(lora, in_dims=(0, None))({**ctx.originals, **adapters}, x), plain)
    # with trained (non-zero) B, W·x + (α/r)·B·A·x computed apart equals the merged weights' forward
    g = torch.Generator().manual_seed(0)
    trained = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in adapters.items()}
    apart = torch.vmap(lora, in_dims=(0, None))({**ctx.originals, **trained}, x)
    merged = torch.vmap(ctx.forward, in_dims=(0, None))(lora.merge(ctx.originals, trained), x)
    torch.testing.assert_close(merged, apart, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)
    # the two models' adapters come from their own seeds
    a = next(k for k in adapters if "lora_A" in k)
    assert not torch.equal(adapters[a][0], adapters[a][1])
    assert LoraSpec(8).alpha == 16 and lora.size(adapters) < lora.size(ctx.originals) / 5


def test_npo_with_lora_trains_low_rank_updates_of_the_linear_layers_only(bench):
    ctx = bench.context()
    ctx.lora = LoraSpec(2)
    # adapters start at B = 0 and move W by (α/r)·B·A: LoRA wants ~10× full fine-tuning's rate (1e-3 here)
    out = LM_REGISTRY["npo"].fn(ctx, make_hparams("npo", {"epochs": "3", "lr": "1e-2"}, LM_REGISTRY))
    orig = ctx.originals
    assert out.keys() == orig.keys() and all(torch.isfinite(v).all() for v in out.values())
    lora = LoraForward(ctx.forward, ctx.lora)
    adapted = {f"{name}.weight" for name in lora.layers}
    for k in out:
        if k in adapted:  # each model's update is W_new − W of rank ≤ r
            for i in range(ctx.n_models):
                assert 0 < torch.linalg.matrix_rank(out[k][i] - orig[k][i], atol=1e-6) <= 2, k
        else:             # embeddings, norms, biases, the head: untouched
            assert torch.equal(out[k], orig[k]), k
    x, y = _rows(ctx, ctx.forget)
    before, after = (torch.vmap(lambda p: sequence_logprob(ctx.forward(p, x), y)[0])(m).mean() for m in (orig, out))
    assert after < before - 1.0


def test_a_lora_fit_is_observed_as_merged_models(bench):
    ctx = bench.context()
    ctx.lora = LoraSpec(2)
    seen = []
    with observing(lambda step, params: seen.append((step, params)), every=2, template=None):
        LM_REGISTRY["ga"].fn(ctx, make_hparams("ga", {"epochs": "1"}, LM_REGISTRY))
    assert seen and all(p.keys() == ctx.originals.keys() for _, p in seen)


def test_lora_is_refused_where_it_cannot_apply(tiny_lm_cache):
    with pytest.raises(UnlearnkitError, match="era, rmu, traced"):  # rmu: its update mask names weights, not adapters
        lm_jobs(RunConfig(task="tofu-synth-tiny", methods=("npo", "era", "rmu", "traced"), lora=4, models=2))
    assert lm_jobs(RunConfig(task="tofu-synth-tiny", methods=("none", "npo", "sae-clamp"), lora=4, models=2))
    with pytest.raises(UnlearnkitError, match="^lora must be"):
        RunConfig(task="tofu-synth-tiny", lora=-1)
    with pytest.raises(UnlearnkitError, match="language-model tasks"):
        prepare(RunConfig(task="digits-mlp", lora=4, models=2))


def test_reference_logprobs_computed_once_equal_the_live_reference_model(bench):
    ctx = bench.context()
    table = forget_reference(ctx)
    x, y = _rows(ctx, ctx.forget)
    for i in range(ctx.n_models):
        live, _ = sequence_logprob(ctx.forward(model_params(ctx.originals, i), x), y)
        torch.testing.assert_close(table[i, torch.as_tensor(ctx.forget)], live, rtol=1e-5, atol=1e-4)
    assert table[:, torch.as_tensor(ctx.retain)].abs().sum() == 0   # a table the forget batches index
    refusals = forget_reference(ctx, ctx.refusals)
    assert not torch.allclose(refusals[:, torch.as_tensor(ctx.forget)], table[:, torch.as_tensor(ctx.forget)])
