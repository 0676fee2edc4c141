"""What a run will cost before it trains anything, and refusing what cannot finish or fit.

A run's work is known in advance: every arm and every method trains N models for a given number of
epochs over a given set. One model's training step is counted once (FLOPs with PyTorch's counter,
activation memory with a saved-tensors hook, on a real minibatch), and the rest is arithmetic. The
time estimate divides the FLOPs by a rate measured on this machine (its matmul throughput in the run's
precision times the fraction of it the zoo reaches, ZOO_EFFICIENCY): it is an order of magnitude, enough to
refuse `--set finetune.epochs=1e9` or `--models 100000` in a second instead of after hours.
"""
from __future__ import annotations

import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .engine.compute import Compute, current, tf32
from .errors import UnlearnkitError, option
from .files import check_writable, nearest_existing

log = logging.getLogger(__name__)

MAX_EPOCHS = 1000        # no recipe, method or budget here needs more passes over its data
MAX_MODELS = 10_000      # models per arm: 100 is the reference, 10k is far past any use of KLoM
# share of the measured matmul rate (`matmul_rate`, the run's device and precision) that a whole run's FLOPs
# reach, per device type: on a 2-core AMX CPU the default run at N = 100 did 54.3 TFLOP in 242 s in bf16
# (0.2 of the bf16 rate; bf16 products are 5-6x faster, the rest of a step is not) and its zoo reaches
# 0.8 of the fp32 rate (0.45 for a whole run, metrics included). A GPU's small steps are bound by kernel
# launches, so there a step costs STEP_SECONDS plus its FLOPs at this share of the peak: on an H200 the MLP
# zoo's steps took 4.7 ms at N = 100 and 6.9 ms at N = 300 in tf32 (20.6 and 62 GFLOP), i.e. 3.6 ms + FLOPs
# at 18 TFLOP/s, 0.06 of the tf32 peak; fp32 4.2 ms + 0.25 of its peak; bf16 as fast as tf32 at N = 300
# (0.03 of its peak). The default run at N = 100 (3,550 steps counted) is then estimated at 17 s against
# 45 s measured (9 s before), the rest being its metrics and scoring on the CPU (stop 27).
ZOO_EFFICIENCY = {"cpu": {"fp32": 0.45, "bf16": 0.2}, "cuda": {"fp32": 0.25, "tf32": 0.06, "bf16": 0.03}}
STEP_SECONDS = {"cpu": 0.0, "cuda": 4e-3}
STATE_COPIES = 5         # parameters, gradients, two optimizer moments, one checkpoint copy


def check_epochs(value: float, what: str) -> None:
    if not (math.isfinite(value) and 0 < value <= MAX_EPOCHS):
        raise UnlearnkitError(f"{what} must be a number of epochs in (0, {MAX_EPOCHS}], got {value!r}")


def check_models(n: int, minimum: int = 2) -> None:
    if not minimum <= n <= MAX_MODELS:
        raise UnlearnkitError(f"{option('models')} must be in [{minimum}, {MAX_MODELS}] (KLoM compares "
                              f"distributions over models; 100 per arm is the reference), got {n}")


@dataclass(frozen=True)
class Work:
    """Training a budget counts besides arms and methods' epochs (a study's relearning attack): `models`
    models for `steps` steps of `batch` examples each."""

    models: int
    steps: int
    batch: int


