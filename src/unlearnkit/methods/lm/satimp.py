from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...lm.model import shifted_token_logprobs
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register


@dataclass(frozen=True)
class SatImpParams(RetainParams):
    beta1: float = 5.0   # saturation: weight p^β1 (small for tokens already unlikely)
    beta2: float = 1.0   # importance: weight (1 − p)^β2 (small for tokens the model is sure of)
    alpha: float = 0.1   # retain weight: forget:retain = 10:1, as the authors' code and OpenUnlearning's README

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta1": ("float", 0.0, 8.0),
                                    "beta2": ("float", 0.0, 3.0), "alpha": ("log", 0.01, 1.0)}

    def _checks(self):
        return super()._checks() + [("beta1", self.beta1 >= 0, "must be >= 0"),
                                    ("beta2", self.beta2 >= 0, "must be >= 0")]


def satimp_weights(lp: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """p^β1 · (1 − p)^β2 per token, p = exp(lp), computed without gradient (1 − p as −expm1(lp), exact
    near p = 1). It vanishes at p = 0 and at p = 1 and peaks at p = β1 / (β1 + β2)."""
    lp = lp.detach()
    return torch.exp(beta1 * lp) * (-torch.expm1(lp)).clamp(min=0) ** beta2


def satimp_loss(lp: torch.Tensor, mask: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """mean over answer tokens t of sg(p_t^β1 · (1 − p_t)^β2) · log p_t (`lp`, `mask` as
    `shifted_token_logprobs` returns them). With β2 = 0 it is WGA with β = β1."""
    m = mask.to(lp.dtype)
    return (satimp_weights(lp, beta1, beta2) * lp * m).sum() / m.sum().clamp(min=1)


@register("satimp", SatImpParams, LM_REGISTRY)
def satimp(ctx: LMContext, hp: SatImpParams) -> Params:
    """SatImp: token ascent weighted by saturation p^β1 × importance (1−p)^β2, plus retain NLL (γ = 1, α = 0.1).

    Yang, Wang, Huang, Liu, Zhang & Han 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM
    Unlearning" (ICML 2025, arXiv 2505.11953), the SatImp method (their §5): each forget token's
    ascent term log p_t is weighted by a detached saturation weight p_t^β1 (tokens already unlearned
    get little weight) times an importance weight (1 − p_t)^β2 (larger for less likely tokens: the
    paper finds importance-based weights favour low likelihoods, saturation the opposite, and their
    product better than either); the loss is `satimp_loss`, as the
    authors' code (tmlr-group/SatImp, dataloader/dataloader_sat.py, loss "satimp"/"satimp_gd") and
    OpenUnlearning (src/trainer/utils.py `compute_satimp_loss`) compute it: −mean_t[w_t · ce_t].
    Defaults: β1 = 5, β2 = 1, γ = 1 (forget), α = 0.1 (retain NLL): OpenUnlearning's
    src/trainer/unlearn/satimp.py defaults and its community/methods/SatImp README ("the rate between
    forget loss and retain loss is set to 10"; the authors' code uses forget + 0.1 · retain).
    OpenUnlearning's configs/trainer/SatImp.yaml has γ = 0.1, α = 1.0 (the inverse ratio); we follow the
    README, the trainer's defaults and the authors' code. Budget and optimizer: unlearnkit's LMLoopParams
    (5 epochs as SatImp.yaml; Adam, lr 1e-3 for tiny from-scratch models).
    """
    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        lp, mask = shifted_token_logprobs(ctx.forward(params, xf), yf)
        return hp.gamma * satimp_loss(lp, mask, hp.beta1, hp.beta2) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), desc="satimp")
