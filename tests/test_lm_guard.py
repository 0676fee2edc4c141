"""GUARD (Deng et al. 2025): the prompt classifier, the trie matching, and the guarded decoder on a tiny ensemble."""
import numpy as np
import pytest
import torch

import unlearnkit.methods.lm.guard  # noqa: F401  (registers "guard")
from unlearnkit.engine.compute import resolve, use
from unlearnkit.errors import UnlearnkitError
from unlearnkit.lm.guard import (
    GUARD_KEYS,
    GuardedForward,
    forbidden_next,
    guarded_greedy_answers,
    separator_id,
    split_guard,
)
from unlearnkit.lm.model import LMForward, token_stats
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm.tokenizer import special_ids
from unlearnkit.lm.train import train_lm_models
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY, LMContext
from unlearnkit.metrics import llm as M
from unlearnkit.zoo import ORIGINAL_SEEDS, ZooCache, arm_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


# --- trie matching against a plain trie walk ----------------------------------------------------------------

def _reference_forbidden(answer: list[int], sequences: list[list[int]], resume: int) -> set[int]:
    """The next tokens GUARD's hard matching forbids after `answer`: a walk down the trie of `sequences`
    from the answer's start, and, with `resume`, the token after any run of a sequence equal to the last
    `resume` answer tokens."""
    trie: dict = {}
    for s in sequences:
        node = trie
        for t in s:
            node = node.setdefault(t, {})
    out, node = set(), trie
    for t in answer:
        node = node.get(t)
        if node is None:
            break
    if node is not None:
        out |= set(node)
    if resume and len(answer) >= resume:
        tail = answer[-resume:]
        for s in sequences:
            out |= {s[j + resume] for j in range(len(s) - resume) if s[j:j + resume] == tail}
    return out


