from dataclasses import dataclass

from ...engine import Params
from .base import LM_REGISTRY, LMContext, LMLoopParams, answer_nll, register


@dataclass(frozen=True)
class FinetuneParams(LMLoopParams):
    epochs: float = 1.0       # passes over the retain set (its stream is the only one)


@register("finetune", FinetuneParams, LM_REGISTRY)
def finetune(ctx: LMContext, hp: FinetuneParams) -> Params:
    """Fine-tune on S_R only (catastrophic forgetting of S_F as the baseline).

    Golatkar et al. 2020 ("Eternal Sunshine of the Spotless Net", CVPR) as the "Fine-tune" baseline;
    for LMs, TOFU's answer-token NLL (Maini et al. 2024) on retain batches.
    """
    def loss(params, batch, frozen):
        x, y, _ = batch["retain"]
        return answer_nll(ctx, params, x, y)

    return ctx.fit(loss, {"retain": ctx.stream("retain", ctx.retain, hp.retain_batch_size)}, hp.epochs, hp.optim(),
                   desc="finetune")
