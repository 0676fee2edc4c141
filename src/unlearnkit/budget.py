"""What a run will cost before it trains anything, and refusing what cannot finish or fit.

A run's work is known in advance: every arm and every method trains N models for a given number of
epochs over a given set. One model's training step is counted once (FLOPs with PyTorch's counter,
activation memory with a saved-tensors hook, on a real minibatch), and the rest is arithmetic. The
time estimate divides the FLOPs by a rate measured on this machine (its float32 matmul throughput
times the fraction of it the zoo reaches, ZOO_EFFICIENCY): it is an order of magnitude, enough to
refuse `--set finetune.epochs=1e9` or `--models 100000` in a second instead of after hours.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import UnlearnkitError
from .files import check_writable, nearest_existing

log = logging.getLogger(__name__)

MAX_EPOCHS = 1000        # no recipe, method or budget here needs more passes over its data
MAX_MODELS = 10_000      # models per arm: 100 is the reference, 10k is far past any use of KLoM
ZOO_EFFICIENCY = 0.3     # share of the float32 matmul peak a vectorised training step reaches (about 0.5 on MLPs)
STATE_COPIES = 5         # parameters, gradients, two optimizer moments, one checkpoint copy


def check_epochs(value: float, what: str) -> None:
    if not (math.isfinite(value) and 0 < value <= MAX_EPOCHS):
        raise UnlearnkitError(f"{what} must be a number of epochs in (0, {MAX_EPOCHS}], got {value!r}")


def check_models(n: int, minimum: int = 2) -> None:
    if not minimum <= n <= MAX_MODELS:
        raise UnlearnkitError(f"--models must be in [{minimum}, {MAX_MODELS}] (KLoM compares distributions over "
                              f"models; 100 per arm is the reference), got {n}")


@dataclass(frozen=True)
class StepProfile:
    """One model's training cost per example: FLOPs of a forward+backward, activation bytes kept for the
    backward, and the model's parameter bytes."""

    flops: float
    activation_bytes: float
    param_bytes: int

    @staticmethod
    def measure(loss, params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor],
                batch: int) -> "StepProfile":
        """Profile `loss` (written for one model, as the engine takes it) on `batch` examples of `data`
        with one model's `params` (leading model dimension of size 1 or none)."""
        one = {k: (v[0] if v.dim() and v.shape[0] == 1 else v).detach().clone().requires_grad_(True)
               for k, v in params.items()}
        idx = torch.arange(min(batch, len(data[0])))
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t
        with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss(one, {"train": (data[0][idx], data[1][idx], idx)}, {}).backward()
        b = len(idx)
        return StepProfile(counter.get_total_flops() / b, saved / b,
                           sum(v.numel() * v.element_size() for v in one.values()))


@dataclass
class Budget:
    """The work a run will do, added up job by job, then checked against the machine."""

    flops: float = 0.0
    method_flops: float = 0.0  # the part of `flops` that unlearning methods do (what one more run of them costs)
    peak_bytes: float = 0.0
    disk_bytes: float = 0.0

    def add(self, profile: StepProfile, models: int, examples: int, epochs: float, batch: int,
            cached: bool = False, stored: bool = False, method: bool = False) -> None:
        """Training `models` models for `epochs` passes over `examples` examples (minibatches of `batch`);
        nothing if already cached; `stored`: its weights and checkpoints go to the cache; `method`: an
        unlearning method's training (not a zoo arm's)."""
        memory = models * (STATE_COPIES * profile.param_bytes + min(batch, examples) * profile.activation_bytes)
        self.peak_bytes = max(self.peak_bytes, memory)
        if not cached:
            flops = profile.flops * models * examples * epochs
            self.flops += flops
            self.method_flops += flops if method else 0.0
            self.disk_bytes += 2 * models * profile.param_bytes if stored else 0

    def seconds(self) -> float:
        return self.flops / (ZOO_EFFICIENCY * matmul_rate())

    def check(self, max_hours: float, cache_root: Path | None, what: str = "this run") -> None:
        """Raise UnlearnkitError (with the estimate) if the work cannot fit in memory or on disk, or would
        take longer than `max_hours`."""
        free = available_memory()
        if free and self.peak_bytes > 0.9 * free:
            raise UnlearnkitError(f"{what} needs about {_gib(self.peak_bytes)} of memory to train its ensembles, and "
                                  f"this machine has {_gib(free)} free: use fewer --models")
        if cache_root is not None and self.disk_bytes:  # something will be cached: the cache must take it
            check_writable(cache_root, "the model cache (--cache-dir or $UNLEARNKIT_CACHE)")
            probe = nearest_existing(cache_root)
            room = shutil.disk_usage(probe).free
            if self.disk_bytes > room:
                raise UnlearnkitError(f"{what} caches about {_gib(self.disk_bytes)} of models and {probe} has "
                                      f"{_gib(room)} free: free some space, use fewer --models, or pass --no-cache")
        log.info("%s: estimated %s", what, self.describe())
        if self.seconds() > max_hours * 3600:
            raise UnlearnkitError(f"{what} would train for at least about {_duration(self.seconds())} "
                                  f"({self.flops / 1e15:,.3g} PFLOP at about "
                                  f"{ZOO_EFFICIENCY * matmul_rate() / 1e9:,.0f} GFLOP/s on this machine), "
                                  f"past the {max_hours:g}-hour limit: lower --models or the epochs, or raise "
                                  "--max-hours")

    def describe(self) -> str:
        return (f"{self.flops / 1e12:,.1f} TFLOP (about {_duration(self.seconds())} here), "
                f"peak memory {_gib(self.peak_bytes)}")


_RATE: list[float] = []


def matmul_rate() -> float:
    """This machine's float32 matmul throughput (FLOP/s), measured once per process (~30 ms): the best of
    several short trials, so that a moment of load elsewhere does not decide whether a run is refused."""
    if not _RATE:
        a = torch.randn(512, 512)
        a @ a
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(3):
                a @ a
            best = min(best, time.perf_counter() - start)
        _RATE.append(3 * 2 * 512 ** 3 / max(best, 1e-9))
    return _RATE[0]


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:,.1f} hours"


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


__all__ = ["Budget", "MAX_EPOCHS", "MAX_MODELS", "StepProfile", "available_memory", "check_epochs", "check_models",
           "matmul_rate"]
