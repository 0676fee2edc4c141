"""IdkDPO, UNDIAL and AltPO: their losses against the papers' formulas, the properties the papers state, and
each method on a tiny ensemble."""
import math

import numpy as np
import pytest
import torch

import unlearnkit.methods.lm.altpo  # noqa: F401  (registers "altpo")
import unlearnkit.methods.lm.dpo  # noqa: F401  (registers "idkdpo")
import unlearnkit.methods.lm.undial  # noqa: F401  (registers "undial")
from unlearnkit.data.tofu_synth import QA, generate
from unlearnkit.lm.evaluate import token_stats
from unlearnkit.lm.tokenizer import encode_pairs
from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY
from unlearnkit.methods.lm.altpo import alternate_answers, parse_fact
from unlearnkit.methods.lm.dpo import dpo_loss
from unlearnkit.methods.lm.npo import npo_loss
from unlearnkit.methods.lm.undial import undial_loss, undial_target

pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# --- DPO (IdkDPO, and AltPO's forget term) -----------------------------------------------------------

def test_dpo_loss_equals_its_formula():
    lw, ll = torch.tensor([-3.0, -7.0, -2.0]), torch.tensor([-1.0, -4.0, -9.0])
    rw, rl, beta = torch.tensor([-4.0, -6.5, -2.5]), torch.tensor([-1.5, -3.0, -8.0]), 0.1
    # Rafailov et al. 2023, Eq. 7, scaled by 2/β as OpenUnlearning's compute_dpo_loss
    want = np.mean([-(2 / beta) * math.log(_sigmoid(beta * ((a - c) - (b - d))))
                    for a, b, c, d in zip(lw.tolist(), ll.tolist(), rw.tolist(), rl.tolist())])
    assert dpo_loss(lw, ll, rw, rl, beta).item() == pytest.approx(want, rel=1e-6)


def test_dpo_at_the_reference_and_without_a_winner():
    rw, rl = torch.tensor([-4.0, -6.0]), torch.tensor([-2.0, -30.0])
    for beta in (0.1, 0.5):
        # at the start of unlearning (π_θ = π_ref) every pair costs (2/β)·log 2
        assert dpo_loss(rw, rl, rw, rl, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
        # with the winner's log-ratio held at 0 it is NPO on the loser (Zhang et al. 2024, Eq. 3)
        ll = torch.tensor([-3.0, -25.0])
        assert dpo_loss(rw, ll, rw, rl, beta).item() == pytest.approx(npo_loss(ll, rl, beta).item(), rel=1e-6)


def test_dpo_gradient_raises_the_preferred_answer_and_lowers_the_rejected_one():
    rw, rl, beta = torch.tensor([-4.0, -6.0, -1.0]), torch.tensor([-2.0, -3.0, -5.0]), 0.1
    lw = torch.tensor([-5.0, -6.0, -0.5], requires_grad=True)
    ll = torch.tensor([-2.0, -1.0, -9.0], requires_grad=True)
    dpo_loss(lw, ll, rw, rl, beta).backward()
    m = (lw.detach() - rw) - (ll.detach() - rl)
    w = 2 * torch.sigmoid(-beta * m) / len(m)  # dL/dm = −(2/n)·σ(−β·m)
    torch.testing.assert_close(lw.grad, -w)
    torch.testing.assert_close(ll.grad, w)
    assert (lw.grad < 0).all() and (ll.grad > 0).all()  # descent: log π(y_w) up, log π(y_l) down


def test_altpo_pairs_are_the_authors_rows():
    """k alternates of a question in one step = the authors' k rows (q, y_alt_j, y_F), one per alternate."""
    torch.manual_seed(1)
    lw, rw = -torch.rand(3, 4) * 10, -torch.rand(3, 4) * 10   # 3 questions × k = 4 alternates
    ll, rl = -torch.rand(3) * 10, -torch.rand(3) * 10
    rows = dpo_loss(lw.flatten(), ll.repeat_interleave(4), rw.flatten(), rl.repeat_interleave(4), 0.1)
    assert dpo_loss(lw, ll[:, None], rw, rl[:, None], 0.1).item() == pytest.approx(rows.item(), rel=1e-6)


# --- UNDIAL -------------------------------------------------------------------------------------------

def _undial_case():
    torch.manual_seed(0)
    logits, ref = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, 0, -100]])
    return logits, ref, labels


def test_undial_loss_equals_its_formula():
    logits, ref, labels, beta = *_undial_case(), 3.0
    terms = []
    for b in range(2):
        for t in range(3):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = ref[b, t].tolist()
            z[y] -= beta                                      # the target token's logit lowered by β
            zq = [math.exp(v) for v in z]
            q = [v / sum(zq) for v in zq]
            zp = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(zp) for v in zp]
            terms.append(sum(qi * math.log(qi / pi) for qi, pi in zip(q, p)))   # KL(q ‖ p_θ)
    assert undial_loss(logits, ref, labels, beta).item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_undial_target_is_the_original_with_only_the_target_logit_lowered():
    _, ref, labels, beta = *_undial_case(), 4.0
    logq, mask = undial_target(ref, labels, beta)
    logp = torch.log_softmax(ref[:, :-1], -1)
    for b, t in mask.nonzero().tolist():
        y = int(labels[b, t + 1])
        gap = (logq[b, t] - logp[b, t]).tolist()            # = −β·[j = y] − log Z: one constant off y
        others = [g for j, g in enumerate(gap) if j != y]
        assert max(others) - min(others) == pytest.approx(0, abs=1e-5)
        assert gap[y] - others[0] == pytest.approx(-beta, abs=1e-5)
    # β = 0: the target is the original itself, so the loss is 0 when unlearning starts
    assert undial_loss(ref, ref, labels, 0.0).item() == pytest.approx(0, abs=1e-6)
    assert undial_loss(ref, ref, labels, beta).item() > 0
    # only answer positions count: what the student predicts at the question's positions does not matter
    moved = ref.clone()
    moved[0, 0] += 5 * torch.randn(5)
    assert undial_loss(moved, ref, labels, beta).item() == pytest.approx(undial_loss(ref, ref, labels, beta).item())


