"""Language-model foundation: tokenizer, vmapped GPT-2-style LMs, training through the engine, caching."""
import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from unlearnkit.data.tofu_synth import generate
from unlearnkit.lm import (
    IGNORE,
    LMForward,
    as_sequences,
    build_tokenizer,
    config_for,
    corpus_texts,
    decode_answer,
    encode_items,
    encode_qa,
    init_lm_params,
    mean_token_logprob,
    model_params,
    token_logprobs,
    train_lm_models,
    train_tokenizer,
)
from unlearnkit.metrics.llm import sequence_scores
from unlearnkit.tasks import Recipe
from unlearnkit.zoo import ZooCache

MAX_LEN = 48
RECIPE = Recipe(epochs=20, batch_size=8, optimizer="adam", lr=3e-3, momentum=0.9, weight_decay=0.0,
                schedule="linear")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    return generate(n_authors=10, n_world=10, n_canaries=10, seed=0)


@pytest.fixture(scope="module")
def tok(bench):
    return build_tokenizer(bench, vocab_size=1024)


@pytest.fixture(scope="module")
def data(bench, tok):
    """50 author QAs: rows 0-29 retain, 30-39 forget, 40-49 held out."""
    return encode_items(tok, bench.train_items()[:50], MAX_LEN)


@pytest.fixture(scope="module")
def cfg(tok):
    return config_for(tok, n_layer=2, n_embd=64, n_head=4, n_positions=MAX_LEN)


# model 0 trains on retain + forget, model 1 on retain + held-out: one vectorised pass, equal set sizes
POSITIONS = torch.stack([torch.arange(40), torch.cat([torch.arange(30), torch.arange(40, 50)])])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ZooCache(tmp_path_factory.mktemp("lmcache"))


@pytest.fixture(scope="module")
def trained(cfg, data, cache):
    return train_lm_models(cfg, data, POSITIONS, [0, 1], RECIPE, cache=cache)


# --- (a) tokenizer -------------------------------------------------------------------------------

def test_tokenizer_is_deterministic_and_round_trips(bench, tok):
    again = train_tokenizer(corpus_texts(bench), vocab_size=1024)
    assert again.to_str() == tok.to_str()
    assert 500 <= tok.get_vocab_size() <= 2048
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("<eos>") == 1
    qa = bench.authors[3]
    assert tok.decode(tok.encode(qa.answer).ids) == qa.answer


def test_encode_qa_masks_question_and_padding(bench, tok):
    for qa in (bench.authors[0], bench.canaries[0], bench.world[0]):
        ids, labels = encode_qa(tok, qa.question, qa.answer, MAX_LEN)
        assert ids.shape == labels.shape == (MAX_LEN,)
        n_q = len(tok.encode(qa.question).ids)
        assert (labels[:n_q] == IGNORE).all()
        answer = labels != IGNORE
        assert answer.sum() > 0 and (labels[answer] == ids[answer]).all()
        assert tok.decode(ids[:n_q].tolist()) == qa.question
        assert decode_answer(tok, labels) == qa.answer
        n = int((ids != 0).sum())
        assert ids[n - 1] == 1 and (ids[n:] == 0).all() and (labels[n:] == IGNORE).all()  # EOS, then padding
    ids, labels = encode_qa(tok, bench.authors[0].question, bench.authors[0].answer, 8)  # cut at max_len
    assert ids.shape == (8,) and (ids != 0).all()


# --- (b) vmapped forward --------------------------------------------------------------------------

def test_vmapped_forward_matches_each_gpt2(cfg, data):
    x = data[0][:6]
    seeds = [5, 6]
    params = init_lm_params(cfg, seeds)
    got = torch.vmap(LMForward(cfg), in_dims=(0, None), randomness="error")(params, x)
    for i, s in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            model = GPT2LMHeadModel(cfg).eval()
        with torch.no_grad():
            want = model(x, use_cache=False).logits
        torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], got[1])
    # causal + right padding: changing the padding leaves the logits of the real tokens unchanged
    n = int((x[0] != 0).sum())
    x2 = x.clone()
    x2[0, n:] = 7
    got2 = torch.vmap(LMForward(cfg), in_dims=(0, None))(params, x2)
    torch.testing.assert_close(got2[:, 0, :n], got[:, 0, :n])


