"""Watching the one training loop from outside: every k optimizer steps, hand the models to a callback.

Per-example trajectories (how each forget point's KLoM moves while a method unlearns) need the models
between steps, but no method should contain evaluation code. A caller wraps a method in `observing(fn,
every)`; every `fit` inside it then calls fn(step, params) after every `every`-th optimizer step,
counting steps across the method's `fit` calls (SCRUB alternates several). The callback runs outside the
FLOP counters, and its wall time is kept in `Observer.seconds` so that the caller can leave it out of
the method's cost.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable

from .flops import uncounted

_current: contextvars.ContextVar[Observer | None] = contextvars.ContextVar("observer", default=None)


class Observer:
    def __init__(self, callback: Callable[[int, dict], None], every: int, template: dict | None = None):
        self.callback, self.every, self.steps, self.seconds = callback, every, 0, 0.0
        self.template = template  # {name: shape}: only loops over these parameters are watched
        self.transform = None     # what a fit trains -> the models to record (`seen_through`)

    def watches(self, params: dict) -> bool:
        return self.template is None or self.transform is not None or _shapes(params) == self.template

    def after_step(self, params: dict) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self.record(params)

    def record(self, params: dict) -> None:
        start = time.perf_counter()
        with uncounted():
            self.callback(self.steps, params if self.transform is None else self.transform(params))
        self.seconds += time.perf_counter() - start


@contextlib.contextmanager
def observing(callback: Callable[[int, dict], None], every: int, template: dict | None = None):
    """Within this context every `fit` over parameters shaped like `template` reports to `callback`."""
    observer = Observer(callback, every, template)
    token = _current.set(observer)
    try:
        yield observer
    finally:
        _current.reset(token)


@contextlib.contextmanager
def seen_through(transform: Callable[[dict], dict]):
    """Within this context the current observer (if any) watches the fits it runs, whatever they train, and
    records `transform(trained)`: a LoRA fit trains adapters, and the models it records are the adapters
    merged into the weights."""
    observer = current()
    if observer is None:
        yield
        return
    saved, observer.transform = observer.transform, transform
    try:
        yield
    finally:
        observer.transform = saved


def _shapes(params: dict) -> dict:
    return {k: tuple(v.shape) for k, v in params.items()}


def current() -> Observer | None:
    return _current.get()
