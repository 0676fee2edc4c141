"""EasyDUB's ResNet-9 for CIFAR-10, with a BatchNorm that keeps no state, so the engine can vmap it.

Architecture as in EasyDUB / KLOM (RoyRin/data-unlearning-bench, unlearning/models/resnet9.py and
src/models.py, which took it from KakaoBrain's torchskeleton), with widths w = (64, 128, 256, 128):
conv3×3(w0), conv5×5 stride 2 (w1), residual[2 × conv3×3(w1)], conv3×3(w2), max-pool 2,
residual[2 × conv3×3(w2)], unpadded conv3×3(w3), each conv bias-free and followed by BatchNorm and
ReLU; then a global max pool, a bias-free linear head and logits × 0.2. PyTorch's default inits. This
is neither Page's DAWNBench ResNet-9 (widths 64/128/256/512, logits × 0.125) nor airbench94's VGG-like
net (whitening conv, 64/256/256, GELU, logits × 1/9): EasyDUB's reference margins come from this one.

BatchNorm. With gradients enabled (training, inside `fit`) a layer normalises with the statistics of
the batch it is given, as nn.BatchNorm2d does in train mode. With gradients disabled (`predict`), a
model built with a `calibration` tensor runs on cat([calibration, x]); every layer normalises all rows
with the mean and variance of the calibration rows alone, and only x's logits come back. That is
"precise BN" (statistics of a fixed set under the final weights), not airbench's/EasyDUB's running
averages over training (those would be per-model state that the engine does not carry). Its point: an
example's logits depend only on the example and the weights, never on which examples are predicted with
it or on the chunk size, so per-example margins are well defined. The calibration tensor is a plain
attribute (no parameter, no buffer: `named_parameters` and functional_call ignore it), kept on the CPU
and moved to x's device and dtype on use (the engine's template lives on the "meta" device).
`calibration` may name a set registered with `register_calibration` (load_cifar10 registers "cifar10",
its first 1000 training inputs), which keeps a task's model_kwargs, and so its cache keys, plain text.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnlearnkitError

CALIBRATIONS: dict[str, torch.Tensor] = {}


def register_calibration(name: str, inputs: torch.Tensor) -> None:
    """Make `inputs` the calibration set that resnet9(calibration=name) normalises predictions with."""
    CALIBRATIONS[name] = inputs.detach().to("cpu", torch.float32)


class BatchNorm(nn.Module):
    """Affine BatchNorm without running statistics: those of the batch, or of its first k rows."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        if not k:
            return F.batch_norm(h, None, None, self.weight, self.bias, training=True, eps=self.eps)
        var, mean = torch.var_mean(h[:k].float(), dim=(0, 2, 3), correction=0, keepdim=True)
        scale = self.weight.float().view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return ((h.float() - mean) * scale + self.bias.float().view(1, -1, 1, 1)).to(h.dtype)


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), BatchNorm(c_out)

    def forward(self, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return F.relu(self.bn(self.conv(h), k))


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = ConvBN(c, c), ConvBN(c, c)

    def forward(self, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return h + self.b(self.a(h, k), k)


class ResNet9(nn.Module):
    def __init__(self, channels: int, num_classes: int, widths, scale: float, calibration: torch.Tensor | str | None):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.prep, self.down = ConvBN(channels, w0), ConvBN(w0, w1, kernel=5, stride=2, padding=2)
        self.res1, self.wide, self.res2 = Residual(w1), ConvBN(w1, w2), Residual(w2)
        self.last, self.head = ConvBN(w2, w3, padding=0), nn.Linear(w3, num_classes, bias=False)
        self.scale, self.calibration = scale, calibration

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = 0
        if self.calibration is not None and not torch.is_grad_enabled():
            calibration = _calibration(self.calibration, tuple(x.shape[1:])).to(x.device, x.dtype)
            x, k = torch.cat([calibration, x]), len(calibration)
        h = self.res1(self.down(self.prep(x, k), k), k)
        h = self.last(self.res2(F.max_pool2d(self.wide(h, k), 2), k), k).amax(dim=(2, 3))[k:]
        head = self._modules.get("head")
        return h if head is None else head(h) * self.scale

    def __getitem__(self, index: slice) -> ResNet9:
        """model[:-1]: the network without its head (penultimate features), parameter names kept, as an
        nn.Sequential slice is (Forward.embed takes one)."""
        if index != slice(None, -1):
            raise IndexError("a resnet9 slices only as [:-1] (the network without its head)")
        body = copy.copy(self)
        body._modules = {name: m for name, m in self._modules.items() if name != "head"}
        return body


def _calibration(calibration: torch.Tensor | str, input_shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(calibration, str):
        if calibration not in CALIBRATIONS:
            raise UnlearnkitError(f"resnet9 calibration set {calibration!r} is not loaded in this process; its "
                                  "dataset's loader registers it (load the dataset first)")
        calibration = CALIBRATIONS[calibration]
    if tuple(calibration.shape[1:]) != tuple(input_shape):
        raise UnlearnkitError(f"resnet9 calibration inputs {tuple(calibration.shape)} do not match inputs {input_shape}")
    return calibration


def resnet9(input_shape: tuple[int, ...], num_classes: int, widths=(64, 128, 256, 128), scale: float = 0.2,
            calibration: torch.Tensor | str | None = None) -> nn.Module:
    if len(input_shape) != 3 or min(input_shape[1:]) < 12 or len(widths) != 4:
        raise UnlearnkitError(f"resnet9 needs (C, H, W) images of at least 12×12 and 4 widths, got "
                              f"{tuple(input_shape)} and {tuple(widths)}")
    if isinstance(calibration, str) and calibration in CALIBRATIONS:
        calibration = CALIBRATIONS[calibration]  # else looked up when first needed (a Ray worker only trains)
    if isinstance(calibration, torch.Tensor):
        _calibration(calibration, tuple(input_shape))
    return ResNet9(input_shape[0], num_classes, widths, scale, calibration)