@dataclass(frozen=True)
class StepProfile:
    """One model's training cost per example: FLOPs of a forward+backward, activation bytes kept for the
    backward, and the model's parameter bytes."""

    flops: float
    activation_bytes: float
    param_bytes: int

    @staticmethod
    def measure(loss, params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor],
                batch: int) -> StepProfile:
        """Profile `loss` (written for one model, as the engine takes it) on `batch` examples of `data`
        with one model's `params` (leading model dimension of size 1 or none)."""
        dev = current().device  # where the loss's own tensors live (a method's tables indexed by positions)
        one = {k: (v[0] if v.dim() and v.shape[0] == 1 else v).detach().to(dev).clone().requires_grad_(True)
               for k, v in params.items()}
        idx = torch.arange(min(batch, len(data[0])), device=dev)
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t
        rows = idx.to(data[0].device)
        batch = {"train": (data[0][rows].to(dev), data[1][rows].to(dev), idx)}
        try:
            with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss(one, batch, {}).backward()
        except RuntimeError as err:
            if "saved tensor hooks" not in str(err):
                raise
            # a loss that differentiates inside itself (torch.func.grad: a gradient penalty) refuses the hook:
            # count every tensor its forward creates instead, an upper bound of what its backward keeps
            with FlopCounterMode(display=False) as counter:
                with _Created() as created:
                    value = loss(one, batch, {})
                value.backward()
            saved = created.bytes
        b = len(idx)
        return StepProfile(counter.get_total_flops() / b, saved / b,
                           sum(v.numel() * v.element_size() for v in one.values()))

    def model_bytes(self, batch: int) -> float:
        """Memory one model's training step holds: its weights and their copies (gradients, optimizer
        moments, a checkpoint) and the activations of a minibatch kept for the backward pass."""
        return STATE_COPIES * self.param_bytes + batch * self.activation_bytes

    def arm_bytes(self, models: int, batch: int, ensemble: str = "vmap") -> float:
        """Memory a step of `models` models holds: every model's activations at once when vmapped, one
        model's at a time when looped (`engine.compute`); every model's weights and copies either way."""
        activations = batch * self.activation_bytes * (models if ensemble == "vmap" else 1)
        return models * STATE_COPIES * self.param_bytes + activations

    def models_within(self, limit: float, batch: int, ensemble: str = "vmap") -> int:
        """The most models whose step fits in `limit` bytes (at least one: whether one fits is the caller's
        check)."""
        if ensemble == "vmap":
            return max(1, int(limit // self.model_bytes(batch)))
        return max(1, int((limit - batch * self.activation_bytes) // (STATE_COPIES * self.param_bytes)))


class _Created(TorchDispatchMode):
    """Counts the bytes of every tensor the operations run under it create."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@dataclass
class Budget:
    """The work a run will do, added up job by job, then checked against the machine."""

    flops: float = 0.0
    steps: float = 0.0         # optimizer steps of all the training (each one's launches cost time on a GPU)
    method_flops: float = 0.0  # the part of `flops` that unlearning methods do (what one more run of them costs)
    peak_bytes: float = 0.0    # all N models of the largest arm in one pass (arms larger than memory are chunked)
    model_bytes: float = 0.0   # one model's training step: the least any chunk needs
    disk_bytes: float = 0.0

    def add(self, profile: StepProfile, models: int, examples: int, epochs: float, batch: int,
            cached: bool = False, stored: bool = False, method: bool = False) -> None:
        """Training `models` models for `epochs` passes over `examples` examples (minibatches of `batch`);
        nothing if already cached; `stored`: its weights and checkpoints go to the cache; `method`: an
        unlearning method's training (not a zoo arm's)."""
        one = profile.model_bytes(min(batch, examples))
        self.model_bytes = max(self.model_bytes, one)
        self.peak_bytes = max(self.peak_bytes, profile.arm_bytes(models, min(batch, examples), current().ensemble))
        if not cached:
            flops = profile.flops * models * examples * epochs
            self.flops += flops
            self.steps += epochs * math.ceil(examples / batch)
            self.method_flops += flops if method else 0.0
            self.disk_bytes += 2 * models * profile.param_bytes if stored else 0

    def __iadd__(self, other: Budget) -> Budget:
        """Both runs' work (a study's cells): FLOPs and disk add up, memory is the larger run's."""
        self.flops += other.flops
        self.steps += other.steps
        self.method_flops += other.method_flops
        self.peak_bytes = max(self.peak_bytes, other.peak_bytes)
        self.model_bytes = max(self.model_bytes, other.model_bytes)
        self.disk_bytes += other.disk_bytes
        return self

    def seconds(self) -> float:
        return self.flops / training_rate() + self.launch_seconds()

    def launch_seconds(self) -> float:
        """What the steps' kernel launches add (a GPU's; nothing on a CPU)."""
        return self.steps * STEP_SECONDS[torch.device(current().device).type]

    def check(self, max_hours: float, cache_root: Path | None, what: str = "this run") -> None:
        """Raise UnlearnkitError (with the estimate) if the work cannot fit in memory or on disk, or would
        take longer than `max_hours`."""
        limit = memory_limit()
        if limit and self.model_bytes > limit:
            raise UnlearnkitError(f"{what} needs about {_gib(self.model_bytes)} of memory to train even one model, and "
                                  f"{_memory_source()} gives it {_gib(limit)}: raise {option('max_memory')} or use a "
                                  "smaller task")
        if cache_root is not None and self.disk_bytes:  # something will be cached: the cache must take it
            check_writable(cache_root, f"the model cache ({option('cache_dir')} or $UNLEARNKIT_CACHE)")
            probe = nearest_existing(cache_root)
            room = shutil.disk_usage(probe).free
            if self.disk_bytes > room:
                raise UnlearnkitError(f"{what} caches about {_gib(self.disk_bytes)} of models and {probe} has "
                                      f"{_gib(room)} free: free some space, use fewer {option('models')}, or pass "
                                      f"{option('cache_dir', '')}")
        log.info("%s: estimated %s", what, self.describe())
        if self.seconds() > max_hours * 3600:
            raise UnlearnkitError(f"{what} would train for at least about {_duration(self.seconds())} "
                                  f"({self.flops / 1e15:,.3g} PFLOP at about "
                                  f"{training_rate() / 1e9:,.0f} GFLOP/s on this machine"
                                  + (f", and {_duration(self.launch_seconds())} launching {self.steps:,.0f} steps' "
                                     "kernels" if self.launch_seconds() else "") + "), "
                                  f"past the {max_hours:g}-hour limit: lower {option('models')} or the epochs, or "
                                  f"raise {option('max_hours')}")

    def describe(self) -> str:
        return (f"{self.flops / 1e12:,.1f} TFLOP (about {_duration(self.seconds())} here), "
                f"peak memory {_gib(self.peak_bytes)}")


_RATE: dict[tuple[str, str], float] = {}


def matmul_rate(compute: Compute | None = None) -> float:
    """The matmul throughput (FLOP/s) of the run's device in its precision, measured once per process
    (~30 ms): the best of several short trials, so that a moment of load elsewhere does not decide
    whether a run is refused."""
    compute = compute or current()
    key = (compute.device, compute.precision)
    if key not in _RATE:
        n = 2048 if compute.is_cuda else 512
        a = torch.randn(n, n, device=compute.device, dtype=compute.dtype)
        sync = torch.cuda.synchronize if compute.is_cuda else (lambda: None)
        with tf32(compute):
            a @ a
            best = float("inf")
            for _ in range(5):
                sync()
                start = time.perf_counter()
                for _ in range(3):
                    a @ a
                sync()
                best = min(best, time.perf_counter() - start)
        _RATE[key] = 3 * 2 * n ** 3 / max(best, 1e-9)
    return _RATE[key]


def training_rate(compute: Compute | None = None) -> float:
    """FLOP/s a vectorised training step is expected to reach on the run's compute."""
    compute = compute or current()
    return ZOO_EFFICIENCY[torch.device(compute.device).type][compute.precision] * matmul_rate(compute)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_limit(compute: Compute | None = None) -> int | None:
    """Bytes an arm's training may use: --max-memory if given, else 90% of what the device has free."""
    compute = compute or current()
    if compute.max_memory:
        return compute.max_memory
    if compute.is_cuda:
        return int(0.9 * torch.cuda.mem_get_info(compute.device)[0])
    free = available_memory()
    return int(0.9 * free) if free else None


def _memory_source() -> str:
    compute = current()
    return option("max_memory") if compute.max_memory else f"the free memory of {compute.device}"


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2 ** 10, "m": 1e6, "mb": 1e6, "mib": 2 ** 20,
          "g": 1e9, "gb": 1e9, "gib": 2 ** 30, "t": 1e12, "tb": 1e12, "tib": 2 ** 40}


def parse_memory(text: str | int | None) -> int | None:
    """'8GiB', '512MB', '2e9' or a number of bytes -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    try:
        value = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else float("nan")
    except (KeyError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value >= 1):
        raise UnlearnkitError(f"{option('max_memory')} expects an amount such as 8GiB, 512MB or a number of bytes, "
                              f"got {text!r}")
    return int(value)


def _duration(seconds: float) -> str:
    if seconds < 0.01:
        return "under 0.01 seconds"
    if seconds < 10:
        return f"{seconds:.2g} seconds"
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:,.1f} hours"


def _gib(n: float) -> str:
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:,.1f} GiB"
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:,.0f} KiB"


__all__ = [
    "MAX_EPOCHS",
    "MAX_MODELS",
    "Budget",
    "StepProfile",
    "available_memory",
    "check_epochs",
    "check_models",
    "matmul_rate",
    "memory_limit",
    "parse_memory",
    "training_rate",
]
