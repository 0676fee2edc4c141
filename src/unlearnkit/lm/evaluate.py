"""Score N language models on question–answer items: what every TOFU/MUSE metric needs, per model.

`score_items` runs the vmapped forward once per scored variant (answer, paraphrase, each perturbed
answer) and generates greedy answers for ROUGE, then reduces them per model and item with the pure
functions of `unlearnkit.metrics.llm` (the tested reference of each formula):

- `accuracy`: the fraction of answer tokens that are the model's top-1 prediction (teacher-forced);
- `seq`: the answer's mean token log-probability (TOFU probability = exp(seq); the sequence-level
  score of KLoM; the LOSS attack's score);
- `truth_ratio`: R = P_pert / P_para (TOFU §2.5.1), when the items have a paraphrase and perturbed
  answers; for world facts TOFU scores the answer itself as the "paraphrase" (OpenUnlearning);
- `prob_options`: P(answer) / (P(answer) + Σ P(perturbed)) (TOFU's normalised probability on world facts);
- `truth_prob`: P_para / (P_para + P_pert + 1e-10), OpenUnlearning's `prob_mean` truth ratio;
- `rouge`: ROUGE-L recall of the greedy answer against the answer (rouge_score's tokenisation);
- `extraction_strength`, `exact_memorization`: OpenUnlearning's memorisation metrics from the
  teacher-forced top-1 hits (exact memorisation NaN where undefined);
- `mia`: LOSS, zlib, Min-K%, Min-K%++, and with `reference_seq` the Reference attack and with
  `gradnorm` the GradNorm attack (`gradnorm_scores`): membership scores, higher = member.

`probe_scores` scores RWKU-style probes (`data.probes`) by generation alone: `rouge` against each probe's
short answer; `fluency_scores` gives each generation's RWKU fluency (`metrics.fluency`) in `fluency`.

The choices OpenUnlearning's code makes (`metrics.llm.Conventions`) are followed by default.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from ..data.tofu_synth import QA
from ..engine import Params
from ..engine.compute import current
from ..errors import Diverged
from ..metrics import llm as M
from ..metrics.fluency import generation_entropy
from .model import shifted_token_logprobs, token_stats
from .steering import answers_for, split_state
from .tokenizer import IGNORE, encode_pairs, special_ids

MIA_ATTACKS = ("loss", "zlib", "mink", "minkpp", "ref", "gradnorm")
GRADNORM_P = 2  # OpenUnlearning's configs (mia_gradnorm.yaml: p: 2)


@dataclass
class ItemScores:
    """Per-model, per-item scores of one item set: arrays of shape (models, items). Sets scored by
    generation alone (probes, fluency prompts) have no `seq`."""

    seq: np.ndarray | None
    accuracy: np.ndarray | None = None   # top-1 next-token accuracy on the answer tokens
    truth_ratio: np.ndarray | None = None
    prob_options: np.ndarray | None = None
    rouge: np.ndarray | None = None
    mia: dict[str, np.ndarray] | None = None
    truth_prob: np.ndarray | None = None           # OpenUnlearning's prob_mean truth ratio, per item
    extraction_strength: np.ndarray | None = None
    exact_memorization: np.ndarray | None = None   # NaN where undefined (no position left)
    fluency: np.ndarray | None = None              # RWKU's weighted bi-/tri-gram entropy of each generation
    knowmem: np.ndarray | None = None              # MUSE KnowMem: ROUGE-L F1 of the greedy answer
    verbmem: np.ndarray | None = None              # MUSE VerbMem: of the answer's second half (NaN: one word)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The fields that are set, as scores.npz members `prefix/<field>` (`prefix/mia/<attack>`)."""
        out = {f"{prefix}/{f}": v for f in ITEM_FIELDS if (v := getattr(self, f)) is not None}
        out.update({f"{prefix}/mia/{a}": v for a, v in (self.mia or {}).items()})
        return out

    @classmethod
    def read(cls, arrays, prefix: str) -> ItemScores:
        mia = {a: arrays[f"{prefix}/mia/{a}"] for a in MIA_ATTACKS if f"{prefix}/mia/{a}" in arrays}
        return cls(**{f: arrays.get(f"{prefix}/{f}") for f in ITEM_FIELDS}, mia=mia or None)


