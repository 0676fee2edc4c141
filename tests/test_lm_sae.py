"""SAE concept unlearning (`lm.sae`, method "sae-clamp") on tofu-synth-tiny's two original models."""
import numpy as np
import pytest
import torch

import unlearnkit.methods.lm.sae_clamp  # noqa: F401  (registers "sae-clamp" until methods/lm/__init__ imports it)
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig
from unlearnkit.lm.evaluate import answer_seq
from unlearnkit.lm.model import LMForward
from unlearnkit.lm.sae import (
    PREFIX,
    ClampedForward,
    residual_acts,
    sae_entries,
    sae_stats,
    split_sae,
    train_sae,
)
from unlearnkit.lm.steering import answers_for
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm.tokenizer import encode_items, special_ids
from unlearnkit.lm.train import train_lm_models
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY, LMContext
from unlearnkit.zoo import ORIGINAL_SEEDS, ZooCache, arm_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

SEED, N = 0, 2


@pytest.fixture(scope="module")
def setup(tiny_lm_cache):
    """The originals of the `bench` fixture of test_lm_methods.py (RunConfig(task="tofu-synth-tiny",
    forget="authors:0.1", models=2)): the same zoo entry, without the oracles this file does not need."""
    task = get_lm_task("tofu-synth-tiny")
    d = load_tofu(task)
    everything = np.arange(len(d.items))
    forget = d.forget_positions("authors:0.1", SEED)
    retain = np.setdiff1d(everything, forget)
    cache = ZooCache(tiny_lm_cache)
    seeds = arm_seeds(ORIGINAL_SEEDS, N, SEED)
    originals = train_lm_models(d.config, d.tensors, torch.as_tensor(everything), seeds, task.recipe, cache,
                                "originals").params
    forward = LMForward(d.config)
    pad, eos = special_ids(d.tok)
    ctx = LMContext(task, d, forward, originals, forget, retain, seeds, SEED, cache, tokens=d.tensors, items=d.items,
                    tok=d.tok, pad_id=pad, eos_id=eos, lm_config=d.config, recipe=task.recipe, max_len=task.max_len)
    return {"task": task, "data": d, "ctx": ctx, "forward": forward, "originals": originals, "forget": forget,
            "retain_items": [d.items[p] for p in d.retain_sample(retain, SEED)], "pad": pad}


@pytest.fixture(scope="module")
def unlearned(setup):
    hp = make_hparams("sae-clamp", {}, LM_REGISTRY)
    return hp, LM_REGISTRY["sae-clamp"].fn(setup["ctx"], hp)


def _heldout_acts(setup):
    d = setup["data"]
    ids = encode_items(d.tok, d.holdout, setup["task"].max_len)[0]
    return residual_acts(setup["forward"], setup["originals"], ids, 1, setup["pad"])


def test_the_sae_reconstructs_held_out_tokens_sparsely(setup, unlearned):
    """TopK (the default) and ReLU + L1: explained variance > 0.5 on tokens of held-out authors never trained
    on, L0 far below the 256-feature dictionary."""
    hp, out = unlearned
    _, sae = split_sae(out)
    held = _heldout_acts(setup)
    st = sae_stats(sae, held, hp.k)
    assert sae["W_dec"].shape == (N, 4 * 64, 64)
    torch.testing.assert_close(sae["W_dec"].norm(dim=-1), torch.ones(N, 256))       # unit-norm decoder rows
    assert (st.explained_variance > 0.5).all(), st
    assert (st.l0 <= hp.k).all() and (st.l0 > 0).all(), st
    relu = train_sae(residual_acts(setup["forward"], setup["originals"], setup["data"].tensors[0], 1, setup["pad"]),
                     kind="relu", l1=2.0, steps=600, seed=[1, 2])
    st = sae_stats(relu, held)
    assert (st.explained_variance > 0.5).all() and (st.l0 < 256 / 8).all(), st


def test_nothing_clamped_is_exactly_the_original_forward(setup, unlearned):
    """With the mask empty the hook still runs (encode, clamp, h + 0·W_dec) and the logits are bit-identical:
    the SAE's reconstruction error is kept, not replaced by its reconstruction."""
    hp, out = unlearned
    _, sae = split_sae(out)
    ids = setup["data"].tensors[0][:40]
    idle = {**setup["originals"], **sae_entries(sae, torch.zeros(N, 256, dtype=torch.bool), torch.zeros(N, 256), 1,
                                                hp.k)}
    fw = ClampedForward.from_params(setup["forward"], idle)
    plain = torch.vmap(setup["forward"], in_dims=(0, None))(setup["originals"], ids)
    assert torch.equal(torch.vmap(fw, in_dims=(0, None))(idle, ids), plain)
    assert torch.equal(torch.vmap(fw, in_dims=(0, None))(setup["originals"], ids), plain)  # no sae.* keys
    from_config = ClampedForward(setup["data"].config, layer=1, k=hp.k)  # its own GPT-2 template
    assert torch.equal(torch.vmap(from_config, in_dims=(0, None))(idle, ids), plain)
    block = setup["forward"].blocks[0]
    assert not block._forward_hooks  # the hook lives for one call only


