"""LoRA adapters for language-model unlearning, through Hugging Face PEFT, vmapped over N models.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685, Eq. 3):
a frozen weight W gets a trained low-rank update, h = W·x + (α/r)·B·A·x with A (r × in) initialised
like a linear layer (Kaiming-uniform) and B (out × r) at zero, so training starts at the original.
OpenUnlearning's users ask for it to unlearn without a full optimizer state (its issue #179, PR #151).

PEFT builds the layers (`inject_adapter_in_model` on a copy of the template, "all-linear": every linear
or GPT-2 Conv1D layer but the output head, OpenUnlearning's choice of target modules) and computes them
in the forward pass: W·x and B·A·x apart, so gradients and optimizer state exist for A and B only.
`LoraForward` runs that module with the base weights under their usual names and the adapters under
PEFT's; `merge` folds the trained adapters into W (PEFT's `merge_and_unload`, done per model), so an
unlearned model is a plain model again and every metric reads it unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..engine import Params
from ..errors import UnlearnkitError, option
from .model import LMForward

ADAPTER = "default"
MAX_RANK = 1024


@dataclass(frozen=True)
class LoraSpec:
    """Rank r and scale α of the adapters (α = 2r by default, OpenUnlearning's r 32 / α 64 ratio)."""

    rank: int
    alpha: float | None = None

    def __post_init__(self):
        if not 1 <= self.rank <= MAX_RANK:
            raise UnlearnkitError(f"{option('lora')} must be a rank in [1, {MAX_RANK}] (0: full fine-tuning), "
                                  f"got {self.rank}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2.0 * self.rank)
        if not self.alpha > 0:
            raise UnlearnkitError(f"the LoRA alpha must be > 0, got {self.alpha}")

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules="all-linear", lora_dropout=0.0,
                          bias="none", init_lora_weights=True)


class LoraForward(LMForward):
    """f(params, input_ids) -> logits of the template with adapters: `params` holds the base model's
    weights under their plain names and, optionally, the adapters under PEFT's (`…lora_A.default.weight`).
    Adapters left out are the template's, whose B is zero: the base model's logits exactly."""

    def __init__(self, base: LMForward, spec: LoraSpec):
        try:
            from peft import inject_adapter_in_model
        except ImportError:
            raise UnlearnkitError("LoRA needs PEFT: pip install peft") from None
        module = copy.deepcopy(base.module)
        inject_adapter_in_model(spec.peft_config(), module)
        super().__init__(module=module)
        self.spec = spec
        self.layers = {name: m for name, m in module.named_modules() if hasattr(m, "lora_A")}
        if not self.layers:
            raise UnlearnkitError(f"LoRA found no linear layer to adapt in {type(module).__name__}")
        self.renamed = {f"{name}.{p}": f"{name}.base_layer.{p}" for name in self.layers for p in ("weight", "bias")}

    def _named(self, params: Params) -> Params:
        return {self.renamed.get(k, k): v for k, v in params.items()}

    def __call__(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        return super().__call__(self._named(params), input_ids)

    def hidden(self, params: Params, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        return super().hidden(self._named(params), input_ids, layer)

    def init_adapters(self, seeds: list[int], tag: int = 0x10AA) -> Params:
        """Stacked adapters (leading dim N): model i's from seeds[i] alone (PEFT's init: A Kaiming-uniform,
        B zero, so every model starts at its base)."""
        per_model = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(s) ^ tag)
                one = {}
                for name, m in self.layers.items():
                    m.reset_lora_parameters(ADAPTER, True)
                    one[f"{name}.lora_A.{ADAPTER}.weight"] = m.lora_A[ADAPTER].weight.detach().clone()
                    one[f"{name}.lora_B.{ADAPTER}.weight"] = m.lora_B[ADAPTER].weight.detach().clone()
            per_model.append(one)
        for m in self.layers.values():  # the template's B back at zero (left-out adapters read as none)
            torch.nn.init.zeros_(m.lora_B[ADAPTER].weight)
        return {k: torch.stack([p[k] for p in per_model]).contiguous() for k in per_model[0]}

    def merge(self, base: Params, adapters: Params) -> Params:
        """Plain parameters W + (α/r)·B·A per model (PEFT's `get_delta_weight`, transposed for Conv1D)."""
        out = dict(base)
        for name, m in self.layers.items():
            a, b = adapters[f"{name}.lora_A.{ADAPTER}.weight"], adapters[f"{name}.lora_B.{ADAPTER}.weight"]
            delta = (b @ a) * m.scaling[ADAPTER]                       # (N, out, in)
            out[f"{name}.weight"] = base[f"{name}.weight"] + (delta.transpose(1, 2) if m.fan_in_fan_out else delta)
        return out

    @staticmethod
    def size(params: Params) -> int:
        return sum(v[0].numel() for v in params.values())
