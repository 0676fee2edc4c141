from ...engine import Params
from ...zoo import RETRAIN_SEEDS, arm_seeds
from ..base import HParams
from .base import LM_REGISTRY, LMContext, register


@register("retrain", HParams, LM_REGISTRY)
def retrain(ctx: LMContext, hp: HParams) -> Params:
    """Retrain from scratch on S_R with seeds disjoint from the oracles': exact, the noise floor.

    TOFU's "retain model" (Maini et al. 2024 §2.5): its forget quality against the oracles is what a
    perfect method scores at this N.
    """
    return ctx.train_from_scratch(ctx.retain, arm_seeds(RETRAIN_SEEDS, ctx.n_models, ctx.run_seed), "retrain")
