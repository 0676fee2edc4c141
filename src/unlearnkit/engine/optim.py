"""SGD, Adam and sign-SGD for stacked parameters, updated in place, one pass over memory per step.

The update rules are PyTorch's (torch.optim.SGD with Nesterov momentum and coupled weight decay;
torch.optim.Adam with L2 weight decay), so one model trained here equals the same model trained with
torch.optim. What differs is speed on ensembles. An update is a handful of elementwise ops over all N
models' parameters: op by op (torch.optim's way) each op streams every tensor from memory again, and
a zoo step's optimizer was ~45% of the step. Two ways around it:

- on the CPU, large ensembles: the update is compiled (`torch.compile`) into one fused kernel per
  tensor that reads and writes each number once;
- on the CPU otherwise (or where compiling fails): op by op over cache-sized slices of ~256K numbers,
  so that only the first op of a slice reaches main memory;
- on a GPU: op by op over whole tensors. Its memory streams an unfused update of 100 MLPs in well under
  a millisecond, while compiling one (Triton) takes seconds for every new set of shapes a run meets
  (each arm size, each method's trained subset): measured by benchmarks/optimizer_update.py.

Mixed precision: with `shadows` (bfloat16 copies of the float32 parameters that the loss was
differentiated with), the gradient is read from the shadow, widened to float32, applied to the float32
master, and the master is written back to its shadow — in the same pass.
"""
from __future__ import annotations

import functools
import logging
import math

import torch

log = logging.getLogger(__name__)

CHUNK = 1 << 18        # numbers per in-place slice: a few of them fit in a core's L2 cache
COMPILE_MIN = 1 << 23  # an ensemble this large (numbers) pays back a compile of a few seconds in a few steps