ITEM_FIELDS = ("seq", "accuracy", "truth_ratio", "prob_options", "rouge", "truth_prob", "extraction_strength",
               "exact_memorization", "fluency", "knowmem", "verbmem")


def _per_item(lp: torch.Tensor, mask: torch.Tensor) -> list[list[np.ndarray]]:
    """[models][items] 1-D float64 arrays of the labelled tokens' log-probs; `Diverged` if any is not finite."""
    bad = ~torch.isfinite(lp).all(-1).all(-1)
    if bad.any():
        raise Diverged(-1, bad.nonzero().flatten().tolist())
    lp = lp.double().clamp(max=0.0)  # float rounding can give +1e-7 for a sure token
    return [[row[m].numpy() for row, m in zip(model, mask)] for model in lp]


def labelled_texts(tok: Tokenizer, labels: torch.Tensor) -> list[str]:
    """Each row's labelled token ids decoded with special tokens skipped: the text OpenUnlearning's zlib
    attack compresses (src/evals/metrics/utils.py `extract_target_texts_from_processed_data`). Not
    stripped; a Hugging Face tokenizer's `clean_up_tokenization_spaces` is not applied."""
    return [tok.decode([int(t) for t in row[row != IGNORE]], skip_special_tokens=True) for row in labels]


def answer_seq(forward: Callable, params: Params, tok: Tokenizer, items: Sequence[QA], max_len: int,
               specials: tuple[int, int] | None = None) -> np.ndarray:
    """(models, items) mean answer-token log-probability of N models: `ItemScores.seq` alone (e.g. of the
    reference models of the Reference attack)."""
    items = list(items)
    st = token_stats(forward, params, *encode_pairs(tok, items, [qa.answer for qa in items], max_len, specials))
    return np.array([[M.answer_logprob_stats(a)[1] for a in model] for model in _per_item(st.lp, st.mask)])


def _cut_mask(mask: torch.Tensor, one_token: str) -> torch.Tensor:
    """`mask` (n, L-1) without each row's last labelled position (`metrics.llm.drop_last_position`)."""
    n = mask.sum(-1, keepdim=True)
    rank = mask.long().cumsum(-1)
    keep = mask & (rank < n)
    if one_token == "score":
        keep = keep | (mask & (n == 1))
    return keep


