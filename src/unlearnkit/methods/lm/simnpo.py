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
    register,
    sequence_logprob,
)


@dataclass(frozen=True)
class SimNPOParams(RetainParams):
    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta": ("log", 0.5, 10.0)}

    def _checks(self):
        return super()._checks() + [("beta", self.beta > 0, "must be > 0")]


def simnpo_loss(logp: torch.Tensor, length: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−(β/|y|)·log π_θ(y|x) − β·δ) over a batch of sequences.

    Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning" (arXiv 2410.07163), Eq. 4: NPO with the reference model replaced by length
    normalisation and a reward margin. Written as the authors' code and OpenUnlearning compute it,
    with the margin δ inside β (δ = γ_paper / β; the same at the default 0).
    """
    return -2.0 / beta * F.logsigmoid(beta * (-logp / length.clamp(min=1) - delta)).mean()


@register("simnpo", SimNPOParams, LM_REGISTRY)
def simnpo(ctx: LMContext, hp: SimNPOParams) -> Params:
    """SimNPO: reference-free, length-normalised NPO on S_F plus retain NLL: γ·L_SimNPO + α·NLL(S_R).

    Fan et al. 2024 (arXiv 2410.07163), Eq. 4 with the retain regulariser; β = 4.5, δ = 0, γ = 0.125,
    α = 1: the authors' TOFU forget10 setting, as OpenUnlearning's SimNPO config.
    """
    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        logp, length = sequence_logprob(ctx.forward(params, xf), yf)
        return hp.gamma * simnpo_loss(logp, length, hp.beta, hp.delta) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), desc="simnpo")