class _Stacked:
    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float,
                 shadows: list[torch.Tensor] | None = None, cpu: bool = True):
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self.shadows = shadows or [None] * len(params)
        self.slices = [_chunks(p, cpu) for p in params]
        self.state: dict = {"step": 0}
        self.compiled = cpu and sum(p.numel() for p in params) >= COMPILE_MIN
        self.scalars: dict[str, torch.Tensor] = {}  # per-step numbers passed to a compiled update as tensors

    def zero_grad(self) -> None:
        for p, w in zip(self.params, self.shadows):
            (p if w is None else w).grad = None

    def state_dict(self) -> dict:
        return {k: ([t.clone() for t in v] if isinstance(v, list) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: ([t.clone() for t in v] if isinstance(v, list) else v) for k, v in state.items()}

    def _used(self, *states: list[torch.Tensor]) -> list[tuple]:
        """(master, gradient, state tensors..., shadow or None, slices) of every parameter with a gradient
        (an unused parameter is skipped, as torch.optim does)."""
        out = []
        for i, (p, w, slices) in enumerate(zip(self.params, self.shadows, self.slices)):
            grad = (p if w is None else w).grad
            if grad is not None:
                out.append((p, grad, *(st[i] for st in states), w, slices))
        return out

    def _run(self, update, used: list[tuple], *scalars) -> None:
        """Apply `update(params, grads, *states, shadows, *scalars)`: compiled over whole tensors, else
        eagerly slice by slice."""
        if self.compiled:
            try:
                columns = [list(c) for c in zip(*(u[:-1] for u in used))]
                _compiled(update)(*columns, *(self._tensor(i, v) for i, v in enumerate(scalars)))
                return
            except Exception as e:  # no compiler, an unsupported device: the eager path computes the same
                log.warning("compiling the optimizer update failed (%s: %s); updating op by op",
                            type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                self.compiled = False
        for p, grad, *states, w, slices in used:
            view = _flat if _same_dense_layout(p, grad, *states, *([w] if w is not None else [])) else _as_is
            for s in slices:
                update([view(p[s])], [view(grad[s])], *[[view(st[s])] for st in states],
                       [None if w is None else view(w[s])], *scalars)

    def _tensor(self, i: int, value) -> torch.Tensor | float | bool:
        """A number that changes from step to step (learning rate, bias corrections) as a 0-d tensor, so
        the compiled update is not recompiled for every new value."""
        if isinstance(value, bool) or not isinstance(value, float):
            return value
        t = self.scalars.setdefault(str(i), torch.zeros((), dtype=torch.float64, device=self.params[0].device))
        t.fill_(value)
        return t


class StackedSGD(_Stacked):
    """torch.optim.SGD(momentum=m, nesterov=m > 0, weight_decay=wd), in place."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, shadows=None, cpu=True):
        super().__init__(params, lr, weight_decay, shadows, cpu)
        self.momentum = momentum

    @torch.no_grad()
    def step(self) -> None:
        first = "buf" not in self.state and self.momentum > 0
        if first:
            self.state["buf"] = [torch.zeros_like(p) for p in self.params]
        if self.momentum:
            self._run(_sgd_momentum, self._used(self.state["buf"]), self.lr, self.weight_decay, self.momentum,
                      first)
        else:
            self._run(_sgd, self._used(), self.lr, self.weight_decay)
        self.state["step"] += 1


class StackedSignSGD(_Stacked):
    """Sign-SGD, θ ← θ − lr·sign(∇): the lower level of Fan et al.'s worst-case forget-set selection
    (2024, arXiv 2403.07362; reference code `SignSGD.sign_step`, which ignores momentum and weight decay,
    as this does). Each coordinate moves on its own, so it too is N independent optimizers."""

    @torch.no_grad()
    def step(self) -> None:
        self._run(_sign, self._used(), self.lr)
        self.state["step"] += 1


class StackedAdam(_Stacked):
    """torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8, weight_decay=wd) (L2, not AdamW), in place."""

    betas, eps = (0.9, 0.999), 1e-8

    @torch.no_grad()
    def step(self) -> None:
        if "m" not in self.state:
            self.state["m"] = [torch.zeros_like(p) for p in self.params]
            self.state["v"] = [torch.zeros_like(p) for p in self.params]
        self.state["step"] += 1
        t, (b1, b2) = self.state["step"], self.betas
        self._run(_adam, self._used(self.state["m"], self.state["v"]), self.lr / (1 - b1 ** t),
                  math.sqrt(1 - b2 ** t), self.weight_decay)


# The updates, for lists of tensors (whole ones when compiled, one slice each otherwise). Written
# without in-place ops on the gradient: compiled, a mutated input would be written back to memory.

def _sgd_momentum(ps, gs, bufs, ws, lr, wd, m, first: bool):
    for p, g, b, w in zip(ps, gs, bufs, ws):
        g = g.to(p.dtype) + wd * p
        b.copy_(g) if first else b.mul_(m).add_(g)
        p.sub_(lr * (g + m * b))  # Nesterov
        if w is not None:
            w.copy_(p)


def _sgd(ps, gs, ws, lr, wd):
    for p, g, w in zip(ps, gs, ws):
        p.sub_(lr * (g.to(p.dtype) + wd * p))
        if w is not None:
            w.copy_(p)


def _sign(ps, gs, ws, lr):
    for p, g, w in zip(ps, gs, ws):
        p.sub_(lr * g.to(p.dtype).sign())
        if w is not None:
            w.copy_(p)


def _adam(ps, gs, ms, vs, ws, step_size, bias2, wd):
    (b1, b2), eps = StackedAdam.betas, StackedAdam.eps
    for p, g, m, v, w in zip(ps, gs, ms, vs, ws):
        g = g.to(p.dtype) + wd * p
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.sub_(step_size * m / (v.sqrt() / bias2 + eps))
        if w is not None:
            w.copy_(p)


@functools.cache
def _compiled(update):
    return torch.compile(update, dynamic=False)


def _chunks(t: torch.Tensor, chunked: bool = True) -> list[slice]:
    if not chunked or t.dim() == 0:
        return [slice(None)]
    per_model = max(1, t[0].numel()) if len(t) else 1
    step = max(1, CHUNK // per_model)
    return [slice(i, i + step) for i in range(0, len(t), step)]


def dense(shape, stride) -> bool:
    """Whether `stride` lays out `shape` with no gaps and no overlaps (a permutation of contiguous)."""
    expected = 1
    for size, st in sorted(zip(shape, stride), key=lambda d: d[1]):
        if size > 1 and st != expected:
            return False
        expected *= size
    return True


def _same_dense_layout(p: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether `p` fills its memory with no gaps, models outermost, and `others` share its layout: then
    each model slice is one run of memory, and an elementwise update may work on flat views."""
    return (p.dim() > 0 and all(o.stride() == p.stride() for o in others) and p.stride(0) == max(p.stride())
            and dense(p.shape, p.stride()))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense slice as one flat run of memory (contiguous kernels' fast path)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _as_is(t: torch.Tensor) -> torch.Tensor:
    return t
