"""ERA for language models: token-level gradient routing into added MLP units of the first blocks.

Cloud et al. 2024, "Gradient Routing: Masking Gradients to Localize Computation in Neural Networks"
(arXiv 2410.04332; repository kxcloud/gradient-routing), §4.2's TinyStories setting: d_mlp + 64 in the
early blocks (layers 0–4 of 8 there; the first half of the blocks here), the identified forget tokens'
MLP activations routed as m⊙a + (1 − m)⊙stopgrad(a) with m = 1 on the added units and −0.75 on the original
ones, every other token trained normally, L1 1e-4 on the routed blocks' activations; then the added
units are removed and a coherence fine-tune (40 steps on 64 retain items, best by held-out retain loss)
repairs what ablation broke. The widened models are trained once per identified set through the zoo
and cached, like any arm.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from ...engine import EpochStream, Params
from ...engine.compute import current
from ...errors import UnlearnkitError
from ...lm.model import LMForward, causal_lm_loss, describe_config, init_lm_params
from ...lm.train import recipe_optim
from ...zoo import ORIGINAL_SEEDS, arm_seeds, stable_hash, tensor_digest
from ...zoo.train import train_cached
from ..base import ScratchArm, Setting
from ..era import ERAParams, coherence_finetune
from .base import LM_REGISTRY, LMContext, register

if TYPE_CHECKING:  # transformers' model code is imported where a model is built
    from transformers import GPT2Config

WIDEN_TAG = 0x57494445  # "WIDE": the added units' initialisation stream


@dataclass(frozen=True)
class LMERAParams(ERAParams):
    blocks: int = 0                 # route and expand the MLPs of the first `blocks` blocks (0: the first half)
    finetune_optimizer: str = "adam"
    finetune_lr: float = 1e-3
    lora: ClassVar[bool] = False  # routes, widens and ablates the models' own MLP units

    def _checks(self):
        return super()._checks() + [("blocks", self.blocks >= 0, "must be >= 0 (0: the first half of the blocks)")]

    def check_setting(self, task, data, forget, seed) -> None:
        n = data.config.n_layer
        if self.blocks > n:
            raise UnlearnkitError(f"era.blocks={self.blocks}, but the model has {n} blocks; use 1 to {n} (0: the "
                                  f"first half)")

    def routed_blocks(self, config: GPT2Config) -> list[int]:
        return list(range(self.blocks or math.ceil(config.n_layer / 2)))


@dataclass(frozen=True)
class LMERAControlParams(LMERAParams):
    routing: bool = False


class _Routed(nn.Module):
    """An MLP activation that routes the gradient of marked tokens (the forward value is unchanged) and
    adds its mean |activation| over real tokens to `state["l1"]`."""

    def __init__(self, act: nn.Module, width: int, state: dict):
        super().__init__()
        self.act, self.width, self.state = act, width, state

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.act(h)
        route, keep = self.state.get("route"), self.state.get("keep")
        if route is None:  # scoring, generation: a plain MLP
            return a
        if self.state["routing"]:
            units = torch.arange(a.shape[-1], device=a.device)
            m = torch.where(units < self.width, self.state["scale"], 1.0).to(a.dtype)
            m = torch.where(route[..., None], m, torch.ones_like(a))
            a = m * a + (1 - m) * a.detach()
        self.state["l1"] = self.state["l1"] + (a.abs().mean(-1) * keep).sum() / keep.sum().clamp(min=1)
        return a


class RoutedLMForward(LMForward):
    """A GPT-2 whose first blocks' MLPs are `expand` units wider, with routing on the wider activations:
    `routed_loss(params, x, y, route)` is the answer NLL plus the L1 term with the tokens `route` (B, L) routed."""

    def __init__(self, config: GPT2Config, blocks: list[int], expand: int, scale: float, routing: bool, pad_id: int):
        from transformers import GPT2LMHeadModel
        from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
        module = GPT2LMHeadModel(config)
        self.width = config.n_inner or 4 * config.n_embd
        self.state = {"scale": scale, "routing": routing}
        for b in blocks:
            mlp = GPT2MLP(self.width + expand, config)
            mlp.act = _Routed(mlp.act, self.width, self.state)
            module.transformer.h[b].mlp = mlp
        super().__init__(module=module)
        self.blocks, self.expand, self.pad_id = blocks, expand, pad_id

    def routed_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, route: torch.Tensor) -> tuple:
        self.state.update(route=route, keep=(x != self.pad_id).to(torch.float32), l1=x.new_zeros((), dtype=torch.float32))
        try:
            return causal_lm_loss(self(params, x), y), self.state["l1"]
        finally:
            self.state.update(route=None, keep=None, l1=None)


def widened_params(config: GPT2Config, seeds: list[int], blocks: list[int], expand: int) -> Params:
    """The originals' initialisation (same seeds, same values) with `expand` units added to the MLPs of
    `blocks`: c_fc columns N(0, 0.02) and zero biases, c_proj rows N(0, 0.02/√(2·n_layer)) (GPT-2's init)."""
    params = init_lm_params(config, seeds)
    std = config.initializer_range
    for b in blocks:
        pre = f"transformer.h.{b}.mlp."
        gens = [torch.Generator().manual_seed(int(s) * 131 + b + WIDEN_TAG) for s in seeds]
        w_fc, w_proj = params[pre + "c_fc.weight"], params[pre + "c_proj.weight"]  # (N, d, w), (N, w, d)
        d = w_fc.shape[1]
        new_fc = torch.stack([torch.randn(d, expand, generator=g) for g in gens]) * std
        new_proj = torch.stack([torch.randn(expand, d, generator=g) for g in gens]) * (std / math.sqrt(2 * config.n_layer))
        params[pre + "c_fc.weight"] = torch.cat([w_fc, new_fc.to(w_fc.dtype)], 2).contiguous()
        params[pre + "c_fc.bias"] = torch.cat([params[pre + "c_fc.bias"], w_fc.new_zeros(len(seeds), expand)], 1)
        params[pre + "c_proj.weight"] = torch.cat([w_proj, new_proj.to(w_proj.dtype)], 1).contiguous()
    return params


def ablate_mlp(params: Params, blocks: list[int], width: int) -> Params:
    """The widened models without their added MLP units: models of the task's own shape."""
    out = dict(params)
    for b in blocks:
        pre = f"transformer.h.{b}.mlp."
        out[pre + "c_fc.weight"] = params[pre + "c_fc.weight"][..., :width].contiguous()
        out[pre + "c_fc.bias"] = params[pre + "c_fc.bias"][..., :width].contiguous()
        out[pre + "c_proj.weight"] = params[pre + "c_proj.weight"][:, :width].contiguous()
    return out


def lm_era_key(config, recipe, tokens: tuple[torch.Tensor, torch.Tensor], seeds: list[int], forget,
               hp: LMERAParams) -> str:
    """The cache key of the LM ERA's widened arm: everything that made it."""
    input_ids, labels = tokens
    return stable_hash({"lm-era": True, "config": describe_config(config), "recipe": dataclasses.asdict(recipe),
                        "data": [tensor_digest(input_ids), tensor_digest(labels)], "seeds": seeds,
                        "blocks": hp.routed_blocks(config),
                        "routed": tensor_digest(torch.as_tensor(np.sort(forget))) if hp.routing else None,
                        "expand": hp.expand, "scale": hp.routed_original, "l1": hp.l1, "compute": current().key()})


def lm_era_arm(hp: LMERAParams, setting: Setting) -> list[ScratchArm]:
    """The LM ERA's `scratch`: its widened arm on every training item (counted at the task model's cost per
    token, a lower bound: only some blocks' MLPs are wider)."""
    data = setting.data
    return [ScratchArm(torch.arange(len(data.items)), ORIGINAL_SEEDS,
                       lm_era_key(data.config, data.task.recipe, data.tensors, setting.seeds, setting.forget, hp))]


def lm_era_models(ctx: LMContext, hp: LMERAParams) -> Params:
    """Expand, Route (or not), Ablate: the widened LMs trained on every training item with the identified
    items' tokens routed (the task's recipe, through the zoo's cache), then ablated."""
    config, recipe = ctx.lm_config, ctx.recipe
    blocks = hp.routed_blocks(config)
    forward = RoutedLMForward(config, blocks, hp.expand, hp.routed_original, hp.routing, ctx.pad_id)
    input_ids, labels = ctx.tokens
    seeds = arm_seeds(ORIGINAL_SEEDS, ctx.n_models, ctx.run_seed)
    routed = torch.zeros(len(input_ids), dtype=torch.bool)  # the same for every model: a closure, not frozen
    routed[torch.as_tensor(ctx.forget)] = hp.routing
    (routed,) = ctx.on_device(routed)  # indexed by the batch positions, on the run's device

    def loss(params, batch, frozen):
        x, y, idx = batch["train"]
        nll, l1 = forward.routed_loss(params, x, y, routed[idx][:, None].expand(x.shape))
        return nll + hp.l1 * l1

    positions = torch.arange(len(input_ids))
    key = lm_era_key(config, recipe, ctx.tokens, seeds, ctx.forget, hp)
    arm = train_cached(key, loss, lambda: widened_params(config, seeds, blocks, hp.expand),
                       EpochStream(positions, seeds, recipe.batch_size), (input_ids, labels), recipe.epochs,
                       recipe_optim(recipe), ctx.cache, "era" if hp.routing else "era-control",
                       {"kind": "causal-lm-era", "seeds": seeds, "blocks": blocks, "expand": hp.expand})
    return ablate_mlp(ctx.counted(arm), blocks, forward.width)


def _answer_nll(ctx: LMContext):
    return lambda p, x, y: causal_lm_loss(ctx.forward(p, x), y)


@register("era", LMERAParams, LM_REGISTRY, scratch=lm_era_arm)
def era(ctx: LMContext, hp: LMERAParams) -> Params:
    """ERA (Expand, Route, Ablate) with token-level routing in the first blocks' MLPs (Cloud et al. 2024,
    arXiv 2410.04332, §4.2): every token of an identified forget item is routed (tofu-synth has no topic
    words to single out, so the item is the unit); unidentified forget items train as retain data, as in
    the paper's partial labelling. Deviations: a 2-block GPT trained from scratch on tofu-synth instead of
    an 8-layer TinyStories model, so the first block is routed; Adam 1e-3 for the coherence fine-tune."""
    return coherence_finetune(ctx, lm_era_models(ctx, hp), hp, _answer_nll(ctx))


@register("era-control", LMERAControlParams, LM_REGISTRY, scratch=lm_era_arm)
def era_control(ctx: LMContext, hp: LMERAControlParams) -> Params:
    """ERA without routing (Cloud et al. 2024's control): expand, train with the L1 penalty, ablate the
    added units and fine-tune — what expansion and fine-tuning alone do."""
    return coherence_finetune(ctx, lm_era_models(ctx, hp), hp, _answer_nll(ctx))
