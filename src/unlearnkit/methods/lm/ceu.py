from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...lm.tokenizer import IGNORE
from .base import LM_REGISTRY, LMContext, LMLoopParams, register


@dataclass(frozen=True)
class CEUParams(LMLoopParams):
    ignore_first: int = 1   # answer tokens left out of the loss at the start of each answer

    search_space: ClassVar[dict] = {**LMLoopParams.search_space, "ignore_first": ("int", 0, 3)}

    def _checks(self):
        return super()._checks() + [("ignore_first", self.ignore_first >= 0, "must be >= 0")]


def drop_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    """`labels` with the first `n` answer tokens of each row set to −100 (vmap-safe)."""
    answer = labels != IGNORE
    return torch.where(answer & (answer.cumsum(-1) <= n), torch.full_like(labels, IGNORE), labels)


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of CE(q, softmax(z)), q = softmax(sg(z) with the true token's logit at −∞).

    `logits` (..., L, V) and `labels` (..., L) unshifted, −100 off the answer. The target q is the
    model's own next-token distribution renormalised over every token but the true one (no gradient
    flows through it). The gradient on the logits is softmax(z) − q: on the true token's logit it is its
    probability p_y, on another token j it is −p_j·p_y/(1 − p_y). So the push is strongest where the
    model is most confident (p_y → 1, where GA's logit gradient 1 − p_y vanishes) and fades once the
    token is unlikely (p_y → 0, where GA's gradient in p_y, 1/p_y, explodes): the paper's two failures of GA.
    """
    z = logits[..., :-1, :].float()
    target = labels[..., 1:]
    mask = target != IGNORE
    true = torch.arange(z.shape[-1], device=z.device) == torch.where(mask, target, 0).unsqueeze(-1)
    q = torch.softmax(z.detach().masked_fill(true, float("-inf")), dim=-1)
    ce = -(q * torch.log_softmax(z, dim=-1)).sum(-1)
    m = mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1)


@register("ceu", CEUParams, LM_REGISTRY)
def ceu(ctx: LMContext, hp: CEUParams) -> Params:
    """CE-U: cross-entropy to the model's own distribution with the true token masked out, forget data only.

    Bo Yang 2025, "CE-U: Cross Entropy Unlearning" (arXiv 2503.01224): the unlearning counterpart of
    cross-entropy learning, whose target is the model's own (detached) prediction with the true
    label's logit set to −∞; it replaces gradient ascent, with no retain term and no reference model
    ("without using an extra oracle model or additional positive samples"). Loss `ceu_loss`, averaged
    over answer tokens; the first answer token of each row is left out (the trick of the paper's
    training-settings footnote, OpenUnlearning's `ignore_first_n_answer_tokens` = 1). As OpenUnlearning's
    src/trainer/unlearn/ceu.py (`cross_entropy_unlearning_loss`, `compute_batch_ceu`) and
    configs/trainer/CEU.yaml (forget set only). Budget and optimizer: unlearnkit's LMLoopParams (5
    epochs; CEU.yaml inherits finetune's 10 at lr 1e-5 for pretrained 1B models; Adam, lr 1e-3 here).
    """
    def loss(params, batch, frozen):
        x, y, _ = batch["forget"]
        return ceu_loss(ctx.forward(params, x), drop_first_answer_tokens(y, hp.ignore_first))

    return ctx.fit(loss, {"forget": ctx.stream("forget", ctx.forget, hp.batch_size)}, hp.epochs, hp.optim(),
                   desc="ceu")
