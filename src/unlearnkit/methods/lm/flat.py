from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...engine import Params
from ...lm.model import shifted_token_logprobs
from .base import LM_REGISTRY, LMContext, LMLoopParams, register

LOG2 = 0.6931471805599453

# (g*, f*∘g*) of each f-divergence's variational form (Nowozin et al. 2016, f-GAN, Table 2), as FLAT uses them
DIVERGENCES = {
    "tv": (lambda v: torch.tanh(v) / 2, lambda v: torch.tanh(v) / 2),
    "kl": (lambda v: v, lambda v: torch.exp(v - 1)),
    "js": (lambda v: LOG2 - F.softplus(-v), lambda v: F.softplus(v) - LOG2),
    "pearson": (lambda v: v, lambda v: v + v * v / 4),
}


@dataclass(frozen=True)
class FLATParams(LMLoopParams):
    divergence: str = "tv"

    search_space: ClassVar[dict] = dict(LMLoopParams.search_space)

    def _checks(self):
        return super()._checks() + [("divergence", self.divergence in DIVERGENCES,
                                     f"must be one of {', '.join(DIVERGENCES)}")]


def mean_token_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """P̄: the mean over a batch's answer tokens of p_θ(y_t | x, y_<t) (a probability, not a log)."""
    lp, mask = shifted_token_logprobs(logits, labels)
    return (lp.exp() * mask).sum() / mask.sum().clamp(min=1)


def flat_loss(p_template: torch.Tensor, p_forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """−g*(P̄_e) + f*(g*(P̄_f)): minus the variational lower bound of D_f between template and forget answers.

    Wang et al. 2024, "LLM Unlearning via Loss Adjustment with Only Forget Data" (FLAT, ICLR 2025,
    arXiv 2410.11143), §4: maximising the bound raises the template ("I don't know") answer's
    probability and lowers the forget answer's, each weighted by the divergence's optimal-discriminator
    form. Like the authors' code, g* and f* act on batch-level mean probabilities (their code divides
    by every position of the padded batch; we average over answer tokens, the paper's P̄).
    """
    g, fg = DIVERGENCES[divergence]
    return -g(p_template) + fg(p_forget)


@register("flat", FLATParams, LM_REGISTRY)
def flat(ctx: LMContext, hp: FLATParams) -> Params:
    """FLAT: forget data only; prefer a refusal over the forget answer via an f-divergence bound (TV).

    Wang et al. 2024 (arXiv 2410.11143): no retain data and no reference model. The template answer of
    each forget question is its fixed refusal (`tofu_synth.refusal`, the authors' "idk" template
    setting). Default divergence total variation, the authors' code default (KL, JS, Pearson available).
    """
    idk_x, idk_y = ctx.on_device(*ctx.refusals)

    def loss(params, batch, frozen):
        xf, yf, pf = batch["forget"]
        return flat_loss(mean_token_probability(ctx.forward(params, idk_x[pf]), idk_y[pf]),
                         mean_token_probability(ctx.forward(params, xf), yf), hp.divergence)

    return ctx.fit(loss, {"forget": ctx.stream("forget", ctx.forget, hp.batch_size)}, hp.epochs, hp.optim(),
                   desc="flat")
