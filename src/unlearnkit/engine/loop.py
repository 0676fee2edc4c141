"""The one training loop. Every zoo arm and every unlearning method runs through `fit`.

A loss is written for ONE model as a function of its parameters (torch.func style). `fit` vmaps it
over the N models' stacked parameters and sums the N losses: model i's gradient then depends on model
i alone, and because SGD and Adam update each coordinate on its own, one optimizer over the stacked
tensors is exactly N independent optimizers — at the speed of batched matrix products. Where vmap is
slow (convolutions on a CPU: `engine.compute`, `ensemble`), the same loss runs model by model on slices
of the same stacked tensors, and the same stacked optimizer updates all N at once.
"""
from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from ..errors import Diverged, UnlearnkitError
from .compute import current
from .flops import StepExtrapolator, uncounted
from .heap import keep_freed_memory
from .observe import current as current_observer
from .optim import StackedAdam, StackedSGD, StackedSignSGD, dense
from .progress import steps as progress
from .streams import EpochStream

Params = dict[str, torch.Tensor]
# batch[stream] = (inputs, labels, dataset positions) of one model's minibatch from that stream
Batch = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LossFn = Callable[[Params, Batch, Params], torch.Tensor]


class Forward:
    """Calls a template module with any one model's parameters: f(params, x) -> float32 logits.

    Parameters are cast to the inputs' dtype (a no-op in float32; in bf16 it casts a frozen float32
    teacher, while the trained weights already arrive in bfloat16), and logits come back in float32 so
    that every loss is computed in float32 whatever the products were computed in."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, _cast(params, x), (x,)).float()

    @functools.cached_property
    def body(self) -> nn.Module:
        """The network without its last layer: `module[:-1]` (an nn.Sequential slice, and a resnet9's, keeps
        its parameter names, so a model's parameters call it as they are)."""
        return self.module[:-1]

    @functools.cached_property
    def head_names(self) -> frozenset[str]:
        """Names of the last layer's parameters (the classifier head): those the body does not have."""
        body = {k for k, _ in self.body.named_parameters()}
        return frozenset(k for k, _ in self.module.named_parameters() if k not in body)

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """One model's penultimate features, (batch, features) in float32: what its last layer reads (the
        embedding of clustered forget sets, LAF's representations). `params` may hold the head's too."""
        body = {k: v for k, v in params.items() if k not in self.head_names}
        return functional_call(self.body, _cast(body, x), (x,)).flatten(1).float()


def _cast(params: Params, x: torch.Tensor) -> Params:
    """Parameters in the inputs' floating dtype (see Forward)."""
    if not x.is_floating_point():
        return params
    return {k: v.to(x.dtype) if v.is_floating_point() else v for k, v in params.items()}


@dataclass(frozen=True)
class Optim:
    """Optimizer and learning-rate schedule of a loop (`linear`: decays to zero over the loop). `sign` is
    sign-SGD (momentum and weight decay unused).

    `unit_rows` names parameters whose rows (last dim) are kept on the unit sphere, as a sparse
    autoencoder's decoder (Bricken et al. 2023, "Towards Monosemanticity"): before every step the
    gradient's component along each row is removed (the optimizer sees the tangent gradient), and after it
    the rows are renormalised."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    unit_rows: tuple[str, ...] = ()

    def __post_init__(self):
        if self.name not in ("sgd", "adam", "sign"):
            raise UnlearnkitError(f"optimizer must be 'sgd', 'adam' or 'sign', got {self.name!r}")
        if self.schedule not in ("linear", "constant"):
            raise UnlearnkitError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")

    def build(self, tensors: list[torch.Tensor], shadows: list[torch.Tensor] | None = None,
              cpu: bool = True) -> StackedSGD | StackedAdam | StackedSignSGD:
        if self.name == "adam":
            return StackedAdam(tensors, self.lr, self.weight_decay, shadows, cpu)
        if self.name == "sign":
            return StackedSignSGD(tensors, self.lr, 0.0, shadows, cpu)
        return StackedSGD(tensors, self.lr, self.momentum, self.weight_decay, shadows, cpu)

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
    checkpoint_every: float = 0.0,
    desc: str | None = None,
    carry: dict | None = None,
) -> Params:
    """Run `steps` optimizer steps of `loss_fn` on N models at once; return their new parameters.

    Runs on the current `engine.compute` (device and precision; set by a run's config): everything is
    moved there and the result comes back on the CPU in float32. In bf16 the loss sees bfloat16 copies
    of the weights and inputs, and the optimizer updates float32 masters (mixed precision).

    streams: named minibatch streams; the first one sets what an epoch is (for `on_epoch`/`resume`),
        the others cycle alongside it (e.g. forget batches next to retain batches).
    frozen: per-model tensors (leading dim N) the loss reads but does not train (teacher parameters,
        per-example targets indexed by dataset position, random labels).
    update_mask: per-parameter 0/1 tensors; coordinates where it is 0 never change (SalUn-style).
    on_epoch: called with a Checkpoint at the end of an epoch, at most once per `checkpoint_every` seconds
        (a checkpoint of a large ensemble takes a fraction of a second to copy and write).
    carry: a dict that keeps the optimizer state from one `fit` to the next (key "optimizer"), for
        methods that alternate losses or change a coefficient between phases (SCRUB, l1-sparse).
    Raises `Diverged` at the first non-finite loss: the caller decides what a divergence means.
    """
    keep_freed_memory()
    if missing := [k for k in optim.unit_rows if k not in params]:
        raise UnlearnkitError(f"Optim.unit_rows names {missing}, which the parameters do not have")
    compute = current()
    dev = torch.device(compute.device)
    x, y = _placed(data[0], dev, compute.dtype), _placed(data[1], dev)
    frozen = _placed(frozen or {}, dev)
    mask = {k: _placed(v, dev).bool() for k, v in update_mask.items()} if update_mask is not None else None
    primary = next(iter(streams.values()))
    per_epoch = primary.steps_per_epoch
    start_epoch = resume.epoch if resume else 0
    # a checkpoint keeps the loop's own layout (see _like_gradients), so a resumed step computes what the
    # uninterrupted one did; anything else starts from the one canonical layout
    source = _snapshot(resume.params) if resume else _detached(params)
    master = {k: v.to(dev) for k, v in source.items()}  # float32 weights the optimizer updates
    mixed = compute.dtype != torch.float32
    live = _compute_copies(master, compute.dtype)          # what the loss sees and differentiates
    opt = None
    batched_loss = torch.vmap(loss_fn, in_dims=(0, 0, 0), randomness="error")
    autocast = torch.autocast(dev.type, torch.bfloat16, enabled=compute.precision == "bf16")
    iters = {name: s.batches(start_epoch) for name, s in streams.items()}
    first = start_epoch * per_epoch
    flops = StepExtrapolator()
    observer = current_observer()
    observer = observer if observer is not None and observer.watches(master) else None
    last_checkpoint = time.perf_counter()
    looped = compute.ensemble == "loop"
    buffers = {k: torch.zeros_like(v) for k, v in live.items()} if looped else {}  # stacked gradients, model by model
    for step in progress(first, steps, desc):
        idx = {name: next(it).to(dev) for name, it in iters.items()}
        with flops.step(sum(i.numel() for i in idx.values())):
            if looped:
                _loop_step(loss_fn, live, buffers, x, y, idx, frozen, step, autocast)
            else:
                with autocast:
                    losses = batched_loss(live, {name: (_rows(x, i), _rows(y, i), i) for name, i in idx.items()},
                                          frozen)
                bad = ~torch.isfinite(losses.detach())
                if bad.any():
                    raise Diverged(step, bad.nonzero().flatten().tolist())
                if opt is not None:
                    opt.zero_grad()
                layouts: dict[str, tuple] = {}
                hooks = [] if opt is not None else [v.register_hook(lambda g, k=k, seen=layouts: seen.__setitem__(
                    k, g.stride())) for k, v in live.items()]
                losses.sum().backward()
                for h in hooks:
                    h.remove()
            if opt is None:  # first step: now that gradients exist, lay parameters out like them
                if not looped:
                    live = _like_gradients(live, layouts)
                master = {k: _laid_out_like(m, live[k]) for k, m in master.items()} if mixed else live
                opt = optim.build(list(master.values()), list(live.values()) if mixed else None,
                                  cpu=dev.type == "cpu")
                if resume:
                    opt.load_state_dict(_placed(resume.optimizer, dev))
                elif carry and "optimizer" in carry:
                    opt.load_state_dict(_placed(carry["optimizer"], dev))
        opt.lr = optim.lr_at(step, steps)
        with uncounted():  # elementwise: no FLOPs to count (and a compiled update runs outside the counter)
            _tangent_gradients(optim.unit_rows, live, master)
            if mask is None:
                opt.step()
            else:
                before = {k: v.detach().clone() for k, v in master.items()}
                opt.step()
                with torch.no_grad():
                    for k, v in master.items():
                        v.copy_(torch.where(mask[k], v, before[k]))
                        if mixed:
                            live[k].copy_(v)
            _renormalised_rows(optim.unit_rows, live, master, mixed)
        if observer is not None:
            observer.after_step(master)
        if on_epoch and (step + 1) % per_epoch == 0 and time.perf_counter() - last_checkpoint >= checkpoint_every:
            on_epoch(Checkpoint((step + 1) // per_epoch, _snapshot(master), _placed(opt.state_dict(), "cpu")))
            last_checkpoint = time.perf_counter()
    if carry is not None and opt is not None:
        carry["optimizer"] = _placed(opt.state_dict(), "cpu")
    return _detached(master)


def _loop_step(loss_fn: LossFn, live: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor,
               idx: dict[str, torch.Tensor], frozen: Params, step: int, autocast) -> None:
    """One step of the N models one after another (`ensemble="loop"`): model i's loss on its own rows and
    on slices of the stacked tensors, its gradient written into slice i of `buffers`, which become the
    stacked tensors' `.grad` — None for a parameter the loss does not use, as vmap's backward leaves it
    (the optimizer then skips it). Raises `Diverged` with every model whose loss is not finite, before
    any model is updated."""
    bad, used = [], set()
    for i in range(len(next(iter(live.values())))):
        own = {k: v[i].detach().requires_grad_(True) for k, v in live.items()}
        batch = {name: (x.index_select(0, j[i]), y.index_select(0, j[i]), j[i]) for name, j in idx.items()}
        with autocast:  # the forward only, as for vmap: the backward runs in the forward's dtypes by itself
            loss = loss_fn(own, batch, tree_map(lambda t: t[i], frozen))
        if not torch.isfinite(loss.detach()):
            bad.append(i)
            continue
        for k, g in zip(own, torch.autograd.grad(loss, list(own.values()), allow_unused=True)):
            if g is not None:
                buffers[k][i].copy_(g)
                used.add(k)
    if bad:
        raise Diverged(step, bad)
    for k, v in live.items():
        v.grad = buffers[k] if k in used else None


@torch.no_grad()
def _tangent_gradients(names: tuple[str, ...], live: Params, master: Params) -> None:
    """g ← g − ⟨g, w⟩ w per row of each parameter in `names` (rows unit-norm): what is left moves along
    the sphere (`Optim.unit_rows`). Computed in float32 against the master weights."""
    for k in names:
        g = live[k].grad
        if g is not None:
            g32, w = g.float(), master[k]
            g.copy_(g32 - (g32 * w).sum(-1, keepdim=True) * w)


@torch.no_grad()
def _renormalised_rows(names: tuple[str, ...], live: Params, master: Params, mixed: bool) -> None:
    """Rows of each parameter in `names` back to unit norm after a step (and its bfloat16 copy)."""
    for k in names:
        master[k].div_(master[k].norm(dim=-1, keepdim=True))
        if mixed:
            live[k].copy_(master[k])


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for an (N, batch) index: one flat index_select, a row copy per example (advanced indexing
    took 3× as long for 100 models' Fashion-MNIST batches, ~2.4 ms of a 45 ms bf16 step)."""
    return t.index_select(0, idx.flatten()).view(*idx.shape, *t.shape[1:])


def _placed(t, dev, dtype: torch.dtype | None = None):
    """`t` (a tensor, or a dict or list of them, as optimizer state and frozen teachers are) on device
    `dev`; floating tensors in `dtype` if given (inputs are cast once per loop); anything else as it is."""
    if isinstance(t, dict):
        return {k: _placed(v, dev, dtype) for k, v in t.items()}
    if isinstance(t, list):
        return [_placed(v, dev, dtype) for v in t]
    if not isinstance(t, torch.Tensor):
        return t
    if dtype is not None and t.is_floating_point():
        return t.to(dev, dtype)
    return t.to(dev)


def _compute_copies(master: Params, dtype: torch.dtype) -> Params:
    """The tensors the loss is differentiated with: the float32 weights themselves, or bfloat16 copies
    that the optimizer refreshes from the float32 master after every update (mixed precision)."""
    if dtype == torch.float32:
        return {k: v.requires_grad_(True) for k, v in master.items()}
    return {k: v.detach().to(dtype).requires_grad_(True) for k, v in master.items()}


def _laid_out_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t`'s values in `like`'s memory layout, so the optimizer updates both slice by slice."""
    return t if t.stride() == like.stride() else _in_layout(t, like.stride())


def _in_layout(t: torch.Tensor, stride) -> torch.Tensor:
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t.detach())


def _like_gradients(live: Params, layouts: dict[str, tuple]) -> Params:
    """Parameters re-created in the memory layout their gradients arrive in (gradients kept).

    Under vmap a Linear weight's gradient arrives transposed. Autograd hands a gradient over without a
    copy only when it matches its parameter's layout; otherwise it copies every gradient on every step
    (~20% of a zoo step on CPU). `layouts` holds the strides seen by a hook before that copy.
    """
    out = {}
    for k, v in live.items():
        stride = layouts.get(k)
        if stride is not None and stride != v.stride() and dense(v.shape, stride):
            v2 = _in_layout(v, stride).requires_grad_(True)
            v2.grad = _in_layout(v.grad, stride)
            v = v2
        out[k] = v
    return out


def _snapshot(params: Params) -> Params:
    """Copies in the same memory layout (a checkpoint of the live loop), on the CPU."""
    return {k: (v.detach().clone() if v.device.type == "cpu" else v.detach().to("cpu")) for k, v in params.items()}


def _detached(params: Params) -> Params:
    """Fresh, contiguous copies. Every ensemble leaves (and enters) a loop in one memory layout, so what
    is computed from it next is bit-for-bit the same whether it was trained in this process, loaded
    from the cache or resumed from a checkpoint (a layout or alignment can change a kernel's summation
    order, and a margin on a histogram edge then changes its KLoM by nats)."""
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in params.items()}


@torch.no_grad()
def predict(forward: Forward, params: Params, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Logits of N models on shared inputs x: shape (N, len(x), classes), on the CPU (or, for
    `forward.embed`, their embeddings: any f(params, x) of one model).

    Computed on the run's device in float32 whatever the training precision: margins are what every
    metric measures. Inputs go in chunks of about 32K examples × models (256 examples for 100 models):
    large chunks spill the activations out of cache (2048 was 1.4× slower at N = 100 on a 2-core CPU)."""
    n_models = len(next(iter(params.values())))
    chunk = chunk or max(64, min(2048, 32768 // max(1, n_models)))
    dev = torch.device(current().device)
    params = {k: v.to(dev) for k, v in params.items()}
    call = torch.vmap(forward, in_dims=(0, None))
    return torch.cat([call(params, x[i:i + chunk].to(dev)).cpu() for i in range(0, len(x), chunk)], dim=1)


@torch.no_grad()
def accumulate(fn: Callable[..., Params], params: Params, stream: EpochStream,
               data: tuple[torch.Tensor, ...]) -> tuple[Params, int]:
    """Σ over one epoch of `stream` of fn(params, *rows), for N models at once, and the number of batches.

    `fn` is written for ONE model: its parameters and its minibatch's rows of each tensor in `data`
    (inputs, labels), returning a dict of tensors (a squared gradient, say); `accumulate` vmaps it over
    the N models' stacked parameters and their own batches, as `fit` does for a loss. For the measurements
    a method takes of its models without training them (SSD's and Potion's parameter importances, SalUn's
    saliency): like `predict`, on the run's device in float32 whatever the training precision, and handed
    back on the CPU. `fn` may differentiate inside (torch.func.grad): this no_grad does not reach it.
    """
    dev = torch.device(current().device)
    params = {k: v.detach().to(dev, torch.float32 if v.is_floating_point() else v.dtype) for k, v in params.items()}
    data = tuple(t.to(dev, torch.float32 if t.is_floating_point() else t.dtype) for t in data)
    call = torch.vmap(fn, randomness="error")
    total: Params = {}
    batches = stream.steps_per_epoch
    for idx in itertools.islice(stream.batches(0), batches):
        idx = idx.to(dev)
        for k, v in call(params, *(_rows(t, idx) for t in data)).items():
            if k in total:
                total[k] += v
            else:
                total[k] = v.clone()
    return {k: v.cpu() for k, v in total.items()}, batches
