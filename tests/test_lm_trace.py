"""Causal tracing (ROME) of tofu-synth facts, and `traced`: unlearning in the traced MLPs only (SHA256)."""
import dataclasses

import numpy as np
import pytest
import torch

from unlearnkit.errors import UnlearnkitError
from unlearnkit.lm.model import LMForward, mean_token_logprob, token_logprobs
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm.tokenizer import special_ids
from unlearnkit.lm.trace import (
    KINDS,
    answer_probability,
    causal_trace,
    mlp_parameter_names,
    subject_span,
    subject_tokens,
)
from unlearnkit.lm.train import train_lm_models
from unlearnkit.lm_trace import format_trace
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY, LMContext
from unlearnkit.methods.lm import traced as traced_module  # noqa: F401  (registers "traced")
from unlearnkit.methods.lm.traced import adaptive_alpha
from unlearnkit.zoo import ORIGINAL_SEEDS, ZooCache, arm_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

# tofu-synth-tiny's data with a 2-block GPT-2 (the tiny task has one block: nothing to choose between)
TINY = get_lm_task("tofu-synth-tiny")
TWO_BLOCKS = dataclasses.replace(TINY, n_layer=2, recipe=dataclasses.replace(TINY.recipe, epochs=15))
SEEDS = arm_seeds(ORIGINAL_SEEDS, 2, 0)


@pytest.fixture(scope="module")
def lm(tiny_lm_cache):
    data = load_tofu(TWO_BLOCKS)
    arm = train_lm_models(data.config, data.tensors, torch.arange(len(data.items)), SEEDS, TWO_BLOCKS.recipe,
                          ZooCache(tiny_lm_cache), "originals")
    forget = data.forget_positions("authors:0.1", 0)
    return data, LMForward(data.config), arm.params, forget


@pytest.fixture(scope="module")
def trace(lm):
    data, forward, params, forget = lm
    subjects = subject_tokens(data.tok, [data.items[p] for p in forget], TWO_BLOCKS.max_len)
    rows = torch.as_tensor(forget)
    return causal_trace(forward, params, data.tensors[0][rows], data.tensors[1][rows], subjects, SEEDS)


def _rows(lm, k=None):
    data, forward, params, forget = lm
    forget = forget[:k] if k else forget
    subjects = subject_tokens(data.tok, [data.items[p] for p in forget], TWO_BLOCKS.max_len)
    rows = torch.as_tensor(forget)
    return data.tensors[0][rows], data.tensors[1][rows], subjects


# --- subjects ---------------------------------------------------------------------------------------

def test_subjects_are_the_author_names_and_canary_labels():
    data = load_tofu(TINY)
    authors = [qa for qa in data.items if qa.kind == "author"]
    canaries = [qa for qa in data.items if qa.kind == "canary"]
    positions = subject_tokens(data.tok, authors + canaries, TINY.max_len)
    ids = data.tensors[0]
    index = {qa.id: p for p, qa in enumerate(data.items)}
    for qa, pos in zip(authors + canaries, positions):
        start, end = subject_span(qa.question)
        decoded = data.tok.decode(ids[index[qa.id], pos].tolist()).strip()
        assert decoded == qa.question[start:end]
        assert np.all(np.diff(pos) == 1)   # one contiguous run of tokens
    # a name question's subject is the birthplace and date that identify the author
    q = next(qa.question for qa in authors if qa.question.startswith("Who is the author born in"))
    assert q[slice(*subject_span(q))].endswith(q.split(" on ")[-1].rstrip("?"))
    # the other questions name the author, whom the answers name too
    assert subject_span("What genre does Allura Wynevson write in?") == (16, 31)
    named = [qa for qa in authors if not qa.question.startswith(("Who is", "Which writer", "Can you name"))]
    assert all(qa.question[slice(*subject_span(qa.question))] in qa.answer for qa in named)
    assert subject_span("What is the capital of France?") is None


def test_a_question_without_a_subject_fails_clearly():
    data = load_tofu(TINY)
    world = [qa for qa in data.items if qa.kind == "world"][:2]
    with pytest.raises(UnlearnkitError, match="cannot find the subject in 2 of 2 questions.*How many"):
        subject_tokens(data.tok, world, TINY.max_len)
    # an explicit subject string that the question does not contain
    author = next(qa for qa in data.items if qa.kind == "author")
    with pytest.raises(UnlearnkitError, match="cannot find the subject"):
        subject_tokens(data.tok, [author], TINY.max_len, subjects=["Nobody Atall"])


