"""Where and in what precision the engine computes: one `Compute` for a whole run.

The engine owns the device. Everything outside it (methods, metrics, the cache) holds tensors on the
CPU; `fit` and `predict` move what they need to the run's device and hand CPU tensors back. So no
method or metric needs a device argument, and nothing requires a GPU.

Precision (`fp32`, `tf32`, `bf16`) is a training setting. `bf16` is mixed precision (Micikevicius et
al. 2018, "Mixed Precision Training"; Kalamkar et al. 2019 for bfloat16): float32 master weights and
optimizer state, bfloat16 copies of the weights and inputs for the products, losses in float32.
`tf32` keeps float32 tensors but lets CUDA's tensor cores round matmul inputs to 10 mantissa bits.
Predictions (the margins every metric is computed from) are always made in float32: they are the
measurement, and they cost a few seconds against minutes of training.

How a step covers the N models (`ensemble`) is the third setting. `vmap` runs one vectorised program:
N models' products become batched matrix products, which is what makes an MLP zoo fast. Convolutions
vectorise badly on a CPU: vmap turns a convolution of N models into one grouped convolution (a
1-channel first layer becomes N groups of one channel) and pools N models' maps in a layout the pooling
kernels stream slowly, while the N models' activations leave the caches. There `loop` is faster: the
models' forward and backward passes run one after another on their own minibatches (one model's
activations stay in cache), their gradients land in one stacked buffer, and one stacked optimizer
updates all N in a single pass, as in `vmap`. Both compute the same function of the same data; the
kernels differ, so results agree to float rounding, and the choice is part of the cache key.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import UnlearnkitError, option

PRECISIONS = ("fp32", "tf32", "bf16")
ENSEMBLES = ("vmap", "loop")


@dataclass(frozen=True)
class Compute:
    """A resolved device ("cpu", "cuda:0", "cuda:1"), training precision, the memory an arm's training
    may take (bytes; None: what the device has free) — arms that need more are trained in chunks — and how
    a step covers the N models (`ensemble`: "vmap" or "loop", see above; `ensemble_for` picks it)."""

    device: str = "cpu"
    precision: str = "fp32"
    max_memory: int | None = None
    ensemble: str = "vmap"

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise UnlearnkitError(f"ensemble must be one of {', '.join(ENSEMBLES)}; got {self.ensemble!r}")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the training step's products (master weights are float32 whatever it is)."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def key(self) -> dict:
        """What of the compute changes trained weights: part of every cache key. The device's type,
        not its index: cuda:0 and cuda:1 compute the same numbers. The ensemble only when it is not the
        default `vmap`, so that every vmapped artefact keeps the key it had before `loop` existed."""
        key = {"device": torch.device(self.device).type, "precision": self.precision}
        return key if self.ensemble == "vmap" else {**key, "ensemble": self.ensemble}

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "CPU"
        return f"{self.device} ({name}), {self.precision}" + (", models one by one" if self.ensemble == "loop" else "")


CONVOLUTIONAL = frozenset({"cnn", "resnet9"})  # model families (models.FAMILIES) built on convolutions


def ensemble_for(family: str | None, device: str) -> str:
    """`loop` for convolutional families on the CPU, `vmap` everywhere else (on a GPU, vmapped convolutions
    of hundreds of models run faster per model than of fewer: issue 11's H200 figures). Measured on a
    2-core CPU, fashion-mnist-cnn, per model and step: vmap 18.2 ms, loop 12.7 ms, a plain per-model
    PyTorch loop 11.9 ms (N = 16, float32)."""
    return "loop" if family in CONVOLUTIONAL and torch.device(device).type == "cpu" else "vmap"


def bf16_fast(device: str) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (AMX or AVX-512 BF16 on x86 CPUs,
    tensor cores of compute capability ≥ 8.0 on NVIDIA GPUs): elsewhere bf16 is emulated and slower."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_capability(dev)[0] >= 8
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve(device: str = "auto", precision: str = "auto") -> Compute:
    """Check a requested device and precision against this machine; `auto` picks the fastest there
    (the first CUDA GPU if any, else the CPU). On a CPU: bf16 where it runs in hardware (AMX: 1.85× fp32's
    models/s at N = 100 on fashion-mnist-mlp), else fp32. On a CUDA GPU: tf32, which trained the default
    task's arm of 100 1.37× faster than bf16 on an H200 (18.0 vs 13.2 models/s; the same at N = 300, bf16
    1.1× faster on the CNN): these models' products are too small for bf16's rate to beat its casts."""
    device = _device(device)
    if precision == "auto":
        precision = "tf32" if device.startswith("cuda") else "bf16" if bf16_fast(device) else "fp32"
    elif precision not in PRECISIONS:
        raise UnlearnkitError(f"{option('precision')} must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise UnlearnkitError(f"{option('precision', 'tf32')} is a CUDA tensor-core mode; on the CPU use fp32 or bf16")
    if precision == "bf16" and not bf16_fast(device):
        raise UnlearnkitError(f"{option('precision', 'bf16')}: {device} has no hardware bfloat16 matmul (it needs "
                              "AMX or AVX-512 BF16 on a CPU, compute capability 8.0+ on a GPU), so it would be slower, "
                              f"not faster; use {option('precision', 'fp32')} (or auto)")
    return Compute(device, precision)


def _device(device: str) -> str:
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UnlearnkitError(f"{option('device')} must be auto, cpu, cuda or cuda:K; got {device!r}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise UnlearnkitError(f"{option('device')} must be auto, cpu, cuda or cuda:K; got {device!r}")
    if not torch.cuda.is_available():
        raise UnlearnkitError(f"{option('device', device)}: PyTorch sees no CUDA GPU here (a CPU-only build, or no "
                              f"driver/GPU); use {option('device', 'cpu')} or auto")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise UnlearnkitError(f"{option('device', device)}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return f"cuda:{index}"


_current = Compute()


def current() -> Compute:
    """The compute the engine uses now (float32 on the CPU unless a run says otherwise)."""
    return _current


@contextlib.contextmanager
def use(compute: Compute):
    """Run the engine on `compute` inside this context (the run entry points set it from their config)."""
    global _current
    previous, _current = _current, compute
    try:
        with tf32(compute):
            yield compute
    finally:
        _current = previous


@contextlib.contextmanager
def tf32(compute: Compute):
    """CUDA's TF32 matmul and convolution modes on exactly when the precision is `tf32`."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = compute.precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
