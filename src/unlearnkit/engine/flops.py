"""Cheap FLOP counting for the training loop.

Costs are counted with PyTorch's `FlopCounterMode`, which sees every matmul and convolution — but
intercepting every op costs 30–70% of a zoo step on CPU. A training step's FLOPs are linear in its
batch size (every counted op is a product over the batch), so the loop lets the counter see its first
step only and books the rest by proportion: exact, at the cost of one instrumented step. Counts are
booked as whole numbers, so a total does not depend on how it was summed (a resumed loop adds its
earlier epochs' count to its own and gets the uninterrupted loop's total, bit for bit).
"""
from __future__ import annotations

import contextlib

from torch.utils._python_dispatch import (
    _disable_current_modes,
    _get_current_dispatch_mode_stack,
)
from torch.utils.flop_counter import FlopCounterMode


def active_counters() -> list[FlopCounterMode]:
    """The FlopCounterModes counting right now (innermost last)."""
    return [m.counter for m in _get_current_dispatch_mode_stack() if isinstance(getattr(m, "counter", None),
                                                                               FlopCounterMode)]


class StepExtrapolator:
    """Counts the first step exactly, then books later steps as (its FLOPs × their share of examples)."""

    def __init__(self):
        self.counters = active_counters()
        self.per_example: float | None = None

    def step(self, examples: int):
        """Context for one step that processes `examples` examples (summed over models and streams)."""
        if not self.counters:
            return contextlib.nullcontext()
        if self.per_example is None:
            return self._measure(examples)
        booked = round(self.per_example * examples)
        for c in self.counters:
            c.flop_counts["Global"]["extrapolated from the first step"] += booked
        return _disable_current_modes()

    @contextlib.contextmanager
    def _measure(self, examples: int):
        before = self.counters[-1].get_total_flops()
        yield
        self.per_example = (self.counters[-1].get_total_flops() - before) / examples


def book(flops: int, what: str = "counted elsewhere") -> None:
    """Add FLOPs done out of the counters' sight (by a Ray task) to every counter counting now."""
    for c in active_counters():
        c.flop_counts["Global"][what] += int(flops)


def uncounted():
    """Context in which no FLOP counter counts (work that is not training, e.g. building models)."""
    return _disable_current_modes()
