from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...lm.model import shifted_token_logprobs
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register
from .satimp import satimp_loss


@dataclass(frozen=True)
class WGAParams(RetainParams):
    beta: float = 1.0   # power of the (detached) token probability that weights each token's ascent

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta": ("float", 0.0, 5.0)}

    def _checks(self):
        return super()._checks() + [("beta", self.beta >= 0, "must be >= 0")]


def wga_loss(lp: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """mean over answer tokens t of sg(p_t)^β · log p_t, with p_t = π_θ(y_t | x, y_<t).

    `lp`, `mask` as `shifted_token_logprobs` returns them (lp 0 off the answer). Minimising it is
    gradient ascent on the answer NLL with each token's gradient scaled by its own probability to the
    power β (the weight is a constant: no gradient flows through it): tokens the model has already
    made unlikely stop being pushed, which is what keeps WGA from GA's runaway. The mean is over every
    answer token of the batch, as OpenUnlearning's `compute_wga_loss` and the authors' code take it.
    β = 0 is plain gradient ascent (−NLL). It is SatImp's loss with β2 = 0 (`satimp_loss`, whose
    importance factor (1 − p)^0 is 1).
    """
    return satimp_loss(lp, mask, beta, 0.0)


@register("wga", WGAParams, LM_REGISTRY)
def wga(ctx: LMContext, hp: WGAParams) -> Params:
    """Weighted gradient ascent: token ascent weighted by sg(p)^β on S_F, plus retain NLL: γ·L_WGA + α·NLL(S_R).

    Wang, Zhou, Zhou, Shin, Han & Weinberger 2025, "Rethinking LLM Unlearning Objectives: A Gradient
    Perspective and Go Beyond" (ICLR 2025, arXiv 2502.19301), the WGA objective of their "go beyond"
    section: GA's gradient carries an inverse-confidence factor 1/p per token; WGA multiplies each
    token's log-likelihood by p^β (treated as a constant) to control it. The loss is `wga_loss`, as the
    authors' code (tmlr-group/G-effect, dataloader.py, loss "wga") and OpenUnlearning
    (src/trainer/utils.py `compute_wga_loss`) compute it: −mean_t[sg(exp(−ce_t))^β · ce_t].
    Defaults: β = 1, γ = α = 1 with an NLL retain term, OpenUnlearning's configs/trainer/WGA.yaml and
    src/trainer/unlearn/wga.py (the authors' own script falls back to β = 5 with no retain term, "wga";
    their "wga_kl" adds KL to the original on retain data). Budget and optimizer are unlearnkit's
    (LMLoopParams: 5 epochs as WGA.yaml, Adam; lr 1e-3 for tiny from-scratch models, where the configs'
    1e-5 is for 1B–7B pretrained ones).
    """
    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        lp, mask = shifted_token_logprobs(ctx.forward(params, xf), yf)
        return hp.gamma * wga_loss(lp, mask, hp.beta) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), desc="wga")