def test_clamping_forget_features_hurts_forget_answers_more_than_retained_ones(setup, unlearned):
    hp, out = unlearned
    d, max_len = setup["data"], setup["task"].max_len
    forget_items = [d.items[p] for p in setup["forget"]]
    fw = ClampedForward.from_params(setup["forward"], out)

    def prob(forward, params, items):
        return float(np.exp(answer_seq(forward, params, d.tok, items, max_len)).mean())

    before = {"forget": prob(setup["forward"], setup["originals"], forget_items),
              "retain": prob(setup["forward"], setup["originals"], setup["retain_items"])}
    after = {"forget": prob(fw, out, forget_items), "retain": prob(fw, out, setup["retain_items"])}
    drop = {k: before[k] - after[k] for k in before}
    print(f"answer probability before {before}, after {after}")
    assert drop["forget"] > 0.3 and drop["forget"] > 2.5 * drop["retain"], (before, after)
    assert int(out[PREFIX + "mask"].sum()) == N * hp.n_features

    # generation goes through the clamp too; with nothing clamped it is the plain greedy decoder's
    pad, eos = special_ids(d.tok)
    questions = [qa.question for qa in forget_items[:6]]
    module = LMForward(d.config).module
    plain = answers_for(module, setup["originals"], d.tok, questions, 24, pad, eos)
    silent = {**out, PREFIX + "mask": torch.zeros_like(out[PREFIX + "mask"])}  # an SAE that clamps nothing
    assert answers_for(module, silent, d.tok, questions, 24, pad, eos) == plain
    clamped = answers_for(module, out, d.tok, questions, 24, pad, eos)  # through the clamp (lm.steering)
    assert clamped != plain and not module.transformer.h[0]._forward_hooks


def test_the_language_model_weights_are_untouched(setup, unlearned):
    _, out = unlearned
    lm, sae = split_sae(out)
    assert lm.keys() == setup["originals"].keys()
    assert all(torch.equal(lm[k], setup["originals"][k]) for k in lm)
    assert set(sae) == {"W_enc", "b_enc", "W_dec", "b_dec", "mask", "clamp", "layer", "k"}
    assert all(v.shape[0] == N for v in sae.values())


def test_a_layer_out_of_range_fails_in_one_line_before_training(setup, tmp_path, monkeypatch):
    hp = make_hparams("sae-clamp", {"layer": "2"}, LM_REGISTRY)
    with pytest.raises(UnlearnkitError) as err:
        hp.check_setting(setup["task"], setup["data"], setup["forget"], SEED)
    assert "sae-clamp.layer=2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnlearnkitError, match=r"SAE layer must be in \[1, 1\]"):
        ClampedForward(setup["forward"], layer=0)
    with pytest.raises(UnlearnkitError, match="layer"):
        make_hparams("sae-clamp", {"layer": "0"}, LM_REGISTRY)

    # through the run: refused before any model or SAE is trained
    import unlearnkit.lm_experiment as experiment
    import unlearnkit.methods.lm.sae_clamp as sae_clamp

    def tripwire(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "train_lm_models", tripwire)
    monkeypatch.setattr(sae_clamp, "train_sae", tripwire)
    config = RunConfig(task="tofu-synth-tiny", forget="authors:0.1", models=2, bootstrap=0, methods=("sae-clamp",),
                       hparams=(("sae-clamp", "layer", "2"),), cache_dir=str(tmp_path))
    with pytest.raises(UnlearnkitError) as err:
        experiment.run_lm(config)
    assert "sae-clamp.layer=2" in str(err.value) and "\n" not in str(err.value)


def test_a_seed_fixes_the_sae(setup):
    acts = residual_acts(setup["forward"], setup["originals"], setup["data"].tensors[0][:80], 1, setup["pad"])
    a, b = (train_sae(acts, steps=60, seed=[3, 4]) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_sae(acts, steps=60, seed=[3, 5])
    assert torch.equal(c["W_dec"][0], a["W_dec"][0]) and not torch.equal(c["W_dec"][1], a["W_dec"][1])