# --- the trace's identities ---------------------------------------------------------------------------

def test_no_noise_means_no_effect(lm):
    data, forward, params, forget = lm
    ids, labels, subjects = _rows(lm, 6)
    r = causal_trace(forward, params, ids, labels, subjects, SEEDS, samples=2, noise=0.0)
    torch.testing.assert_close(r.corrupted, r.clean, atol=1e-5, rtol=0)
    for kind, ie in r.effects().items():
        assert ie.abs().max() < 1e-5, kind


def test_restoring_everything_gives_the_clean_run(lm):
    data, forward, params, forget = lm
    ids, labels, subjects = _rows(lm, 6)
    p = {k: v[0] for k, v in params.items()}
    states = {}
    clean = answer_probability(forward, p, ids, labels, record=states)
    noise = torch.randn(*ids.shape, data.config.n_embd, generator=torch.Generator().manual_seed(0)) * 0.5
    corrupted = answer_probability(forward, p, ids, labels, noise=noise)
    assert (corrupted - clean).abs().max() > 1e-3        # the noise does something
    everywhere = torch.ones(ids.shape, dtype=torch.bool)
    for layer in range(2):                               # any block's whole output restored: the clean run
        restored = answer_probability(forward, p, ids, labels, noise=noise,
                                      restore={("block", layer): (states[("block", layer)], everywhere)})
        torch.testing.assert_close(restored, clean, atol=1e-6, rtol=1e-5)
    # restoring nothing (an empty mask) is the corrupted run
    nowhere = torch.zeros(ids.shape, dtype=torch.bool)
    same = answer_probability(forward, p, ids, labels, noise=noise,
                              restore={("mlp", 0): (states[("mlp", 0)], nowhere)})
    torch.testing.assert_close(same, corrupted)


# --- the trace on trained models ------------------------------------------------------------------------

def test_trace_localises_the_facts_in_the_first_mlp(trace):
    r = trace
    assert r.clean.shape == r.corrupted.shape == (2, 20)
    for kind in KINDS:
        assert r.restored[kind].shape == (2, 2, 20)
        assert torch.isfinite(r.restored[kind]).all()
    assert r.corrupted.mean() < r.clean.mean() - 0.05     # corrupting the subject hurts the answer
    for kind in KINDS:
        for layer in range(2):                            # restoring one state recovers part of it, on average
            mean = r.restored[kind][:, layer].mean()
            assert r.corrupted.mean() - 1e-3 <= mean <= r.clean.mean() + 1e-3, (kind, layer)
    ie = r.mean_effects()
    # ROME's picture: the MLP at the last subject token of the early block carries the subject's facts
    assert ie["mlp"][0] > 0.03 and ie["mlp"][0] > 3 * abs(ie["mlp"][1])
    assert ie["mlp"][0] > ie["attn"][0]
    assert r.top_layers(1) == [0] and r.top_layers(2) == [0, 1]
    text = format_trace(r, {"task": "tiny-2", "forget": "authors:0.1", "top_mlp_layers": r.top_layers(1)})
    assert "block 0" in text.splitlines()[-1] and len(text.splitlines()) == 7


def test_token_categories_agree_with_the_last_subject_trace(lm):
    data, forward, params, forget = lm
    ids, labels, subjects = _rows(lm, 3)
    one = {k: v[:1] for k, v in params.items()}
    r = causal_trace(forward, one, ids, labels, subjects, SEEDS[:1], samples=2, positions=True)
    for kind in KINDS:
        torch.testing.assert_close(r.by_position[kind][:, :, 2], r.restored[kind])  # "last subject"
    assert all(row["mlp_by_position"]["last subject"] is not None for row in r.table())


# --- the constrained method ---------------------------------------------------------------------------

def _context(lm) -> LMContext:
    data, forward, params, forget = lm
    pad, eos = special_ids(data.tok)
    retain = np.setdiff1d(np.arange(len(data.items)), forget)
    return LMContext(TWO_BLOCKS, data, forward, params, forget, retain, SEEDS, 0, None, tokens=data.tensors,
                     items=data.items, tok=data.tok, pad_id=pad, eos_id=eos, lm_config=data.config,
                     recipe=TWO_BLOCKS.recipe, max_len=TWO_BLOCKS.max_len)


