from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...engine import Params
from ...errors import UnlearnkitError
from ...lm.guard import build_guard, separator_id
from ...lm.tokenizer import encode_items
from ..base import HParams
from .base import LM_REGISTRY, LMContext, register


@dataclass(frozen=True)
class GuardParams(HParams):
    """GUARD's detector and decoder settings (no weight is trained: no epochs)."""

    layer: int = 0                   # pooled block output, 1-based; 0: the penultimate block (GUARD), the last of one
    threshold: float = 0.5           # flag a prompt when the classifier's probability exceeds this
    penalty: float = 10.0            # subtracted from the logits of tokens continuing a forbidden answer
    semantic_threshold: float = 0.6  # input-embedding cosine above which a token is close to a forbidden one
    semantic_penalty: float = 2.0    # subtracted from the logits of semantically close tokens
    resume: int = 2                  # answer tokens matched anywhere in a forbidden answer re-enter its trie; 0: off
    steps: int = 300                 # classifier: full-batch Adam steps
    lr: float = 0.05
    l2: float = 1e-3

    search_space: ClassVar[dict[str, tuple]] = {"penalty": ("log", 1.0, 30.0), "threshold": ("float", 0.2, 0.9),
                                                 "semantic_penalty": ("float", 0.0, 5.0)}

    def _checks(self):
        return [("layer", self.layer >= 0, "must be >= 0 (a block, 1-based; 0 = the penultimate)"),
                ("threshold", 0 < self.threshold < 1, "must be in (0, 1) (a probability)"),
                ("penalty", self.penalty > 0, "must be > 0"),
                ("semantic_threshold", -1 <= self.semantic_threshold < 1, "must be in [-1, 1) (a cosine)"),
                ("semantic_penalty", 0 <= self.semantic_penalty <= self.penalty, "must be in [0, penalty]"),
                ("resume", self.resume >= 0, "must be >= 0"),
                ("steps", self.steps >= 1, "must be >= 1"), ("lr", self.lr > 0, "must be > 0"),
                ("l2", self.l2 >= 0, "must be >= 0")]

    def block(self, n_layer: int) -> int:
        return self.layer or max(1, n_layer - 1)

    def check_setting(self, task, data, forget, seed) -> None:
        n_layer = data.config.n_layer
        if self.layer > n_layer:
            raise UnlearnkitError(f"guard.layer={self.layer}, but the model has {n_layer} blocks; use 1 to {n_layer} "
                                  "(0: the penultimate)")
        separator_id(*data.tensors)


@register("guard", GuardParams, LM_REGISTRY)
def guard(ctx: LMContext, hp: GuardParams) -> Params:
    """GUARD: flag forget prompts, penalise forbidden-answer tokens at decoding (suppresses; weights untouched).

    Deng et al. 2025, "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection"
    (arXiv 2505.13312): a classifier on the prompt's pooled hidden states detects forget prompts, and
    decoding then penalises tokens that continue a forbidden answer (trie matching) and tokens
    semantically close to them. See `unlearnkit.lm.guard` for the correspondence and the deviations (a
    logistic regression per model on block `layer`; the forget answers' own tokens as the forbidden
    phrases; the model's input embeddings for GUARD's SBERT; finite logit penalties on greedy decoding).

    Returns the originals' weights — the very tensors — plus the guard's per-model state under the
    reserved `guard.` keys, the format `lm.guard.GuardedForward` reads: the row must be scored through
    it (`lm.steering`). It suppresses, it does not remove: the weights still hold the
    knowledge, which KLoM against the oracles shows. On tofu-synth-tiny (authors:0.1, N = 8) with these
    defaults: forget ROUGE 0.93 → 0.23 and model utility 0.592 → 0.590 (oracles 0.36, 0.583), but the forget
    answers' probability falls to 0.001 (oracles 0.044), so KLoM on the forget set stays near the
    originals' (mean 10.9 vs 11.5; retrain noise floor 6.6), the truth ratios overshoot (forget quality
    0.06, originals 0.18), the LOSS attack inverts (AUC 0.01) and GradNorm still finds the members (0.90).
    """
    x, y = ctx.train_data
    d = ctx.dataset
    held = d.holdout_like(ctx.forget) if hasattr(d, "holdout_like") else ()
    heldout_ids = encode_items(ctx.tok, list(held), ctx.max_len)[0] if held else None
    state = build_guard(ctx.forward, ctx.originals, x, y, np.asarray(ctx.forget), np.asarray(ctx.retain), ctx.seeds,
                        (ctx.pad_id, ctx.eos_id), layer=hp.block(len(ctx.forward.blocks)), threshold=hp.threshold,
                        penalty=hp.penalty, semantic_threshold=hp.semantic_threshold,
                        semantic_penalty=hp.semantic_penalty, resume=hp.resume, steps=hp.steps, lr=hp.lr, l2=hp.l2,
                        heldout_ids=heldout_ids)
    return {**ctx.originals, **{k: v.to(next(iter(ctx.originals.values())).device) for k, v in state.items()}}

