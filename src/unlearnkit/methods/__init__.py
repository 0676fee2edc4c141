"""Unlearning methods, one file each, registered by name (see base.py for the contract)."""
from . import (  # noqa: F401
               acdc,
               bad_teacher,
               dmm,
               era,
               filter,
               finetune,
               ga,
               iau,
               l1_sparse,
               laf,
               llmu,
               nablatau,
               neggrad_plus,
               newton,
               none,
               om,
               potion,
               random_labels,
               retrain,
               salun,
               scrub,
               sisa,
               ssd,
)
from .base import (
               REGISTRY,
               Context,
               Ensemble,
               HParams,
               LoopParams,
               Method,
               get_method,
               make_hparams,
               register,
)

__all__ = ["REGISTRY", "Context", "Ensemble", "HParams", "LoopParams", "Method", "get_method", "make_hparams", "register"]
