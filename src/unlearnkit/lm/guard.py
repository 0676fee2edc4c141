"""GUARD: generation-time unlearning by a prompt classifier and penalised decoding (weights untouched).

Deng et al. 2025, "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection"
(arXiv 2505.13312). The paper's three steps, and what they are here:

1. *Prompt classifier.* GUARD trains an MLP with a softmax output on the prompt's semantic embedding: the
   hidden states of the penultimate layer of the frozen LLM, averaged over the prompt's tokens with the
   attention mask. Here: a logistic regression (the MLP reduced to its linear layer; two-way softmax =
   sigmoid) per model of the ensemble, on the mean over the *question* tokens of block `layer`'s output
   (`LMForward.hidden`), forget questions (positives) against retained ones (negatives: the other authors,
   the canaries, the world facts), class-balanced, flagged above `threshold`. The held-out authors and
   canaries are never trained on: they are the MIAs' non-members and KLoM's val split, so they only
   measure the classifier's false-positive rate (`guard.val_flag_rate`).
2. *Forbidden tokens.* GUARD retrieves the flagged prompt's answer from the forget set and has an LLM
   extract key phrases from it. Here no LLM is at hand: the forbidden token sequences are the forget
   answers' own token ids (every answer, whole), kept as a padded table whose rows are the root-to-leaf
   paths of their trie.
3. *Penalised decoding.* GUARD penalises, during (beam-search) decoding, candidate tokens that continue a
   forbidden token sequence (token-level hard matching) and candidates semantically close to the
   forbidden ones (SBERT similarity above a threshold). Here, at every answer position of a flagged
   prompt, a token v is *hard-forbidden* when

   - the answer so far is a prefix of a forbidden sequence s and v is s's next token (a walk down the
     trie from the answer's start), or
   - the last `resume` answer tokens equal a run of s anywhere in s and v is the token after that run
     (`resume` = 0 turns this off): the trie is re-entered after a deviation, so one changed token does
     not free the rest of the answer;

   and *semantically close* when the cosine similarity of its input embedding to that of a hard-forbidden
   token exceeds `semantic_threshold` (GUARD's SBERT is replaced by the model's own input embeddings,
   per model). Hard-forbidden logits lose `penalty`, semantically close ones `semantic_penalty`.
   Penalties are finite so that every log-probability the metrics take stays finite. The special tokens
   (padding, EOS) are never penalised. Decoding is greedy (the pipeline's), not GUARD's beam search.

The penalty sizes, the similarity threshold and the classifier's training settings are not the paper's
(its values could not be consulted here): `methods.lm.guard.GuardParams` states this implementation's own.

`GuardedForward(base)(params, input_ids) -> logits` is a Forward like `LMForward`: teacher-forced scoring
(`token_stats`, which vmaps it over the N models with in_dims=(0, None)) and `guarded_greedy_answers`
decode through it, so the guard's decisions are made on exactly what the metrics see.

Per-model state travels in the params dict, beside the untouched weights, under the reserved prefix
`guard.` (`GUARD_PREFIX`); every entry has the models' leading dim N, so `torch.vmap` slices it with
the weights (see `GUARD_KEYS`). A params dict without those keys is scored exactly as by `base`.

Where the question ends: teacher-forced rows are "question answer<eos>" and the forward gets no labels,
so every question must end with one separator token (tofu-synth's "?", checked when the guard is built):
the question is the tokens up to and including its first occurrence (a row without it is all question).
A decoder knows its prompts' lengths and passes them (`n_question`), so generation-only prompts (probes,
fluency prompts) need no separator.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..engine import EpochStream, Forward, Optim, Params, fit, predict
from ..engine.compute import current, use
from ..errors import UnlearnkitError
from .model import LMForward, split_prefixed
from .tokenizer import IGNORE

GUARD_PREFIX = "guard."
#: What `GuardedForward` reads (each with the models' leading dim N):
GUARD_KEYS = {
    "guard.weight": "(N, d) float: classifier weights on the pooled block output (standardisation folded in)",
    "guard.bias": "(N,) float: classifier bias",
    "guard.threshold": "(N,) float: flag a prompt when sigmoid(w·z + b) > threshold",
    "guard.layer": "(N, n_layer) float: one-hot of the block whose output is pooled",
    "guard.sep": "(N,) long: the token id that ends every question",
    "guard.vocab": "(N, U) long: the distinct token ids of the forbidden sequences",
    "guard.sequences": "(N, S, Lf) long: the forbidden sequences as indices into guard.vocab, -1 padded",
    "guard.neighbours": "(N, U, V) bool: token v's input embedding is semantically close to vocab[u]'s",
    "guard.penalty": "(N,) float: subtracted from hard-forbidden logits",
    "guard.semantic_penalty": "(N,) float: subtracted from semantically close logits",
    "guard.resume": "(N,) long: answer tokens that re-enter the trie anywhere (0: from the answer start only)",
}
#: Written by `build_guard`, not read by `GuardedForward`: a guarded row reports their means (`diagnostics`).
GUARD_DIAGNOSTICS = {
    "guard.accuracy": "(N,) classifier accuracy on the training questions",
    "guard.forget_recall": "(N,) fraction of forget questions flagged",
    "guard.retain_flag_rate": "(N,) fraction of retained questions flagged (false positives)",
    "guard.val_flag_rate": "(N,) fraction of held-out questions of the forget set's kind flagged (-1: none)",
    "guard.neighbour_count": "(N,) semantically close (token, forbidden token) pairs",
}


def split_guard(params: Params) -> tuple[Params, Params]:
    """(the model's weights, the guard's state)."""
    return split_prefixed(params, GUARD_PREFIX)


def diagnostics(params: Params) -> dict[str, float | None]:
    """The guard's `GUARD_DIAGNOSTICS`, each averaged over the N models (None where a rate has no questions
    to be measured on: -1), named without the prefix: how well its classifier separates the questions."""
    out = {}
    for key in GUARD_DIAGNOSTICS:
        v = params[key].double()
        out[key[len(GUARD_PREFIX):]] = None if (v < 0).any() else float(v.mean())
    return out


# --- prompts ----------------------------------------------------------------------------------------------

def question_mask(input_ids: torch.Tensor, sep) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (..., L) of the question tokens: up to and including the first `sep`, or the whole row where
    there is none; their number (...,)). Tensor ops only (vmappable, `sep` may be a batched scalar)."""
    is_sep = input_ids == sep
    before = is_sep.long().cumsum(-1) - is_sep.long()  # separators strictly before each position
    mask = before == 0
    return mask, mask.sum(-1)


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (..., L, d) over the positions of `mask` (..., L): GUARD's prompt embedding."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(-2) / m.sum(-2).clamp(min=1.0)