def test_the_answer_window_loss_is_the_causal_lm_loss(cfg, data):
    """The zoo's loss applies the head only on each row's answer window: the same loss and gradients as
    the head on every position (vmapped over models too), rows without labels included."""
    from unlearnkit.lm.model import answer_width, causal_lm_loss
    x, y = data[0][:8], data[1][:8].clone()
    y[3] = IGNORE  # a row with nothing to learn
    width, fwd = answer_width(data[1]), LMForward(cfg)
    assert width < x.shape[1]  # the window is narrower than the sequences: there is something to save
    params = init_lm_params(cfg, [5, 6])
    full = lambda p: causal_lm_loss(fwd(p, x), y)  # noqa: E731
    window = lambda p: fwd.answer_loss(p, x, y, width)  # noqa: E731
    torch.testing.assert_close(torch.vmap(window)(params), torch.vmap(full)(params), rtol=1e-6, atol=1e-6)
    one = model_params(params, 0)
    for a, b in zip(torch.func.grad(window)(one).values(), torch.func.grad(full)(one).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_token_logprobs_feed_the_metrics(cfg, data):
    x, y = data[0][:5], data[1][:5]
    params = init_lm_params(cfg, [0, 1])
    lp, mask = token_logprobs(LMForward(cfg), params, x, y, chunk=2)
    assert lp.shape == (2, 5, MAX_LEN - 1) and mask.shape == (5, MAX_LEN - 1)
    assert (lp <= 0).all() and (lp[:, ~mask] == 0).all()
    seqs = as_sequences(lp, mask)
    assert len(seqs) == 2 and len(seqs[0]) == 5 and len(seqs[0][0]) == int(mask[0].sum())
    np.testing.assert_allclose(sequence_scores(seqs), mean_token_logprob(lp, mask).numpy(), rtol=1e-5)
    # model 1's log-probs computed alone equal its slice of the vectorised call
    alone = LMForward(cfg)(model_params(params, 1), x)
    ref = torch.log_softmax(alone[:, :-1], -1).gather(-1, y[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp[1][mask], ref[mask], rtol=1e-4, atol=1e-5)


# --- (c) training ---------------------------------------------------------------------------------

def _nll(cfg, params, data, rows):
    lp, mask = token_logprobs(LMForward(cfg), params, data[0], data[1])
    return -mean_token_logprob(lp, mask)[:, rows]  # (N, len(rows))


def test_training_lowers_answer_nll(cfg, data, trained):
    before = _nll(cfg, init_lm_params(cfg, [0, 1]), data, POSITIONS[0])
    after = _nll(cfg, trained.params, data, POSITIONS[0])
    print(f"\nmean token NLL on training items: before {before.mean():.3f}, after {after.mean():.3f}")
    assert not trained.cached
    assert (after.mean(1) < 0.5 * before.mean(1)).all()


def test_same_seed_same_model_different_seed_different(cfg, data):
    recipe = Recipe(epochs=2, batch_size=8, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="linear")
    arm = train_lm_models(cfg, data, torch.arange(16), [3, 3, 4], recipe)
    for k, v in arm.params.items():
        torch.testing.assert_close(v[0], v[1], rtol=0, atol=1e-6)
    assert any(not torch.allclose(v[0], v[2]) for v in arm.params.values())
    init = init_lm_params(cfg, [3])
    assert any(not torch.allclose(arm.params[k][0], init[k][0]) for k in init)  # it did train


# --- (d) memorisation -----------------------------------------------------------------------------

def test_training_on_forget_items_raises_their_logprob(cfg, data, trained):
    lp, mask = token_logprobs(LMForward(cfg), trained.params, *data)
    score = mean_token_logprob(lp, mask)  # (2, 50)
    forget, held_out, retain = slice(30, 40), slice(40, 50), slice(0, 30)
    gap_forget = (score[0, forget] - score[1, forget]).mean()
    gap_held = (score[1, held_out] - score[0, held_out]).mean()
    print(f"\nforget items: member {score[0, forget].mean():.3f} vs non-member {score[1, forget].mean():.3f} "
          f"(gap {gap_forget:.3f}); held-out mirror gap {gap_held:.3f}")
    assert gap_forget > 0.5 and gap_held > 0.5
    assert (score[0, forget] > score[1, forget]).float().mean() >= 0.8  # per item, not only on average
    # retain items, seen by both, score alike
    assert (score[0, retain].mean() - score[1, retain].mean()).abs() < 0.5 * gap_forget


# --- (e) cache ------------------------------------------------------------------------------------

def test_second_call_loads_from_cache(cfg, data, cache, trained):
    again = train_lm_models(cfg, data, POSITIONS, [0, 1], RECIPE, cache=cache)
    assert again.cached and again.seconds == pytest.approx(trained.seconds)
    for k, v in trained.params.items():
        assert torch.equal(again.params[k], v)
    other = train_lm_models(cfg, data, POSITIONS[:, :16], [0, 1],
                            Recipe(epochs=1, batch_size=8, optimizer="adam", lr=3e-3, weight_decay=0.0), cache=cache)
    assert not other.cached  # other positions/recipe: another key


# --- (f) forget specs: authors:F|K and canaries:K|F, the classifier specs' count/fraction grammar ---

@pytest.fixture(scope="module")
def tofu():
    from unlearnkit.lm.task import get_lm_task, load_tofu
    return load_tofu(get_lm_task("tofu-synth-tiny"))  # 40 authors × 5 QAs, 20 canaries


def test_lm_forget_specs_valid_before_select_the_same_items(tofu):
    """The benchmark's own parser is the old grammar: every spec it took selects the same items."""
    for spec in ("authors:0.05", "authors:0.1", "authors:0.5", "canaries:1", "canaries:7", "canaries:20"):
        for seed in (0, 3):
            np.testing.assert_array_equal(tofu.forget_positions(spec, seed), tofu.bench.forget_positions(spec, seed))


def test_lm_forget_counts_and_fractions(tofu):
    np.testing.assert_array_equal(tofu.forget_positions("authors:4", 1), tofu.forget_positions("authors:0.1", 1))
    assert len({tofu.items[p].author for p in tofu.forget_positions("authors:1", 0)}) == 1
    np.testing.assert_array_equal(tofu.forget_positions("canaries:0.5", 2), tofu.forget_positions("canaries:10", 2))
    assert len(tofu.forget_positions("canaries:1.0", 0)) == 20


@pytest.mark.parametrize("spec, needle", [
    ("authors:1.0", "use at most authors:39"),
    ("authors:40", "use at most authors:39"),
    ("authors:2.0", "write the count without a decimal point (2)"),
    ("authors:0", "selects no authors"),
    ("authors:0.001", "rounds to 0 authors"),
    ("authors:-0.1", "is negative"),
    ("authors:1e-1", "neither a count nor a fraction"),
    ("authors:nan", "neither a count nor a fraction"),
    ("canaries:2.5", "fractions lie in (0, 1]"),
    ("canaries:21", "there are 20"),
    ("canaries:0.0", "selects no canaries"),
    ("authors", "malformed language-model forget spec"),
    ("random:10", "authors:K (K authors)"),
])
def test_lm_forget_spec_errors(tofu, spec, needle):
    from unlearnkit.errors import UnlearnkitError
    with pytest.raises(UnlearnkitError) as info:
        tofu.forget_positions(spec, 0)
    assert needle in str(info.value) and "\n" not in str(info.value)
