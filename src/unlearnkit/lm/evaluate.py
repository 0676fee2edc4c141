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
- `rouge`: ROUGE-L recall of the greedy answer against the answer (rouge_score's tokenisation);
- `mia`: LOSS, zlib, Min-K% and Min-K%++ membership scores (higher = member).
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
from ..errors import Diverged
from ..metrics import llm as M
from .generate import greedy_answers
from .model import token_stats
from .tokenizer import encode_pairs, special_ids

MIA_ATTACKS = ("loss", "zlib", "mink", "minkpp")


@dataclass
class ItemScores:
    """Per-model, per-item scores of one item set: arrays of shape (models, items)."""

    seq: np.ndarray
    accuracy: np.ndarray | None = None   # top-1 next-token accuracy on the answer tokens
    truth_ratio: np.ndarray | None = None
    prob_options: np.ndarray | None = None
    rouge: np.ndarray | None = None
    mia: dict[str, np.ndarray] | None = None

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The fields that are set, as scores.npz members `prefix/<field>` (`prefix/mia/<attack>`)."""
        out = {f"{prefix}/{f}": v for f in ITEM_FIELDS if (v := getattr(self, f)) is not None}
        out.update({f"{prefix}/mia/{a}": v for a, v in (self.mia or {}).items()})
        return out

    @classmethod
    def read(cls, arrays, prefix: str) -> ItemScores:
        mia = {a: arrays[f"{prefix}/mia/{a}"] for a in MIA_ATTACKS if f"{prefix}/mia/{a}" in arrays}
        return cls(**{f: arrays.get(f"{prefix}/{f}") for f in ITEM_FIELDS}, mia=mia or None)


ITEM_FIELDS = ("seq", "accuracy", "truth_ratio", "prob_options", "rouge")


def _per_item(lp: torch.Tensor, mask: torch.Tensor) -> list[list[np.ndarray]]:
    """[models][items] 1-D float64 arrays of the labelled tokens' log-probs; `Diverged` if any is not finite."""
    bad = ~torch.isfinite(lp).all(-1).all(-1)
    if bad.any():
        raise Diverged(-1, bad.nonzero().flatten().tolist())
    lp = lp.double().clamp(max=0.0)  # float rounding can give +1e-7 for a sure token
    return [[row[m].numpy() for row, m in zip(model, mask)] for model in lp]


def score_items(forward: Callable, params: Params, module: nn.Module, tok: Tokenizer, items: Sequence[QA],
                max_len: int, rouge: bool = False, mia: bool = False, options: bool = False,
                specials: tuple[int, int] | None = None) -> ItemScores:
    """Score N = leading-dim models on `items` (see the module docstring for what each field is);
    `specials` = (pad id, eos id) when `tok` is not one of ours."""
    items = list(items)
    enc = lambda answers: encode_pairs(tok, items, answers, max_len, specials)
    ids, labels = enc([qa.answer for qa in items])
    st = token_stats(forward, params, ids, labels, moments=mia)
    answers = _per_item(st.lp, st.mask)
    out = ItemScores(seq=np.array([[M.answer_logprob_stats(a)[1] for a in model] for model in answers]),
                     accuracy=(st.hit.sum(-1) / st.mask.sum(-1).clamp(min=1)).double().numpy())

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
        out.truth_ratio = np.stack([M.truth_ratio(ref[i], pert_by_item[i]) for i in range(len(answers))])
        if options:
            out.prob_options = np.stack([M.probability_with_options(answers[i], pert_by_item[i])
                                         for i in range(len(answers))])
    if rouge:
        pad, eos = specials or special_ids(tok)
        longest = int((labels != -100).sum(1).max())
        generated = greedy_answers(module, params, tok, [qa.question for qa in items], longest + 4, pad, eos)
        out.rouge = np.array([[M.rouge_l_recall(g, qa.answer, alnum=True) for g, qa in zip(model, items)]
                              for model in generated])
    if mia:
        # OpenUnlearning scores Min-K% and Min-K%++ without the final (EOS) prediction
        cut = [[a[:-1] if a.size > 1 else a for a in model] for model in answers]
        mus = _per_item(st.mu, st.mask)
        sigmas = [[s[m].double().numpy() for s, m in zip(model, st.mask)] for model in st.sigma]
        out.mia = {
            "loss": out.seq,
            "zlib": np.array([[M.zlib_score(a, qa.answer) for a, qa in zip(model, items)] for model in answers]),
            "mink": np.array([[M.min_k_score(a) for a in model] for model in cut]),
            "minkpp": np.array([[M.min_k_plus_plus_score(c, mu_[:len(c)], sg[:len(c)])
                                 for c, mu_, sg in zip(ct, mu_m, sg_m)] for ct, mu_m, sg_m in zip(cut, mus, sigmas)]),
        }
    return out
