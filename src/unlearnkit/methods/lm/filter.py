from ...engine import Params
from ...zoo import RETRAIN_SEEDS, arm_seeds
from ..base import HParams, retrained_on_retain
from .base import LM_REGISTRY, LMContext, register


@register("filter", HParams, LM_REGISTRY, scratch=retrained_on_retain)
def filter_(ctx: LMContext, hp: HParams) -> Params:
    """Data filtering: retrain from scratch on every item except those identified, D ∖ S_F.

    Gradient Routing's gold standard (Cloud et al. 2024, arXiv 2410.04332, "data filtering") and
    Corrective Machine Unlearning's exact unlearning of what is known (Goel et al., TMLR 2024), as the
    classifier `filter`: in an ordinary run it is the retrain arm; in `unlearnkit corrective` it keeps the
    unidentified forget items and reaches the oracles (retrained without all of them) only at f = 1.
    """
    return ctx.train_from_scratch(ctx.retain, arm_seeds(RETRAIN_SEEDS, ctx.n_models, ctx.run_seed), "filter")
