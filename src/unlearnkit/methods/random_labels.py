from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import EpochStream, Forward, LossFn, Params, derived_seed
from .base import Context, LoopParams, register

LABEL_TAG = 0x524C  # "RL": the stream of each model's random-label draws


@dataclass(frozen=True)
class RandomLabelsParams(LoopParams):
    epochs: float = 2.0
    lr: float = 0.01
    forget_batch_size: int = 32
    retain_weight: float = 1.0  # 0: the forget set alone (Zhang et al. 2024's forgetting by random labels)

    def _checks(self):
        return super()._checks() + [("forget_batch_size", self.forget_batch_size >= 1, "must be >= 1"),
                                    ("retain_weight", self.retain_weight >= 0, "must be >= 0")]


def draw_random_labels(y: torch.Tensor, forget, seeds: list[int], num_classes: int,
                       tag: int = LABEL_TAG) -> torch.Tensor:
    """Per-model training labels, shape (N, n_train): the true labels, except that each forget point gets a
    label drawn uniformly from the num_classes − 1 *other* classes, once, from that model's seed alone."""
    forget = torch.as_tensor(np.asarray(forget), dtype=torch.long)
    labels = y.to(torch.long).expand(len(seeds), -1).clone()
    for i, seed in enumerate(seeds):  # setup only: one draw per model
        g = torch.Generator().manual_seed(derived_seed(seed, tag))
        shift = torch.randint(1, num_classes, (len(forget),), generator=g)
        labels[i, forget] = (y[forget] + shift) % num_classes
    return labels


def relabel_loss(forward: Forward, retain_weight: float = 1.0) -> LossFn:
    """w·CE(S_R batch, true labels) + CE(S_F batch, the model's random labels in frozen["labels"]); with w = 0
    the forget batches alone."""
    def loss(params, batch, frozen):
        xf, _, pf = batch["forget"]
        forget = F.cross_entropy(forward(params, xf), frozen["labels"][pf])
        if not retain_weight:
            return forget
        xr, yr, _ = batch["retain"]
        return retain_weight * F.cross_entropy(forward(params, xr), yr) + forget
    return loss


def relabel_streams(ctx: Context, hp: RandomLabelsParams) -> dict[str, EpochStream]:
    """Retain batches with forget batches cycled beside them (epochs count passes over S_R); with
    retain_weight 0, forget batches alone (epochs count passes over S_F)."""
    forget = {"forget": ctx.stream("forget", ctx.forget, hp.forget_batch_size)}
    if getattr(hp, "retain_weight", 1.0) == 0:
        return forget
    return {"retain": ctx.stream("retain", ctx.retain, hp.batch_size), **forget}


def relabel_frozen(ctx: Context) -> Params:
    return {"labels": draw_random_labels(ctx.dataset.y_train, ctx.forget, ctx.seeds, ctx.dataset.num_classes)}


@register("random-labels", RandomLabelsParams)
def random_labels(ctx: Context, hp: RandomLabelsParams) -> Params:
    """Random labels ("RL"): train S_F with fixed wrong random labels alongside S_R.

    Graves, Nagisetty, Ganesh 2021, "Amnesiac Machine Learning", AAAI 2021 (arXiv 2010.10981): the relabelling
    method the paper calls "unlearning" (its "amnesiac unlearning" is another one, which subtracts stored batch
    updates; baselines named `amnesiac`, as SSD's, are this relabelling). Each forget point gets, per model, a label drawn once (from that model's seed) uniformly from
    the classes other than its true label; then minimise
        CE(f(x_r), y_r) + CE(f(x_f), ỹ_f)
    (batch means, equal weights) over retain batches, with forget batches cycled beside them; `epochs` counts
    passes over S_R.
    Reference code: the SSD/Bad-Teacher `amnesiac` draws labels the same way but concatenates F̃ with R in one
    shuffled loader (Adam 1e-4, 3 epochs); the SalUn/Unlearn-Sparse `RL` redraws labels over all C classes (the
    true one included) every batch and runs a full forget pass, then a full retain pass, per epoch (SGD 0.01,
    10 epochs). Here: fixed labels ≠ y (variant a), interleaved batches, defaults sized for a small MLP.
    With `retain_weight` 0 it is forgetting by random labels alone, as Zhang, Choshen & Andreas 2024
    ("Unforgettable Generalization in Language Models", arXiv 2409.02228, §3) fine-tune: `epochs` then
    count passes over S_F (`unlearnkit generalisation`).
    """
    return ctx.fit(relabel_loss(ctx.forward, hp.retain_weight), relabel_streams(ctx, hp), hp.epochs, hp.optim(),
                   frozen=relabel_frozen(ctx), desc="random-labels")
