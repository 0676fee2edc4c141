from ..engine import Params
from .base import Context, HParams, register, retrained_on_retain
from .retrain import retrained


@register("filter", scratch=retrained_on_retain)
def filter_(ctx: Context, hp: HParams) -> Params:
    """Data filtering: retrain from scratch on everything except what was identified, D ∖ S_F.

    The gold standard of Gradient Routing (Cloud et al. 2024, arXiv 2410.04332, its "data filtering"
    control) and Corrective Machine Unlearning's exact unlearning of what is known (Goel et al., TMLR 2024):
    exact for S_F, but it keeps every manipulated example nobody identified. In an ordinary run (the whole
    forget set known) it is the retrain arm itself, at the noise floor; in `unlearnkit corrective` the
    oracles and the noise floor are retrained on the corrected data D ∖ M, and filtering reaches them only
    when all of M is identified. Its models go through the zoo (the retrain seeds, cached).
    """
    return retrained(ctx)
