"""Model families. Each is built once as a template; the engine calls it with stacked parameters of N
models (torch.func.functional_call under vmap), so one architecture serves a whole ensemble."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import UnlearnkitError
from .cnn import cnn
from .logreg import logreg
from .mf import bpr_loss, mf
from .mlp import mlp
from .resnet9 import resnet9

FAMILIES = {"logreg": logreg, "mlp": mlp, "cnn": cnn, "resnet9": resnet9, "mf": mf}

Params = dict[str, torch.Tensor]


def build_model(family: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build one model; lazy layers are materialised with a dummy forward pass (only where there are
    some: a resnet9's no-grad pass would run its whole calibration set)."""
    if family not in FAMILIES:
        raise UnlearnkitError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    model = FAMILIES[family](input_shape, num_classes, **kwargs)
    if any(is_lazy(p) for p in model.parameters()):
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    return model


def init_params(family: str, input_shape: tuple[int, ...], num_classes: int, seeds: list[int],
                **kwargs) -> Params:
    """Stacked parameters of len(seeds) freshly initialised models, model i from seed i alone."""
    models = []
    for seed in seeds:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            models.append(build_model(family, input_shape, num_classes, **kwargs))
    names = [n for n, _ in models[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}


__all__ = ["FAMILIES", "Params", "bpr_loss", "build_model", "init_params"]
