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

from ..engine import Params
from .base import Context


def diagonal_fisher(ctx: Context, positions, batch_size: int, params: Params | None = None,
                    name: str = "fisher") -> Params:
    """I[p] for each of the N models (leading dim N), over one pass of training-set `positions`.

    Vectorised: one `vmap(grad(loss))` call per batch for all N models at once. Model i's batches are one
    epoch of the stream `ctx.stream(name, positions, batch_size)` (a fixed, per-model shuffled order).
    `params` defaults to the originals. No training happens here.
    """
    params = ctx.originals if params is None else params
    stream = ctx.stream(name, positions, batch_size)
    x, y = ctx.dataset.x_train, ctx.dataset.y_train

    def loss(p, xb, yb):
        return F.cross_entropy(ctx.forward(p, xb), yb)

    per_model_grad = torch.vmap(torch.func.grad(loss))
    detached = {k: v.detach() for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in detached.items()}
    batches = stream.batches(0)
    n_batches = stream.steps_per_epoch
    for _ in range(n_batches):
        idx = next(batches)  # (N, b)
        grads = per_model_grad(detached, x[idx], y[idx])
        for k, g in grads.items():
            total[k] += g.square()
    return {k: v / n_batches for k, v in total.items()}


def output_norm_importance(ctx: Context, positions, batch_size: int, name: str = "importance:lf") -> Params:
    """Label-free importances (Potion's "XALFSSD", reference `ParameterPerturber.calc_importance` with
    label_free=True, x_D=True): for every batch, |∂ (batch mean of ‖f(x)‖₂) / ∂p|, averaged over the batches.
    No labels are read, so importances on poisoned or mislabelled examples are not steered by the wrong
    labels (the "outlier-resistant" variant of Schoepf et al. 2024)."""
    stream = ctx.stream(name, positions, batch_size)
    x = ctx.dataset.x_train

    def loss(p, xb):
        return torch.linalg.vector_norm(ctx.forward(p, xb), dim=-1).mean()

    per_model_grad = torch.vmap(torch.func.grad(loss))
    detached = {k: v.detach() for k, v in ctx.originals.items()}
    total = {k: torch.zeros_like(v) for k, v in detached.items()}
    batches = stream.batches(0)
    for _ in range(stream.steps_per_epoch):
        for k, g in per_model_grad(detached, x[next(batches)]).items():
            total[k] += g.abs()
    return {k: v / stream.steps_per_epoch for k, v in total.items()}
