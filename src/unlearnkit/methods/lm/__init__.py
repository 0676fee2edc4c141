"""Language-model unlearning methods, one file each, registered in LM_REGISTRY (see base.py)."""
from . import (  # noqa: F401
    altpo,
    ceu,
    dpo,
    era,
    filter,
    finetune,
    flat,
    ga,
    ga_kl,
    graddiff,
    guard,
    idk,
    llmu,
    none,
    npo,
    pdu,
    retrain,
    rmu,
    sae_clamp,
    satimp,
    simnpo,
    traced,
    undial,
    wga,
)
from .base import LM_REGISTRY, LMContext, LMLoopParams, RetainParams

__all__ = ["LM_REGISTRY", "LMContext", "LMLoopParams", "RetainParams"]