@pytest.mark.parametrize("resume", [0, 1, 2])
def test_trie_matching_equals_a_trie_walk(resume):
    sequences = [[1, 2, 3, 4], [1, 2, 5], [3, 4, 1, 6], [7]]
    table = torch.full((len(sequences), 4), -1, dtype=torch.long)
    for s, seq in enumerate(sequences):
        table[s, :len(seq)] = torch.tensor(seq)
    gen = torch.Generator().manual_seed(0)
    sep = 9
    rows = [[8, 8, sep] + [1, 2, 3, 4, 1, 6, 2]] + [
        [8, sep] + torch.randint(1, 8, (8,), generator=gen).tolist() for _ in range(30)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    n_q = torch.tensor([r.index(sep) + 1 for r in rows])
    forb = forbidden_next(ids, n_q, table, torch.tensor(resume))
    for b, r in enumerate(rows):
        assert not forb[b, :n_q[b] - 1].any()  # nothing inside the question
        for t in range(int(n_q[b]) - 1, len(r)):
            got = {int(table[s, j]) for s, j in forb[b, t].nonzero().tolist()}
            assert got == _reference_forbidden(r[n_q[b]:t + 1], sequences, resume), (b, t)


def test_questions_must_end_with_one_separator():
    ids = torch.tensor([[5, 6, 9, 1, 2], [5, 9, 3, 1, 0]])
    labels = torch.tensor([[-100, -100, -100, 1, 2], [-100, -100, 3, 1, -100]])
    assert separator_id(ids, labels) == 9
    with pytest.raises(UnlearnkitError, match="separator"):
        separator_id(ids, torch.tensor([[-100, -100, -100, 1, 2], [-100, 9, 3, 1, -100]]))


def test_bad_guard_hyperparameters_fail_with_one_line(ctx):
    bad_settings = [({"threshold": "1.5"}, "threshold"), ({"penalty": "0"}, "penalty"),
                    ({"semantic_penalty": "20"}, "semantic_penalty"), ({"semantic_threshold": "1"}, "cosine"),
                    ({"resume": "-1"}, "resume"), ({"layer": "-1"}, "layer"), ({"epochs": "1"}, "no hyperparameter")]
    for bad, match in bad_settings:
        with pytest.raises(UnlearnkitError, match=match) as err:
            make_hparams("guard", bad, LM_REGISTRY)
        assert "\n" not in str(err.value)
    with pytest.raises(UnlearnkitError, match="has 1 blocks") as err:
        make_hparams("guard", {"layer": "2"}, LM_REGISTRY).check_setting(ctx.task, ctx.dataset, ctx.forget, 0)
    assert "\n" not in str(err.value)
    make_hparams("guard", {}, LM_REGISTRY).check_setting(ctx.task, ctx.dataset, ctx.forget, 0)


# --- the guard on a tiny ensemble ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tiny_lm_cache):
    """The originals of tofu-synth-tiny (N = 2, authors:0.1 forgotten), from the zoo cache the other LM tests
    share (the same arm as `LMBench`'s), and the context a method gets."""
    task = get_lm_task("tofu-synth-tiny")
    d = load_tofu(task)
    cache = ZooCache(tiny_lm_cache)
    everything = np.arange(len(d.items))
    seeds = arm_seeds(ORIGINAL_SEEDS, 2, 0)
    with use(resolve()):  # the compute an LMBench trains under (precision auto): the same cache entry
        originals = train_lm_models(d.config, d.tensors, torch.as_tensor(everything), seeds, task.recipe, cache,
                                    "originals")
    forget = d.forget_positions("authors:0.1", 0)
    pad, eos = special_ids(d.tok)
    ctx = LMContext(task, d, LMForward(d.config), originals.params, forget, np.setdiff1d(everything, forget), seeds,
                     0, cache, tokens=d.tensors, items=d.items, tok=d.tok, pad_id=pad, eos_id=eos, lm_config=d.config,
                     recipe=task.recipe, max_len=task.max_len)
    ctx.extra["snapshot"] = {k: v.clone() for k, v in originals.params.items()}
    return ctx


@pytest.fixture(scope="module")
def guarded(ctx):
    return LM_REGISTRY["guard"].fn(ctx, make_hparams("guard", {}, LM_REGISTRY))


def _rows(ctx, positions):
    x, y = ctx.train_data
    r = torch.as_tensor(positions)
    return x[r], y[r]


def _flags(ctx, guarded, ids):
    gf = GuardedForward(ctx.forward)
    return torch.vmap(gf.flag_probability, in_dims=(0, None))(guarded, ids) > guarded["guard.threshold"][:, None]


def test_guard_leaves_the_weights_untouched_and_adds_its_state(ctx, guarded):
    weights, state = split_guard(guarded)
    assert weights.keys() == ctx.originals.keys()
    assert all(weights[k] is ctx.originals[k] for k in weights)  # the very tensors
    assert set(GUARD_KEYS) <= state.keys()
    assert all(v.shape[0] == 2 for v in state.values())  # one slice per model: vmap carries it with the weights


def test_classifier_separates_forget_from_retain_questions(guarded):
    assert (guarded["guard.accuracy"] > 0.8).all()
    assert (guarded["guard.forget_recall"] >= 0.9).all()
    assert (guarded["guard.retain_flag_rate"] < 0.1).all()


def test_guard_is_deterministic(ctx, guarded):
    again = LM_REGISTRY["guard"].fn(ctx, make_hparams("guard", {}, LM_REGISTRY))
    assert again.keys() == guarded.keys()
    assert all(torch.equal(again[k], guarded[k]) for k in guarded)


def test_unflagged_prompts_are_scored_exactly_as_by_the_model(ctx, guarded):
    ids, _ = _rows(ctx, ctx.retain)
    gf = GuardedForward(ctx.forward)
    plain = torch.vmap(ctx.forward, in_dims=(0, None))(ctx.originals, ids)
    through = torch.vmap(gf, in_dims=(0, None))(guarded, ids)
    flags = _flags(ctx, guarded, ids)
    assert (~flags).float().mean() > 0.9
    assert torch.equal(through[~flags], plain[~flags])
    assert torch.equal(torch.vmap(gf, in_dims=(0, None))(ctx.originals, ids), plain)  # no guard state: the model
    # vmapped over the models = each model on its own
    for i in range(2):
        torch.testing.assert_close(gf({k: v[i] for k, v in guarded.items()}, ids[:8]), through[i, :8])


def test_flagged_forget_answers_lose_probability_and_retain_answers_keep_it(ctx, guarded):
    gf = GuardedForward(ctx.forward)
    seq = lambda st: st.lp.sum(-1) / st.mask.sum(-1)   # mean log-prob per answer token, (models, items)

    def both(ids, labels):
        return seq(token_stats(ctx.forward, ctx.originals, ids, labels)), seq(token_stats(gf, guarded, ids, labels))

    ids, labels = _rows(ctx, ctx.forget)
    before, after = both(ids, labels)
    assert (after < before - 3).float().mean() >= 0.9      # nats per answer token
    assert after.mean() < before.mean() - 5
    ids, labels = _rows(ctx, ctx.retain)
    before, after = both(ids, labels)
    flags = _flags(ctx, guarded, ids)
    assert torch.equal(after[~flags], before[~flags])
    assert (after.mean(1) - before.mean(1)).abs().max() < 0.2


def test_guarded_generation_no_longer_reproduces_forget_answers(ctx, guarded):
    gf = GuardedForward(ctx.forward)
    n_pos = ctx.lm_config.n_positions

    def rouge(params, positions):
        items = [ctx.items[p] for p in positions]
        gen = guarded_greedy_answers(gf, params, ctx.tok, [qa.question for qa in items], 24, ctx.pad_id, ctx.eos_id,
                                     n_pos)
        return np.array([[M.rouge_l_recall(g, qa.answer, alnum=True) for g, qa in zip(m, items)] for m in gen]), gen

    ids, _ = _rows(ctx, ctx.forget)  # a decoder's prompt lengths = where teacher forcing finds the question's end
    one = {k: v[0] for k, v in guarded.items()}
    n_q = (ids == guarded["guard.sep"][0]).long().argmax(-1) + 1
    assert torch.equal(gf(one, ids, n_question=n_q), gf(one, ids))
    before, _ = rouge(ctx.originals, ctx.forget)
    after, _ = rouge(guarded, ctx.forget)
    assert before.mean() > 0.8 and after.mean() < 0.4
    assert (after < before).mean() > 0.8
    # world facts are never flagged here: their answers are the model's own, to the token
    world = [p for p in ctx.retain if ctx.items[p].kind == "world"]
    assert not _flags(ctx, guarded, _rows(ctx, world)[0]).any()
    assert rouge(guarded, world)[1] == rouge(ctx.originals, world)[1]


def test_unguarded_decoder_matches_hugging_face_greedy(ctx):
    from unlearnkit.lm.generate import greedy_answers
    from unlearnkit.lm.model import build_lm
    qs = [ctx.items[p].question for p in ctx.retain[::12]]
    ours = guarded_greedy_answers(GuardedForward(ctx.forward), ctx.originals, ctx.tok, qs, 20, ctx.pad_id, ctx.eos_id,
                                  ctx.lm_config.n_positions)
    assert ours == greedy_answers(build_lm(ctx.lm_config), ctx.originals, ctx.tok, qs, 20, ctx.pad_id, ctx.eos_id)


def test_the_weights_are_unchanged_after_guarded_scoring_and_decoding(ctx, guarded):
    weights, _ = split_guard(guarded)
    assert all(torch.equal(weights[k], ctx.extra["snapshot"][k]) for k in ctx.extra["snapshot"])
