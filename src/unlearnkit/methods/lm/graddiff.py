from ...engine import Params
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register


@register("graddiff", RetainParams, LM_REGISTRY)
def graddiff(ctx: LMContext, hp: RetainParams) -> Params:
    """Gradient difference: ascend on S_F while descending on S_R, −γ·NLL(S_F) + α·NLL(S_R).

    Liu et al. 2022, "Continual Learning and Private Unlearning" (CoLLAs, arXiv 2203.12817); TOFU's
    "Gradient Difference" baseline (Maini et al. 2024 §4): L = −L(S_F) + L(S_R), one retain batch per
    forget batch; γ = α = 1 as in OpenUnlearning's GradDiff.
    """
    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        return -hp.gamma * answer_nll(ctx, params, xf, yf) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), desc="graddiff")
