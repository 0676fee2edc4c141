"""Train (or load from cache) N small causal LMs on encoded QAs in one vectorised `engine.fit` pass.

Mirrors `unlearnkit.zoo.train.train_models`: model i is initialised and shuffled from seeds[i] alone,
the loss is written for one model and vmapped by `fit`, and a finished ensemble is cached in a
`ZooCache` under a hash of everything that made it (config, data digest, positions, seeds, recipe,
versions); an interrupted run resumes from its last whole epoch. The loss is TOFU's fine-tuning loss
(Maini et al. 2024, arXiv 2401.06121): next-token cross-entropy on the answer tokens only.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .. import __version__
from ..engine import EpochStream, Optim
from ..engine.compute import current
from ..tasks import Recipe
from ..zoo.cache import ZooCache, arm_key, stable_hash, tensor_digest
from ..zoo.train import Arm, train_cached
from .model import LMForward, answer_width, describe_config, init_lm_params
from .task import DEFAULT_LM_RECIPE

if TYPE_CHECKING:  # transformers' model code is imported where a model is built
    from transformers import GPT2Config


def lm_loss(forward: LMForward, width: int):
    """loss(params, batch, frozen) of ONE model on its "train" batch: answer-token causal-LM NLL, the head
    applied to each row's `width` answer positions (`LMForward.answer_loss`; `answer_width` of the data)."""
    def loss(params, batch, frozen):
        x, y, _ = batch["train"]
        return forward.answer_loss(params, x, y, width)
    return loss


def recipe_optim(recipe: Recipe) -> Optim:
    return Optim(recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay, recipe.schedule)


def lm_key(config: GPT2Config, data: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
           seeds: list[int], recipe: Recipe) -> str:
    return arm_key(lm_family(config, data, positions, recipe), seeds)


def lm_family(config: GPT2Config, data: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
              recipe: Recipe) -> str:
    """Everything that makes an LM arm but its seeds (`zoo.train.zoo_family`)."""
    input_ids, labels = data
    return stable_hash({
        "kind": "causal-lm", "config": describe_config(config), "recipe": dataclasses.asdict(recipe),
        "data": [tensor_digest(input_ids), tensor_digest(labels)], "positions": tensor_digest(positions),
        "torch": torch.__version__, "unlearnkit": __version__, "format": 5, "compute": current().key(),
    })


def train_lm_models(config: GPT2Config, data: tuple[torch.Tensor, torch.Tensor], positions, seeds: list[int],
                    recipe: Recipe = DEFAULT_LM_RECIPE, cache: ZooCache | None = None,
                    label: str = "lm") -> Arm:
    """N = len(seeds) GPT-2-style LMs trained on rows `positions` ((n,) shared or (N, n) per model) of
    data = (input_ids (M, L), labels (M, L)) from `tokenizer.encode_items`."""
    input_ids, labels = (torch.as_tensor(t, dtype=torch.long) for t in data)
    positions = torch.as_tensor(positions, dtype=torch.long)
    # no `family`: an LM trained among 3 differs from the same LM trained alone by up to ~2e-3 in a weight
    # after tofu-synth-tiny's 375 steps (the vmapped attention kernels depend on the number of models), so
    # LM arms are not assembled from one another's models
    return train_cached(lm_key(config, (input_ids, labels), positions, seeds, recipe),
                        lm_loss(LMForward(config), answer_width(labels[positions.flatten().unique()])),
                        lambda: init_lm_params(config, seeds), EpochStream(positions, seeds, recipe.batch_size),
                        (input_ids, labels), recipe.epochs, recipe_optim(recipe), cache, label,
                        {"kind": "causal-lm", "seeds": [int(s) for s in seeds], "config": describe_config(config),
                         "recipe": dataclasses.asdict(recipe)})
