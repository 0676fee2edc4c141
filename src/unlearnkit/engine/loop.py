"""The one training loop. Every zoo arm and every unlearning method runs through `fit`.

A loss is written for ONE model as a function of its parameters (torch.func style). `fit` vmaps it
over the N models' stacked parameters and sums the N losses: model i's gradient then depends on model
i alone, and because SGD and Adam update each coordinate on its own, one optimizer over the stacked
tensors is exactly N independent optimizers — at the speed of batched matrix products.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..errors import Diverged, UnlearnkitError
from .flops import StepExtrapolator
from .optim import StackedAdam, StackedSGD
from .progress import steps as progress
from .streams import EpochStream

Params = dict[str, torch.Tensor]
# batch[stream] = (inputs, labels, dataset positions) of one model's minibatch from that stream
Batch = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LossFn = Callable[[Params, Batch, Params], torch.Tensor]


class Forward:
    """Calls a template module with any one model's parameters: f(params, x) -> logits."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (x,))


@dataclass(frozen=True)
class Optim:
    """Optimizer and learning-rate schedule of a loop (`linear`: decays to zero over the loop)."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"

    def __post_init__(self):
        if self.name not in ("sgd", "adam"):
            raise UnlearnkitError(f"optimizer must be 'sgd' or 'adam', got {self.name!r}")
        if self.schedule not in ("linear", "constant"):
            raise UnlearnkitError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")

    def build(self, tensors: list[torch.Tensor]) -> StackedSGD | StackedAdam:
        if self.name == "adam":
            return StackedAdam(tensors, self.lr, self.weight_decay)
        return StackedSGD(tensors, self.lr, self.momentum, self.weight_decay)

    def lr_at(self, step: int, total: int) -> float:
        return self.lr * (1 - step / total) if self.schedule == "linear" else self.lr


@dataclass
class Checkpoint:
    """Where a loop stands after a whole epoch: enough to resume it exactly."""

    epoch: int
    params: Params
    optimizer: dict


def fit(
    loss_fn: LossFn,
    params: Params,
    streams: dict[str, EpochStream],
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    optim: Optim,
    frozen: Params | None = None,
    update_mask: Params | None = None,
    resume: Checkpoint | None = None,
    on_epoch: Callable[[Checkpoint], None] | None = None,
    desc: str | None = None,
    carry: dict | None = None,
) -> Params:
    """Run `steps` optimizer steps of `loss_fn` on N models at once; return their new parameters.

    streams: named minibatch streams; the first one sets what an epoch is (for `on_epoch`/`resume`),
        the others cycle alongside it (e.g. forget batches next to retain batches).
    frozen: per-model tensors (leading dim N) the loss reads but does not train (teacher parameters,
        per-example targets indexed by dataset position, random labels).
    update_mask: per-parameter 0/1 tensors; coordinates where it is 0 never change (SalUn-style).
    carry: a dict that keeps the optimizer state from one `fit` to the next (key "optimizer"), for
        methods that alternate losses or change a coefficient between phases (SCRUB, l1-sparse).
    Raises `Diverged` at the first non-finite loss: the caller decides what a divergence means.
    """
    x, y = data
    primary = next(iter(streams.values()))
    per_epoch = primary.steps_per_epoch
    start_epoch = resume.epoch if resume else 0
    # a checkpoint keeps the loop's own layout (see _like_gradients), so a resumed step computes what the
    # uninterrupted one did; anything else starts from the one canonical layout
    source = _snapshot(resume.params) if resume else _detached(params)
    live = {k: v.requires_grad_(True) for k, v in source.items()}
    opt = None
    frozen = frozen or {}
    batched_loss = torch.vmap(loss_fn, in_dims=(0, 0, 0), randomness="error")
    iters = {name: s.batches(start_epoch) for name, s in streams.items()}
    first = start_epoch * per_epoch
    flops = StepExtrapolator()
    for step in progress(first, steps, desc):
        idx = {name: next(it) for name, it in iters.items()}
        with flops.step(sum(i.numel() for i in idx.values())):
            losses = batched_loss(live, {name: (x[i], y[i], i) for name, i in idx.items()}, frozen)
            bad = ~torch.isfinite(losses.detach())
            if bad.any():
                raise Diverged(step, bad.nonzero().flatten().tolist())
            if opt is not None:
                opt.zero_grad()
            losses.sum().backward()
            if opt is None:  # first step: now that gradients exist, lay parameters out like them
                live = _like_gradients(live)
                opt = optim.build(list(live.values()))
                if resume:
                    opt.load_state_dict(resume.optimizer)
                elif carry and "optimizer" in carry:
                    opt.load_state_dict(carry["optimizer"])
            opt.lr = optim.lr_at(step, steps)
            if update_mask is None:
                opt.step()
            else:
                before = {k: v.detach().clone() for k, v in live.items()}
                opt.step()
                with torch.no_grad():
                    for k, v in live.items():
                        v.copy_(torch.where(update_mask[k].bool(), v, before[k]))
        if on_epoch and (step + 1) % per_epoch == 0:
            on_epoch(Checkpoint((step + 1) // per_epoch, _snapshot(live), opt.state_dict()))
    if carry is not None and opt is not None:
        carry["optimizer"] = opt.state_dict()
    return _detached(live)


def _like_gradients(live: Params) -> Params:
    """Parameters re-created in their gradients' memory layout (gradients kept).

    Under vmap a Linear weight's gradient arrives transposed; a parameter laid out differently makes
    autograd copy every gradient into its layout on every step (~13% of a zoo step on CPU).
    """
    out = {}
    for k, v in live.items():
        g = v.grad
        if g is not None and g.stride() != v.stride():
            v2 = torch.empty_strided(v.shape, g.stride(), dtype=v.dtype).copy_(v.detach()).requires_grad_(True)
            v2.grad = g
            v = v2
        out[k] = v
    return out


def _snapshot(params: Params) -> Params:
    """Copies in the same memory layout (a checkpoint of the live loop)."""
    return {k: v.detach().clone() for k, v in params.items()}


def _detached(params: Params) -> Params:
    """Fresh, contiguous copies. Every ensemble leaves (and enters) a loop in one memory layout, so what
    is computed from it next is bit-for-bit the same whether it was trained in this process, loaded
    from the cache or resumed from a checkpoint (a layout or alignment can change a kernel's summation
    order, and a margin on a histogram edge then changes its KLoM by nats)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in params.items()}


@torch.no_grad()
def predict(forward: Forward, params: Params, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Logits of N models on shared inputs x: shape (N, len(x), classes)."""
    call = torch.vmap(forward, in_dims=(0, None))
    return torch.cat([call(params, x[i:i + chunk]) for i in range(0, len(x), chunk)], dim=1)
