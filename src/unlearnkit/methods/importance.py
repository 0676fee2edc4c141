"""Diagonal-Fisher parameter importances of the N models, as SSD and Potion compute them.

Reference (SSD's `calc_importance`, Foster et al. 2024, arXiv 2308.07707): for every batch, the gradient
of the batch-MEAN cross-entropy is squared, and the squares are averaged over the batches:

    I[p] = (1/#batches) · Σ_batches (∂ CE_batch-mean / ∂p)²       (a partial last batch counts as one).

This is not the per-example empirical Fisher: it depends on the batch size (larger batches average the
per-example gradients before squaring, shrinking I). Importances that are compared with each other (SSD's
I_D against I_F) must therefore be computed with the same batch size. Labels are the training labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import Params, accumulate
from .base import Context


def diagonal_fisher(ctx: Context, positions, batch_size: int, params: Params | None = None,
                    name: str = "fisher") -> Params:
    """I[p] for each of the N models (leading dim N), over one pass of training-set `positions`.

    Model i's batches are one epoch of the stream `ctx.stream(name, positions, batch_size)` (a fixed,
    per-model shuffled order); the engine vmaps the one-model function over the N models, on the run's
    device. `params` defaults to the originals. No training happens here.
    """
    def squared_grad(p: Params, xb: torch.Tensor, yb: torch.Tensor) -> Params:
        g = torch.func.grad(lambda q: F.cross_entropy(ctx.forward(q, xb), yb))(p)
        return {k: v.square() for k, v in g.items()}

    total, batches = accumulate(squared_grad, ctx.originals if params is None else params,
                                ctx.stream(name, positions, batch_size), ctx.train_data)
    return {k: v / batches for k, v in total.items()}


def output_norm_importance(ctx: Context, positions, batch_size: int, name: str = "importance:lf") -> Params:
    """Label-free importances (Potion's "XALFSSD", reference `ParameterPerturber.calc_importance` with
    label_free=True, x_D=True): for every batch, |∂ (batch mean of ‖f(x)‖₂) / ∂p|, averaged over the batches.
    No labels are read, so importances on poisoned or mislabelled examples are not steered by the wrong
    labels (the "outlier-resistant" variant of Schoepf et al. 2024)."""
    def abs_grad(p: Params, xb: torch.Tensor) -> Params:
        g = torch.func.grad(lambda q: torch.linalg.vector_norm(ctx.forward(q, xb), dim=-1).mean())(p)
        return {k: v.abs() for k, v in g.items()}

    total, batches = accumulate(abs_grad, ctx.originals, ctx.stream(name, positions, batch_size),
                                (ctx.dataset.x_train,))
    return {k: v / batches for k, v in total.items()}
