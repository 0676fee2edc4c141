from ..engine import Params
from ..zoo import RETRAIN_SEEDS, arm_seeds
from .base import Context, HParams, register


@register("retrain")
def retrain(ctx: Context, hp: HParams) -> Params:
    """Retrain from scratch on S_R with seeds disjoint from the reference oracles': exact, the noise floor.

    Its KLoM against the reference oracles is what a perfect method scores with N models per arm.
    """
    return retrained(ctx)


def retrained(ctx: Context) -> Params:
    """The retrain arm: N models trained on S_R from the retrain seeds (cached by the zoo)."""
    return ctx.train_from_scratch(ctx.retain, arm_seeds(RETRAIN_SEEDS, ctx.n_models, ctx.run_seed), "retrain")
