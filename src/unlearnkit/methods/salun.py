from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine import Params, accumulate
from .base import Context, register
from .random_labels import (
    RandomLabelsParams,
    relabel_frozen,
    relabel_loss,
    relabel_streams,
)


@dataclass(frozen=True)
class SalUnParams(RandomLabelsParams):
    epochs: float = 2.0
    lr: float = 0.02
    mask_ratio: float = 0.5
    mask_batch_size: int = 256

    def _checks(self):
        return super()._checks() + [("mask_ratio", 0 < self.mask_ratio <= 1, "must be in (0, 1]"),
                                    ("mask_batch_size", self.mask_batch_size >= 1, "must be >= 1")]


def forget_gradient(ctx: Context, batch_size: int = 256) -> Params:
    """Per-model Σ over forget batches of ∇θ CE(batch mean) at the originals (stacked like the parameters)."""
    def batch_grad(params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        return torch.func.grad(lambda p: F.cross_entropy(ctx.forward(p, x), y))(params)

    total, _ = accumulate(batch_grad, ctx.originals, ctx.stream("salun-mask", ctx.forget, batch_size), ctx.train_data)
    return total


def saliency_mask(grads: Params, ratio: float) -> Params:
    """Per model, 1 on the top ⌊ratio·P⌋ of |g| ranked globally over all P parameters (ties by sort order)."""
    names = list(grads)
    n = grads[names[0]].shape[0]
    flat = torch.cat([grads[k].abs().reshape(n, -1) for k in names], dim=1)
    k = int(ratio * flat.shape[1])
    top = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
    keep = torch.zeros_like(flat).scatter_(1, top, 1.0)
    out, at = {}, 0
    for name in names:
        size = grads[name][0].numel()
        out[name] = keep[:, at:at + size].reshape(grads[name].shape)
        at += size
    return out


@register("salun", SalUnParams)
def salun(ctx: Context, hp: SalUnParams) -> Params:
    """SalUn: random-label training on S_F beside S_R, updating only the forget-salient weights.

    Fan, Liu, Zhang, Wong, Wei, Liu 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency
    in Both Image Classification and Generation", ICLR 2024 (arXiv 2310.12508), §4 (Eqs. 3–6).
    Mask (per model): g = Σ_batches ∇θ CE(f(x_f), y_f) at θo (batch means over shuffled forget batches of
    `mask_batch_size`, as generate_mask.py; raw sum, no squaring); m = 1 on the top ⌊mask_ratio·P⌋ of |g| ranked
    globally over all P parameters of that model (the paper's γ = median ↔ ratio 0.5).
    Unlearning: the `random-labels` objective CE(f(x_r), y_r) + CE(f(x_f), ỹ_f) with fixed labels ỹ ≠ y, where
    coordinates with m = 0 stay bitwise equal to θo (the reference's post-2026 fix #33; before it weight decay
    and momentum still moved them). Deviation: the reference RL redraws labels over all classes every batch and
    runs forget and retain passes one after the other (10 epochs, SGD lr 0.013); we reuse random-labels'
    interleaved, fixed, always-wrong labels and small-MLP defaults.
    """
    mask = saliency_mask(forget_gradient(ctx, hp.mask_batch_size), hp.mask_ratio)
    return ctx.fit(relabel_loss(ctx.forward, hp.retain_weight), relabel_streams(ctx, hp), hp.epochs, hp.optim(),
                   frozen=relabel_frozen(ctx), update_mask=mask, desc="salun")
