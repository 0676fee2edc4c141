"""Models trained on random subsets of the training set, through the zoo (vectorised, cached, resumable
chunk by chunk), and their margins on every training and validation example: what datamodels fit."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import MAX_MODELS
from ..data import Dataset
from ..engine import derived_seed, predict
from ..errors import UnlearnkitError, option
from ..metrics import margins
from ..tasks import Task
from ..zoo import ZooCache, arm_seeds, template, train_models

DATAMODEL_SEEDS, SUBSET_TAG = 3_000_000, 0xD4
CHUNK = 64  # models per zoo call: bounds memory and makes an interrupted run resume chunk by chunk


@dataclass(frozen=True)
class SubsetRuns:
    masks: torch.Tensor    # (M, n_train) 0/1: which training examples each model saw
    margins: torch.Tensor  # (M, n_train + n_val): margins on training then validation examples


def subset_positions(n_train: int, size: int, seed: int, model: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derived_seed(seed, SUBSET_TAG, model))
    return torch.randperm(n_train, generator=g)[:size].sort().values


MIN_MODELS = 10  # subset models at the least: ridge datamodels and their held-out LDS need several


def check_datamodel_settings(models: int, subset: float, name: str = "models") -> None:
    """The one check of datamodels' settings (the `datamodels` command, a run's --datamodel-models, DMM's
    hyperparameters): M subset models (the option `name`) and the fraction of the training set each trains on."""
    if not MIN_MODELS <= models <= MAX_MODELS:
        raise UnlearnkitError(f"{option(name)}: datamodels need at least {MIN_MODELS} subset models (and at most "
                              f"{MAX_MODELS}), got {models}")
    if not 0 < subset < 1:
        raise UnlearnkitError(f"{option('subset')} must be a fraction in (0, 1) of the training set, got {subset}")


def subset_size(n: int, subset: float) -> int:
    """Examples each subset model trains on: a `subset` fraction of the n training examples."""
    return max(1, round(subset * n))


def train_subset_models(task: Task, dataset: Dataset, models: int, subset: float, seed: int,
                        cache: ZooCache | None, first: int = 0) -> SubsetRuns:
    """`models` models, model m on its own random `subset` fraction (model index first + m)."""
    check_datamodel_settings(models, subset)
    n = len(dataset.y_train)
    size = subset_size(n, subset)
    forward = template(task, dataset)
    x_all, y_all = torch.cat([dataset.x_train, dataset.x_val]), torch.cat([dataset.y_train, dataset.y_val])
    masks, outs = [], []
    for start in range(first, first + models, CHUNK):
        ids = list(range(start, min(start + CHUNK, first + models)))
        positions = torch.stack([subset_positions(n, size, seed, m) for m in ids])
        seeds = [arm_seeds(DATAMODEL_SEEDS, 1, seed)[0] + m for m in ids]
        arm = train_models(task, dataset, positions, seeds, cache, f"subset models {ids[0]}–{ids[-1]}")
        mask = torch.zeros(len(ids), n)
        mask.scatter_(1, positions, 1.0)
        masks.append(mask)
        outs.append(margins(predict(forward, arm.params, x_all), y_all))
    return SubsetRuns(torch.cat(masks), torch.cat(outs))