def separator_id(input_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """The token that ends every question of encoded QAs (the last unlabelled token before each answer);
    an UnlearnkitError if they differ."""
    first = (labels != IGNORE).long().argmax(-1)
    if ((first < 1) | ((labels != IGNORE).sum(-1) == 0)).any():
        raise UnlearnkitError("guard: every item needs a question and an answer")
    last = input_ids[torch.arange(len(input_ids)), first - 1].unique()
    if len(last) != 1:
        raise UnlearnkitError(f"guard: the questions end with {len(last)} different tokens; the guarded decoder "
                              "finds where a question ends by one separator token (tofu-synth's '?')")
    return int(last[0])


# --- forbidden sequences, trie matching and semantic neighbours ----------------------------------------------

def forbidden_sequences(input_ids: torch.Tensor, labels: torch.Tensor, exclude: Sequence[int] = ()
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab (U,) sorted distinct token ids, sequences (S, Lf) indices into vocab, -1 padded) of the answers
    of encoded QAs (their labelled tokens, `exclude` (EOS) dropped). Row s is one root-to-leaf path of the
    forbidden trie."""
    rows = [[int(t) for t in row[lab != IGNORE] if int(t) not in set(exclude)] for row, lab in zip(input_ids, labels)]
    rows = [r for r in rows if r]
    if not rows:
        raise UnlearnkitError("guard: the forget answers have no tokens to forbid")
    vocab = torch.tensor(sorted({t for r in rows for t in r}), dtype=torch.long)
    index = {int(t): i for i, t in enumerate(vocab)}
    width = max(len(r) for r in rows)
    seq = torch.full((len(rows), width), -1, dtype=torch.long)
    for s, r in enumerate(rows):
        seq[s, :len(r)] = torch.tensor([index[t] for t in r])
    return vocab, seq


def match_runs(input_ids: torch.Tensor, start: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """run[b, t, s, j]: how many tokens of table[s, …j] end at input_ids[b, t], matching the row backwards
    (0 if table[s, j] ≠ input_ids[b, t]); only tokens at positions ≥ start[b] (the answer) match.
    input_ids (B, L), table (S, Lf) of token ids with -1 padding. Tensor ops only (vmappable)."""
    L = input_ids.shape[-1]
    pos = torch.arange(L, device=input_ids.device)
    live = (pos[None, :] >= start[:, None])[:, :, None, None]
    eq = (input_ids[:, :, None, None] == table[None, None]) & (table >= 0) & live      # (B, L, S, Lf)
    prev = torch.zeros(eq.shape[0], *eq.shape[2:], dtype=torch.int32, device=input_ids.device)
    runs = []
    for t in range(L):
        prev = torch.where(eq[:, t], F.pad(prev[..., :-1], (1, 0)) + 1, 0)
        runs.append(prev)
    return torch.stack(runs, 1)


def forbidden_next(input_ids: torch.Tensor, n_question: torch.Tensor, table: torch.Tensor,
                   resume) -> torch.Tensor:
    """forb[b, t, s, j]: table[s, j] is a hard-forbidden next token after position t of row b
    (the GUARD token matching, see the module docstring). table (S, Lf) of token ids, -1 padded."""
    run = match_runs(input_ids, n_question, table)
    before = F.pad(run[..., :-1], (1, 0))                      # run ending at table[s, j-1]
    L, Lf = input_ids.shape[-1], table.shape[-1]
    k = torch.arange(L, device=input_ids.device)[None, :] - n_question[:, None] + 1  # answer tokens so far
    j = torch.arange(Lf, device=input_ids.device)
    rooted = (j == k[..., None, None]) & (before == j)         # the whole answer so far is table[s, :j]
    resumed = (resume > 0) & (before >= resume)
    return (rooted | resumed) & (table >= 0) & (k >= 0)[..., None, None]


def semantic_neighbours(embeddings: torch.Tensor, vocab: torch.Tensor, threshold: float,
                        exclude: Sequence[int] = ()) -> torch.Tensor:
    """(U, V) bool: cos(e_v, e_vocab[u]) > threshold, v ≠ vocab[u], v not in `exclude` (one model's input
    embeddings (V, d))."""
    e = F.normalize(embeddings.float(), dim=-1)
    close = (e[vocab] @ e.T) > threshold
    close[torch.arange(len(vocab)), vocab] = False
    if len(exclude):
        close[:, torch.as_tensor(list(exclude))] = False
    return close


# --- the guarded forward ------------------------------------------------------------------------------------

class GuardedForward(Forward):
    """f(params, input_ids (B, L)) -> logits (B, L, V): `base`'s logits, penalised on flagged prompts.

    params = the model's weights plus the `guard.` state (`GUARD_KEYS`) of the same model; without that
    state the result is `base(params, input_ids)` itself."""

    def __init__(self, base: LMForward):
        super().__init__(base.module)
        self.base = base
        self.config = base.config

    def _logits_and_blocks(self, weights: Params, input_ids: torch.Tensor) -> tuple[torch.Tensor, list]:
        outs = []

        def keep(module, args, out):
            outs.append(out[0] if isinstance(out, tuple) else out)

        handles = [b.register_forward_hook(keep) for b in self.base.blocks]
        try:
            logits = self.base(weights, input_ids)
        finally:
            for h in handles:
                h.remove()
        return logits, outs

    def hidden(self, params: Params, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """`LMForward.hidden` of the model's weights (the guard changes no activation, only the logits)."""
        return self.base.hidden(split_guard(params)[0], input_ids, layer)

    def flag_probability(self, params: Params, input_ids: torch.Tensor,
                         n_question: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the classifier's probability that each row's question is a forget prompt."""
        return self._parts(params, input_ids, n_question)[1]

    def _parts(self, params: Params, input_ids: torch.Tensor, n_question: torch.Tensor | None):
        weights, st = split_guard(params)
        logits, blocks = self._logits_and_blocks(weights, input_ids)
        h = sum(st["guard.layer"][i] * blocks[i] for i in range(len(blocks)))
        if n_question is None:
            qmask, n_q = question_mask(input_ids, st["guard.sep"])
        else:
            n_q = n_question
            qmask = torch.arange(input_ids.shape[-1], device=input_ids.device)[None, :] < n_q[:, None]
        z = pooled(h, qmask)
        prob = torch.sigmoid(z @ st["guard.weight"] + st["guard.bias"])
        return logits, prob, n_q

    def penalties(self, state: Params, input_ids: torch.Tensor, n_question: torch.Tensor,
                  vocab_size: int) -> torch.Tensor:
        """(B, L, V) what flagged rows lose at each position (before the flag is applied)."""
        vocab, seq = state["guard.vocab"], state["guard.sequences"]
        table = torch.where(seq >= 0, vocab[seq.clamp(min=0)], -1)
        forb = forbidden_next(input_ids, n_question, table, state["guard.resume"])     # (B, L, S, Lf)
        B, L = input_ids.shape
        index = (seq + 1).flatten().expand(B, L, -1)           # padding → slot 0, dropped
        hit = torch.zeros(B, L, vocab.shape[0] + 1, dtype=torch.float32, device=input_ids.device)
        hit = torch.scatter_reduce(hit, -1, index, forb.flatten(-2).float(), reduce="amax")[..., 1:]  # (B, L, U)
        hard = torch.zeros(B, L, vocab_size, dtype=torch.float32, device=input_ids.device)
        hard = torch.scatter(hard, -1, vocab.expand(B, L, -1), hit)
        close = (hit @ state["guard.neighbours"].float()) > 0
        return torch.where(hard > 0, state["guard.penalty"],
                           torch.where(close, state["guard.semantic_penalty"], 0.0))

    def __call__(self, params: Params, input_ids: torch.Tensor, n_question: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """`n_question` (B,): the prompts' token counts, where the caller knows them (a decoder); else each
        question ends at its first separator token."""
        if not any(k.startswith(GUARD_PREFIX) for k in params):
            return self.base(params, input_ids)
        logits, prob, n_q = self._parts(params, input_ids, n_question)
        _, st = split_guard(params)
        pen = self.penalties(st, input_ids, n_q, logits.shape[-1])
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
        act = (prob > st["guard.threshold"])[:, None] & (pos[None, :] >= n_q[:, None] - 1)   # flagged, answer part
        return torch.where(act[..., None], logits - pen.to(logits.dtype), logits)


# --- building the guard ---------------------------------------------------------------------------------------

def embedding_key(forward: LMForward, params: Params) -> str:
    """The params key of the model's input embeddings."""
    target = forward.module.get_input_embeddings().weight
    for name, p in forward.module.named_parameters():
        if p is target and name in params:
            return name
    raise UnlearnkitError("guard: cannot find the model's input embeddings among its parameters")


@torch.no_grad()
def question_features(forward: LMForward, params: Params, input_ids: torch.Tensor, layer: int, sep: int,
                      chunk: int = 64) -> torch.Tensor:
    """(N, n, d) each model's mean block-`layer` output over each row's question tokens."""
    weights, _ = split_guard(params)
    return predict(lambda p, x: pooled(forward.hidden(p, x, layer), question_mask(x, sep)[0]), weights, input_ids,
                   chunk)  # on the run's device


def train_classifier(features: torch.Tensor, target: torch.Tensor, seeds: Sequence[int], steps: int, lr: float,
                     l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model logistic regressions (w (N, d), b (N,)) on features (N, n, d), target (n,) in {0, 1}:
    standardised features, class-balanced cross-entropy plus l2·‖w‖², full-batch Adam for `steps`, w
    started at N(0, 0.01²) from each model's seed; the standardisation is folded into (w, b). Trained by the
    engine (`fit`, each step one batch of every example) on the run's device, in float32 whatever the run's
    precision: a probe on the models' features, as small as it is sensitive to rounding."""
    mu, sd = features.mean(1, keepdim=True), features.std(1, keepdim=True).clamp(min=1e-6)
    y = target.float()
    pos, neg = y.sum().clamp(min=1), (1 - y).sum().clamp(min=1)
    frozen = {"x": (features - mu) / sd, "weight": torch.where(y > 0, 0.5 / pos, 0.5 / neg).expand(len(seeds), -1)}
    init = {"w": torch.stack([torch.randn(features.shape[-1], generator=torch.Generator().manual_seed(int(s) ^ 0x6A2D))
                              * 0.01 for s in seeds]),
            "b": torch.zeros(len(seeds))}

    def loss(p, batch, frozen):
        _, yb, idx = batch["train"]
        logit = frozen["x"][idx] @ p["w"] + p["b"]
        bce = F.binary_cross_entropy_with_logits(logit, yb, reduction="none")
        return (bce * frozen["weight"][idx]).sum() + l2 * (p["w"] ** 2).sum()

    stream = EpochStream(torch.arange(len(y)), list(seeds), len(y))
    with torch.enable_grad(), use(dataclasses.replace(current(), precision="fp32", ensemble="vmap")):
        p = fit(loss, init, {"train": stream}, (y[:, None], y), steps, Optim("adam", lr, schedule="constant"),
                frozen=frozen)
    w_raw = p["w"] / sd[:, 0]
    return w_raw, p["b"] - (mu[:, 0] * w_raw).sum(-1)


@torch.no_grad()
def build_guard(forward: LMForward, originals: Params, input_ids: torch.Tensor, labels: torch.Tensor,
                forget: np.ndarray, retain: np.ndarray, seeds: Sequence[int], special: Sequence[int], *,
                layer: int, threshold: float, penalty: float, semantic_threshold: float, semantic_penalty: float,
                resume: int, steps: int, lr: float, l2: float, heldout_ids: torch.Tensor | None = None) -> Params:
    """The `guard.` state (`GUARD_KEYS` + `GUARD_DIAGNOSTICS`) of N original models, from the training
    QAs (input_ids, labels) and the forget / retain positions. `special`: token ids never forbidden (pad,
    EOS); `heldout_ids`: held-out questions the classifier never sees, for its false-positive rate."""
    n_models = len(seeds)
    n_layer = len(forward.blocks)
    sep = separator_id(input_ids, labels)
    forget_t, retain_t = torch.as_tensor(forget, dtype=torch.long), torch.as_tensor(retain, dtype=torch.long)
    rows = torch.cat([forget_t, retain_t])
    target = torch.cat([torch.ones(len(forget_t)), torch.zeros(len(retain_t))])
    feats = question_features(forward, originals, input_ids[rows], layer, sep)
    w, b = train_classifier(feats, target, seeds, steps, lr, l2)
    prob = torch.sigmoid(torch.einsum("nid,nd->ni", feats, w) + b[:, None])
    flag = prob > threshold
    val = torch.full((n_models,), -1.0)  # not NaN: LMBench.run_job takes a non-finite value for divergence
    if heldout_ids is not None and len(heldout_ids):
        hf = question_features(forward, originals, heldout_ids, layer, sep)
        val = (torch.sigmoid(torch.einsum("nid,nd->ni", hf, w) + b[:, None]) > threshold).float().mean(1)

    vocab, seq = forbidden_sequences(input_ids[forget_t], labels[forget_t], exclude=special)
    emb = originals[embedding_key(forward, originals)]
    close = torch.stack([semantic_neighbours(emb[i], vocab, semantic_threshold, special) for i in range(n_models)])
    rep = lambda t: t.unsqueeze(0).expand(n_models, *t.shape).clone()
    full = lambda v, dtype=torch.float32: torch.full((n_models,), v, dtype=dtype)
    return {
        "guard.weight": w.float(), "guard.bias": b.float(), "guard.threshold": full(threshold),
        "guard.layer": rep(F.one_hot(torch.tensor(layer - 1), n_layer).float()),
        "guard.sep": full(sep, torch.long), "guard.vocab": rep(vocab), "guard.sequences": rep(seq),
        "guard.neighbours": close, "guard.penalty": full(penalty), "guard.semantic_penalty": full(semantic_penalty),
        "guard.resume": full(resume, torch.long),
        "guard.accuracy": (flag == target.bool()).float().mean(1),
        "guard.forget_recall": flag[:, :len(forget_t)].float().mean(1),
        "guard.retain_flag_rate": flag[:, len(forget_t):].float().mean(1),
        "guard.val_flag_rate": val, "guard.neighbour_count": close.flatten(1).sum(1).float(),
    }


# --- decoding and scoring through the guard --------------------------------------------------------------------

@torch.no_grad()
def guarded_greedy_answers(forward: Callable, params: Params, tok: Tokenizer, questions: Sequence[str],
                           max_new_tokens: int, pad_id: int, eos_id: int, n_positions: int,
                           batch_size: int = 128) -> list[list[str]]:
    """[models][questions] greedy continuations (decoded, up to EOS) through `forward` (a GuardedForward, told
    the prompts' lengths), one model at a time. No KV cache: each step reruns the forward on the right-padded
    prefixes (a causal model's logits at a position ignore what follows), so the guard sees every prefix. The
    budget per chunk is `generate.greedy_answers`' (max_new_tokens, cut to the positions left after the
    chunk's longest question), so with an unguarded model both give the same answers."""
    n_models = next(iter(params.values())).shape[0]
    prompts = [tok.encode(q).ids for q in questions]
    guarded = isinstance(forward, GuardedForward)
    dev = next(iter(params.values())).device  # the prefixes live where the parameters do
    out = []
    for i in range(n_models):
        p = {k: v[i] for k, v in params.items()}
        answers = []
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            width = max(len(q) for q in chunk)
            steps = max(1, min(max_new_tokens, n_positions - width))
            buf = torch.full((len(chunk), width + steps), pad_id, dtype=torch.long)
            for r, q in enumerate(chunk):
                buf[r, :len(q)] = torch.tensor(q)
            buf = buf.to(dev)
            length = torch.tensor([len(q) for q in chunk], device=dev)
            n_prompt = length.clone()
            done = torch.zeros(len(chunk), dtype=torch.bool, device=dev)
            rows = torch.arange(len(chunk), device=dev)
            for _ in range(steps):
                end = int(length.max())
                logits = forward(p, buf[:, :end], n_question=n_prompt) if guarded else forward(p, buf[:, :end])
                nxt = logits[rows, length - 1].argmax(-1)
                nxt = torch.where(done, pad_id, nxt)
                buf[rows, length] = nxt
                done |= nxt == eos_id
                length = length + 1
                if done.all():
                    break
            for r, q in enumerate(chunk):
                row = buf[r, len(q):int(length[r])].tolist()
                row = row[:row.index(eos_id)] if eos_id in row else row
                answers.append(tok.decode([t for t in row if t != pad_id]).strip())
        out.append(answers)
    return out
