from ...engine import Params
from ..base import HParams
from .base import LM_REGISTRY, LMContext, register


@register("none", HParams, LM_REGISTRY)
def none(ctx: LMContext, hp: HParams) -> Params:
    """Do nothing: the original models (how far the forget set is from forgotten)."""
    return ctx.originals
