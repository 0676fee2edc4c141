from dataclasses import dataclass

from ...engine import Params
from ...models import bpr_loss
from ..base import REC_REGISTRY, Context, register
from .base import BPRLoopParams


@dataclass(frozen=True)
class RecFinetuneParams(BPRLoopParams):
    epochs: float = 10.0  # passes over the retained interactions (a quarter of rec-mf's training)
    lr: float = 3e-3


@register("finetune", RecFinetuneParams, REC_REGISTRY)
def finetune(ctx: Context, hp: RecFinetuneParams) -> Params:
    """Fine-tune on the retained interactions with BPR (the recommender's "CF" baseline).

    MMRecUn's forward term alone (Sinha et al. 2024): what the retain objective does without the reverse
    BPR on the forget set, which it must beat.
    """
    def loss(params, batch, frozen):
        x, _, _ = batch["retain"]
        return bpr_loss(ctx.forward(params, x))

    return ctx.fit(loss, {"retain": ctx.stream("retain", ctx.retain, hp.batch_size)}, hp.epochs, hp.optim(),
                   desc="finetune")
