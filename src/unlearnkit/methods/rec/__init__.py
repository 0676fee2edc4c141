"""Recommendation unlearning methods, registered in REC_REGISTRY (see ../base.py for the contract).

A recommendation task's models score interaction rows [user, item, negatives] (`data.interactions`) and
are trained with BPR, so its methods write BPR losses. `none` and `retrain` are the classifier
registry's own functions: neither depends on the objective (retraining goes through the zoo, which
trains each task with its own objective).
"""
from ..base import REC_REGISTRY, HParams, register
from ..none import none
from ..retrain import retrain
from . import finetune, mmrecun  # noqa: F401

register("none", HParams, REC_REGISTRY)(none)
register("retrain", HParams, REC_REGISTRY)(retrain)

__all__ = ["REC_REGISTRY"]
