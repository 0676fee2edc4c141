"""The shared engine: one training loop vectorised over the N models of an arm."""
from .flops import uncounted
from .loop import Batch, Checkpoint, Forward, LossFn, Optim, Params, accumulate, fit, predict
from .streams import EpochStream, derived_seed

__all__ = ["Batch", "Checkpoint", "EpochStream", "Forward", "LossFn", "Optim", "Params", "accumulate", "derived_seed",
           "fit", "predict", "uncounted"]
