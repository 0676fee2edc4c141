from ...engine import Params
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register


@register("idk", RetainParams, LM_REGISTRY)
def idk(ctx: LMContext, hp: RetainParams) -> Params:
    """Fine-tune towards refusals on the forget questions: γ·NLL(refusal | q_F) + α·NLL(S_R).

    TOFU's "Preference Optimization" baseline (Maini et al. 2024 §4: answers to forget questions
    replaced by "I don't know"-style refusals, with retain fine-tuning); OpenUnlearning's IdkNLL.
    The refusal of each item is fixed by its id (`tofu_synth.refusal`).
    """
    idk_x, idk_y = ctx.on_device(*ctx.refusals)

    def loss(params, batch, frozen):
        (_, _, pf), (xr, yr, _) = batch["forget"], batch["retain"]
        return hp.gamma * answer_nll(ctx, params, idk_x[pf], idk_y[pf]) + hp.alpha * answer_nll(ctx, params, xr, yr)

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), desc="idk")