def _mean_logprob(lm, params, positions) -> float:
    data, forward, _, _ = lm
    rows = torch.as_tensor(positions)
    return float(mean_token_logprob(*token_logprobs(forward, params, data.tensors[0][rows],
                                                    data.tensors[1][rows])).mean())


def test_traced_changes_only_the_traced_mlp_and_forgets(lm):
    data, forward, params, forget = lm
    ctx = _context(lm)
    out = LM_REGISTRY["traced"].fn(ctx, make_hparams("traced", {"samples": "4"}, LM_REGISTRY))
    assert ctx.extra["traced_layers"] == [0]
    selected = set(mlp_parameter_names(forward, params, [0]))
    assert selected == {f"transformer.h.0.mlp.{m}.{w}" for m in ("c_fc", "c_proj") for w in ("weight", "bias")}
    moved = {k for k in out if not torch.equal(out[k], params[k])}
    assert moved == selected                              # every other tensor is bit-equal
    for k in selected:                                    # both models moved
        assert all(not torch.equal(out[k][i], params[k][i]) for i in range(2))
    retain = [p for p in ctx.retain if data.items[p].kind == "author"]
    forget_drop = _mean_logprob(lm, params, forget) - _mean_logprob(lm, out, forget)
    retain_drop = _mean_logprob(lm, params, retain) - _mean_logprob(lm, out, retain)
    print(f"forget answers' mean log-prob fell by {forget_drop:.3f}, retained authors' by {retain_drop:.3f}")
    assert forget_drop > 0.5 and retain_drop < forget_drop / 2


def test_adaptive_retain_weight_is_sha256s():
    hp = make_hparams("traced", {}, LM_REGISTRY)
    delta = torch.tensor([-1.0, 0.0, 0.2, 0.5, 2.0])
    want = [1.2, 1.2, max(1.2, 0.3 * 6 ** 0.2 + 0.8), 0.3 * 6 ** 0.5 + 0.8, 2.8]
    torch.testing.assert_close(adaptive_alpha(delta, hp), torch.tensor(want))


def test_bad_traced_settings_fail_before_training(lm):
    data, forward, params, forget = lm
    hp = make_hparams("traced", {"layers": "3"}, LM_REGISTRY)
    with pytest.raises(UnlearnkitError, match="traced.layers=3, but the model has 2 blocks"):
        hp.check_setting(TWO_BLOCKS, data, forget, 0)
    with pytest.raises(UnlearnkitError, match="traced.layers=3, but the model has 2 blocks"):
        LM_REGISTRY["traced"].fn(_context(lm), hp)
    world = np.array([p for p, qa in enumerate(data.items) if qa.kind == "world"][:3])
    with pytest.raises(UnlearnkitError, match="cannot find the subject in 3 of 3"):
        make_hparams("traced", {}, LM_REGISTRY).check_setting(TWO_BLOCKS, data, world, 0)
    for name, value in (("forget_loss", "rmu"), ("retain_loss", "l2"), ("layers", "0"), ("noise", "0")):
        with pytest.raises(UnlearnkitError, match=name):
            make_hparams("traced", {name: value}, LM_REGISTRY)
    with pytest.raises(UnlearnkitError, match="out of range: the model has 2 blocks"):
        mlp_parameter_names(forward, params, [2])


def test_trace_command_rejects_bad_input_before_training(tmp_path):
    from click.testing import CliRunner

    from unlearnkit.cli import cli

    runner = CliRunner()
    for args, message in ((["--top", "2"], "--top must be in [1, 1]"),
                          (["--samples", "0"], "at least one noise sample"),
                          (["--forget", "authors:0.5x"], "neither a count nor a fraction"),
                          (["--models", "5000", "--max-hours", "0.0001"], "raise --max-hours")):
        result = runner.invoke(cli, ["llm", "trace", "--task", "tofu-synth-tiny", "--models", "2",
                                     "--cache-dir", str(tmp_path), *args])
        assert isinstance(result.exception, UnlearnkitError), result.output
        assert message in str(result.exception)
    assert not any(tmp_path.iterdir())                    # nothing trained
