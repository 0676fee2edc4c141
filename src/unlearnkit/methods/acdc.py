from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from ..engine import Optim, Params, predict
from ..metrics import accuracy
from .base import Context, HParams, register


@dataclass(frozen=True)
class ACDCParams(HParams):
    iterations: int = 150        # each: one ascent step on S_F, then one descent step on the rest
    lr_ascent: float = 2.5e-3
    lr_descent: float = 1.5e-2
    batch_size: int = 128        # descent batches (S_R)
    forget_batch_size: int = 64  # ascent batches (S_F)
    eval_every: int = 10         # iterations between validation checks (the best model is kept)

    search_space: ClassVar[dict] = {"lr_ascent": ("log", 1e-4, 1e-2), "lr_descent": ("log", 1e-3, 1e-1),
                                    "iterations": ("int", 20, 300)}

    def _checks(self):
        return [("iterations", self.iterations >= 1, "must be >= 1"),
                ("lr_ascent", self.lr_ascent > 0, "must be > 0"), ("lr_descent", self.lr_descent > 0, "must be > 0"),
                ("batch_size", self.batch_size >= 1, "must be >= 1"),
                ("forget_batch_size", self.forget_batch_size >= 1, "must be >= 1"),
                ("eval_every", self.eval_every >= 1, "must be >= 1")]


@register("acdc", ACDCParams)
def acdc(ctx: Context, hp: ACDCParams) -> Params:
    """AC↯DC: alternate one Adam step of ascent on S_F with one of descent on the rest; keep the best.

    Kolipaka et al. 2024 ("Corrective unlearning for graph neural networks", repository
    varshitakolipaka/corrective-unlearning-for-gnns; the "ascent + CF" baseline the Gradient Routing review
    asks for): each iteration one step maximising CE on an S_F batch, then one minimising CE on an S_R
    batch, with separate Adam optimisers whose learning rates fall linearly to 0 over the iterations
    (defaults 2.5e-3 and 1.5e-2, 150 iterations; the authors' tuned descent rate is 10-400× the ascent
    rate). Every `eval_every` iterations each model is scored on the validation set and the best one seen
    is kept (the reference keeps the best model on validation); the originals are not a candidate (on a
    poison, which costs no clean accuracy, they would often win and nothing would be unlearned).
    Deviations: graphs there are full-batch; here each step draws one minibatch of a fresh per-model
    shuffle; the model is chosen by validation accuracy, per model.
    """
    x_val, y_val = ctx.dataset.x_val, ctx.dataset.y_val
    best, best_acc = None, None  # the candidates are the models after each check, not the originals
    model, up, down = ctx.originals, {}, {}
    for t in range(hp.iterations):
        decay = 1 - t / hp.iterations
        model = ctx.one_step(_ascent(ctx), f"ascent{t}", ctx.forget, hp.forget_batch_size,
                             Optim("adam", hp.lr_ascent * decay, 0.0, 0.0, "constant"), model, up)
        model = ctx.one_step(_descent(ctx), f"descent{t}", ctx.retain, hp.batch_size,
                             Optim("adam", hp.lr_descent * decay, 0.0, 0.0, "constant"), model, down)
        if (t + 1) % hp.eval_every == 0 or t + 1 == hp.iterations:
            best, best_acc = ctx.keep_better(best, best_acc, model, accuracy(predict(ctx.forward, model, x_val), y_val))
    return best


def _ascent(ctx: Context):
    def loss(params, batch, frozen):
        x, y, _ = next(iter(batch.values()))
        return -F.cross_entropy(ctx.forward(params, x), y)
    return loss


def _descent(ctx: Context):
    def loss(params, batch, frozen):
        x, y, _ = next(iter(batch.values()))
        return F.cross_entropy(ctx.forward(params, x), y)
    return loss

