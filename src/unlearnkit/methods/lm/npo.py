from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...engine import Params
from .base import (
    LM_REGISTRY,
    LMContext,
    RetainParams,
    answer_nll,
    forget_reference,
    register,
    sequence_logprob,
)


@dataclass(frozen=True)
class NPOParams(RetainParams):
    beta: float = 0.1

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta": ("log", 0.01, 1.0)}

    def _checks(self):
        return super()._checks() + [("beta", self.beta > 0, "must be > 0")]


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−β·(log π_θ(y|x) − log π_ref(y|x))) over a batch of sequences.

    Zhang, Lin, Bai & Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse to
    Effective Unlearning" (arXiv 2404.05868), Eq. 3; log π is the summed log-probability of the answer
    (OpenUnlearning's `compute_dpo_loss` with no winning response). As β → 0 its gradient tends to
    that of gradient ascent; it is bounded below by 0, so unlike GA it cannot run away.
    """
    return -2.0 / beta * F.logsigmoid(-beta * (logp - logp_ref)).mean()


@register("npo", NPOParams, LM_REGISTRY)
def npo(ctx: LMContext, hp: NPOParams) -> Params:
    """Negative Preference Optimization on S_F plus retain NLL: γ·L_NPO(S_F) + α·NLL(S_R).

    Zhang et al. 2024 (arXiv 2404.05868), Eq. 3 with the retain term of their "NPO+RT" (§5): the
    reference policy is the frozen original, read through its log-probabilities of the forget answers
    computed once (`reference_logprobs`); β = 0.1, γ = α = 1 as in OpenUnlearning's NPO.
    """
    def loss(params, batch, frozen):
        (xf, yf, pf), (xr, yr, _) = batch["forget"], batch["retain"]
        logp, _ = sequence_logprob(ctx.forward(params, xf), yf)
        return hp.gamma * npo_loss(logp, frozen["ref"][pf], hp.beta) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen={"ref": forget_reference(ctx)},
                   desc="npo")

