from ...engine import Params
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register, retain_kl


@register("ga+kl", RetainParams, LM_REGISTRY)
def ga_kl(ctx: LMContext, hp: RetainParams) -> Params:
    """Gradient ascent on S_F with a KL tie to the original on S_R: −γ·NLL(S_F) + α·KL(π_ref ‖ π_θ)(S_R).

    TOFU's "KL Minimization" baseline (Maini et al. 2024 §4): gradient ascent on the forget loss while
    minimising the KL divergence between the original and the current model's next-token
    distributions on retain data; π_ref is the frozen original.
    """
    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        return (-hp.gamma * answer_nll(ctx, params, xf, yf)
                + hp.alpha * retain_kl(ctx, params, frozen["reference"], xr, yr))

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen={"reference": ctx.originals},
                   desc="ga+kl")