def gradnorm_scores(forward: Callable, params: Params, input_ids: torch.Tensor, labels: torch.Tensor,
                    p: float = GRADNORM_P, one_token: str = "zero", chunk: int | None = None) -> np.ndarray:
    """GradNorm membership scores (`metrics.llm.grad_norm_score`) of N models on n items, (N, n): per model
    and item, minus the mean over parameter tensors of ‖∂L/∂θ_k‖_p, L the item's mean answer-token NLL
    without the EOS prediction (OpenUnlearning src/evals/metrics/mia/gradnorm.py; an answer with no
    position left has L = 0 and scores 0 under one_token="zero").

    Batched with torch.func: per-example gradients (`grad` vmapped over the items of a chunk) vmapped
    over the N models, reduced to the per-tensor norms inside the transform, so one chunk holds
    N·chunk gradients (chunk sized to ~2^27 floats unless given). Run on the run's device in float32."""
    if p not in M.GRADNORM_NORMS:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    dev = current().device
    # an inference-time method's state (`lm.steering`) rides along with each model, differentiated never
    params, state = (({k: v.detach().to(dev) for k, v in part.items()}) for part in split_state(params))
    n_models = next(iter(params.values())).shape[0]
    size = sum(v[0].numel() for v in params.values())
    chunk = chunk or max(1, min(64, 2 ** 27 // max(1, n_models * size)))
    weights = _cut_mask(labels[:, 1:] != IGNORE, one_token).float()

    def loss(theta, st, ids, lab, w):
        lp, _ = shifted_token_logprobs(forward({**theta, **st}, ids[None]), lab[None])
        return -(lp[0] * w).sum() / w.sum().clamp(min=1.0)

    def norms(theta, st, ids, lab, w):
        g = torch.func.grad(loss)(theta, st, ids, lab, w)
        return -torch.stack([torch.linalg.vector_norm(v, ord=p) for v in g.values()]).mean()

    call = torch.vmap(torch.vmap(norms, in_dims=(None, None, 0, 0, 0)), in_dims=(0, 0, None, None, None))
    out = []
    for s in range(0, len(input_ids), chunk):
        sl = slice(s, s + chunk)
        out.append(call(params, state, input_ids[sl].to(dev), labels[sl].to(dev), weights[sl].to(dev)).detach().cpu())
    scores = torch.cat(out, 1).double()
    if not torch.isfinite(scores).all():
        raise Diverged(-1, (~torch.isfinite(scores)).any(1).nonzero().flatten().tolist())
    return scores.numpy()


def _memorisation(hit: torch.Tensor, mask: torch.Tensor, conv: M.Conventions) -> tuple[np.ndarray, np.ndarray]:
    """(extraction strength, exact memorisation), each (models, items), from the top-1 hits."""
    hits = [[row[m].numpy() for row, m in zip(model, mask)] for model in hit]
    es = np.array([[M.extraction_strength(h, drop_last=True, one_token=conv.one_token, no_match=conv.es_no_match)
                    for h in model] for model in hits])
    em = np.array([[M.exact_memorization(h, drop_last=True, one_token=conv.one_token) for h in model]
                   for model in hits])
    return es, em


def score_items(forward: Callable, params: Params, module: nn.Module, tok: Tokenizer, items: Sequence[QA],
                max_len: int, rouge: bool = False, mia: bool = False, options: bool = False,
                specials: tuple[int, int] | None = None, reference_seq: np.ndarray | None = None,
                gradnorm: bool = False, conventions: M.Conventions = M.OPENUNLEARNING,
                verbmem: bool = False) -> ItemScores:
    """Score N = leading-dim models on `items` (see the module docstring for what each field is);
    `specials` = (pad id, eos id) when `tok` is not one of ours. With `mia`: `reference_seq` (N or 1, items),
    the reference models' `answer_seq` on the same items, adds the Reference attack (model i against
    reference i); `gradnorm` adds the GradNorm attack; `rouge` adds MUSE's KnowMem, `verbmem` its VerbMem."""
    items = list(items)
    conv = conventions
    enc = lambda answers: encode_pairs(tok, items, answers, max_len, specials)
    ids, labels = enc([qa.answer for qa in items])
    st = token_stats(forward, params, ids, labels, moments=mia)
    answers = _per_item(st.lp, st.mask)
    out = ItemScores(seq=np.array([[M.answer_logprob_stats(a)[1] for a in model] for model in answers]),
                     accuracy=(st.hit.sum(-1) / st.mask.sum(-1).clamp(min=1)).double().numpy())
    out.extraction_strength, out.exact_memorization = _memorisation(st.hit, st.mask, conv)

    def logprobs(answer_texts):
        t = token_stats(forward, params, *enc(answer_texts))
        return _per_item(t.lp, t.mask)

    n_pert = min((len(qa.perturbed) for qa in items), default=0)
    if n_pert:
        pert = [logprobs([qa.perturbed[k] for qa in items]) for k in range(n_pert)]
        pert_by_item = [[[pert[k][i][j] for k in range(n_pert)] for j in range(len(items))]
                        for i in range(len(answers))]
        if all(qa.paraphrase for qa in items):
            para = logprobs([qa.paraphrase for qa in items])
        else:
            para = answers
        ref = answers if options else para
        out.truth_ratio = np.stack([M.truth_ratio(ref[i], pert_by_item[i], eps=conv.tr_eps)
                                    for i in range(len(answers))])
        out.truth_prob = np.stack([M.truth_ratio_prob(ref[i], pert_by_item[i], eps=conv.tr_eps)
                                   for i in range(len(answers))])
        if options:
            out.prob_options = np.stack([M.probability_with_options(answers[i], pert_by_item[i])
                                         for i in range(len(answers))])
    # greedy answers up to the longest labelled answer + 4 tokens (OpenUnlearning generates up to 200): they
    # stop at EOS either way; only an answer that pads its start past that budget loses ROUGE recall here
    pad, eos = specials or special_ids(tok)
    new_tokens = int((labels != -100).sum(1).max()) + 4
    if rouge:
        generated = answers_for(module, params, tok, [qa.question for qa in items], new_tokens, pad, eos)
        out.rouge = np.array([[M.rouge_l_recall(g, qa.answer, alnum=True) for g, qa in zip(model, items)]
                              for model in generated])
        out.knowmem = np.array([[M.rouge_l_f1(g, qa.answer, alnum=True) for g, qa in zip(model, items)]
                                for model in generated])
    if verbmem:
        pairs = [M.verbatim_prompt(qa.question, qa.answer) for qa in items]
        kept = [i for i, p in enumerate(pairs) if p is not None]
        out.verbmem = np.full((len(answers), len(items)), np.nan)
        if kept:
            generated = answers_for(module, params, tok, [pairs[i][0] for i in kept], new_tokens, pad, eos)
            out.verbmem[:, kept] = [[M.rouge_l_f1(g, pairs[i][1], alnum=True) for g, i in zip(model, kept)]
                                    for model in generated]
    if mia:
        # OpenUnlearning scores Min-K% and Min-K%++ without the final (EOS) prediction (drop_last)
        cut = dict(drop_last=True, one_token=conv.one_token)
        mus = _per_item(st.mu, st.mask)
        sigmas = [[s[m].double().numpy() for s, m in zip(model, st.mask)] for model in st.sigma]
        texts = labelled_texts(tok, labels) if conv.zlib_text == "labels" else [qa.answer for qa in items]
        out.mia = {
            "loss": out.seq,
            "zlib": np.array([[M.zlib_score(a, t) for a, t in zip(model, texts)] for model in answers]),
            "mink": np.array([[M.min_k_score(a, **cut) for a in model] for model in answers]),
            "minkpp": np.array([[M.min_k_plus_plus_score(a, mu_, sg, **cut) for a, mu_, sg in zip(am, mu_m, sg_m)]
                                for am, mu_m, sg_m in zip(answers, mus, sigmas)]),
        }
        if reference_seq is not None:
            ref_seq = np.asarray(reference_seq, dtype=np.float64)
            if ref_seq.ndim != 2 or ref_seq.shape[1] != out.seq.shape[1] or ref_seq.shape[0] not in (1, len(out.seq)):
                raise ValueError(f"reference_seq must be (1 or {len(out.seq)} models, {out.seq.shape[1]} items), "
                                 f"got {ref_seq.shape}")
            out.mia["ref"] = out.seq - ref_seq  # metrics.llm.reference_score, per model and item
        if gradnorm:
            out.mia["gradnorm"] = gradnorm_scores(forward, params, ids, labels, one_token=conv.one_token)
    return out


def generations(module: nn.Module, params: Params, tok: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
                specials: tuple[int, int] | None = None, batch_size: int = 48) -> list[list[str]]:
    """[models][prompts] greedy continuations of prompts of mixed lengths: generated in batches of similar
    token length (a batch is left-padded to its longest prompt, whose room in the context caps the new
    tokens of all), returned in the prompts' order."""
    pad, eos = specials or special_ids(tok)
    order = sorted(range(len(prompts)), key=lambda i: len(tok.encode(prompts[i]).ids))
    out = answers_for(module, params, tok, [prompts[i] for i in order], max_new_tokens, pad, eos, batch_size)
    back = np.argsort(order)
    return [[model[j] for j in back] for model in out]


def probe_scores(module: nn.Module, params: Params, tok: Tokenizer, probes: Sequence, max_new_tokens: int,
                 specials: tuple[int, int] | None = None) -> ItemScores:
    """RWKU-style probes (anything with `question` and `answer`, e.g. `data.probes.Probe`): `rouge` = the
    ROUGE-L recall of each greedy continuation of the question against the answer (RWKU's score), per
    model and probe; nothing teacher-forced."""
    texts = generations(module, params, tok, [p.question for p in probes], max_new_tokens, specials)
    return ItemScores(seq=None, rouge=np.array([[M.rouge_l_recall(g, p.answer, alnum=True) for g, p in zip(m, probes)]
                                                for m in texts]))


def fluency_scores(module: nn.Module, params: Params, tok: Tokenizer, prompts: Sequence[str],
                   max_new_tokens: int, specials: tuple[int, int] | None = None) -> ItemScores:
    """`fluency` = RWKU's weighted bi-/tri-gram entropy of each greedy continuation, per model and prompt
    (generated up to EOS, at most `max_new_tokens` and the model's context)."""
    texts = generations(module, params, tok, prompts, max_new_tokens, specials)
    return ItemScores(seq=None, fluency=np.array([[generation_entropy(t) for t in m] for m in texts]))
