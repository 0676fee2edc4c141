from dataclasses import dataclass
from typing import ClassVar

from ...engine import Params
from .base import LM_REGISTRY, LMContext, LMLoopParams, answer_nll, register, retain_kl


@dataclass(frozen=True)
class LLMUParams(LMLoopParams):
    eps_forget: float = 0.5       # ε1: gradient ascent on the forget answers
    eps_random: float = 1.0       # ε2: NLL of random answers to the forget questions
    eps_normal: float = 1.0       # ε3: KL to the original on normal (retain) data

    search_space: ClassVar[dict] = {**LMLoopParams.search_space, "eps_forget": ("log", 0.05, 2.0)}

    def _checks(self):
        return super()._checks() + [(k, getattr(self, k) >= 0, "must be >= 0")
                                    for k in ("eps_forget", "eps_random", "eps_normal")]


@register("llmu", LLMUParams, LM_REGISTRY)
def llmu(ctx: LMContext, hp: LLMUParams) -> Params:
    """LLMU: ascent on S_F, random answers to its questions, KL to the original on S_R (ε = 0.5, 1, 1).

    Yao, Xu & Liu 2023, "Large Language Model Unlearning" (arXiv 2310.10683), the method's update
    θ ← θ − ε1∇L_fgt − ε2∇L_rdn − ε3∇L_nor: L_fgt = −NLL of the forget answers, L_rdn = NLL of answers
    drawn at random from retained items given the forget questions (their "random responses" come from
    TruthfulQA; here from S_R, fixed per item), L_nor = KL(π_orig ‖ π_θ) on normal data (S_R answers).
    Weights as the authors' code (bad 0.5, random 1, normal 1). Deviations from that code: the NLLs are
    means over every answer token of a batch (it averages per sequence, then over the batch), and each
    forget question has one fixed random answer (it draws 5 fresh ones every step).
    """
    rand_x, rand_y = ctx.on_device(*ctx.mismatched)

    def loss(params, batch, frozen):
        (xf, yf, pf), (xr, yr, _) = batch["forget"], batch["retain"]
        return (-hp.eps_forget * answer_nll(ctx, params, xf, yf)
                + hp.eps_random * answer_nll(ctx, params, rand_x[pf], rand_y[pf])
                + hp.eps_normal * retain_kl(ctx, params, frozen["reference"], xr, yr))

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen={"reference": ctx.originals},
                   desc="llmu")