# --- AltPO's alternate answers ------------------------------------------------------------------------

def test_altpo_alternates_change_only_the_fact_to_another_items_value():
    d = generate(n_authors=30, qa_per_author=11, n_world=10, n_canaries=10)
    items = d.train_items()
    facts = [parse_fact(qa) for qa in items]
    assert all((f is None) == (qa.kind == "world") for qa, f in zip(items, facts))  # authors, canaries parse
    forget, retain = d.forget_positions("authors:0.1"), d.retain_positions("authors:0.1")
    forget = np.concatenate([forget, [len(d.authors)]])      # and a canary
    alts, fallbacks = alternate_answers(items, forget, retain, 5, seed=3)
    assert fallbacks == 0
    values = {}
    for f in facts:
        if f is not None:
            values.setdefault(f[0], set()).add(f[1])
    for p, answers in zip(forget, alts):
        qa, (kind, value, (s, e)) = items[p], facts[p]
        assert len(set(answers)) == 5 and qa.answer not in answers
        for a in answers:
            assert a.startswith(qa.answer[:s]) and a.endswith(qa.answer[e:])
            new = a[s:len(a) - (len(qa.answer) - e)]
            assert new in values[kind] and new != value
            assert a not in qa.perturbed and a != qa.paraphrase  # never the evaluation's own answers
    assert alternate_answers(items, forget, retain, 5, seed=3)[0] == alts   # fixed per item and seed
    # an item that is no tofu-synth template: k random retained answers (as ctx.mismatched)
    odd = (*items, QA(10**7, -1, "author", "What is your favourite colour?", "Blue.", "", ()))
    out, fallbacks = alternate_answers(odd, [len(items)], retain, 3, seed=3)
    assert fallbacks == 1 and all(a in {items[r].answer for r in retain} for a in out[0])


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="beta"):
        make_hparams("idkdpo", {"beta": "0"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="beta"):
        make_hparams("undial", {"beta": "-1"}, LM_REGISTRY)
    with pytest.raises(ValueError, match="alternates"):
        make_hparams("altpo", {"alternates": "0"}, LM_REGISTRY)


# --- each method on a tiny ensemble -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


def _mean_logprob(ctx, params, x, y) -> float:
    """Mean over models and items of an answer's mean token log-probability."""
    st = token_stats(ctx.forward, params, x, y)
    return (st.lp.sum(-1) / st.mask.sum(-1)).mean().item()


@pytest.mark.parametrize("method", ["idkdpo", "undial", "altpo"])
def test_each_method_moves_the_models_and_forgets(bench, method):
    ctx, orig = bench.context(), bench.originals.params
    out = LM_REGISTRY[method].fn(ctx, make_hparams(method, {"epochs": "3"}, LM_REGISTRY))
    assert out.keys() == orig.keys()
    assert all(torch.isfinite(v).all() for v in out.values())
    moved = [k for k in out if not torch.equal(out[k], orig[k])]
    for i in range(2):  # both models of the ensemble moved
        assert any(not torch.equal(out[k][i], orig[k][i]) for k in moved)
    rows, kept = torch.as_tensor(ctx.forget), torch.as_tensor(ctx.retain[:100])
    x, y = ctx.tokens[0][rows], ctx.tokens[1][rows]
    forget_drop = _mean_logprob(ctx, orig, x, y) - _mean_logprob(ctx, out, x, y)
    retain_drop = _mean_logprob(ctx, orig, ctx.tokens[0][kept], ctx.tokens[1][kept]) - _mean_logprob(
        ctx, out, ctx.tokens[0][kept], ctx.tokens[1][kept])
    assert forget_drop > 0.3 and forget_drop > retain_drop, (forget_drop, retain_drop)
    if method == "idkdpo":  # the preferred answer became likelier
        rx, ry = (t[rows] for t in ctx.refusals)
        assert _mean_logprob(ctx, out, rx, ry) > _mean_logprob(ctx, orig, rx, ry)
    if method == "altpo":  # the alternates gained on the forget answer (DPO moves the margin, not each side)
        answers, _ = alternate_answers(ctx.items, ctx.forget, ctx.retain, 5, ctx.run_seed)
        ax, ay = encode_pairs(ctx.tok, [ctx.items[p] for p in ctx.forget for _ in range(5)],
                              [a for alts in answers for a in alts], ctx.max_len, (ctx.pad_id, ctx.eos_id))

        def gap(params):
            return _mean_logprob(ctx, params, ax, ay) - _mean_logprob(ctx, params, x, y)
        assert gap(out) > gap(orig) + 0.3
