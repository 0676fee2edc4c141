"""Datasets as in-memory tensors with stable example ids."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import UnlearnkitError, option


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset split into a training set S and a fixed validation set S_V.

    `train_ids`/`val_ids` are the examples' indices in the source dataset: they stay the same when a
    subset is taken (`--train-size`), so a forget set saved by id means the same examples in every run.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    train_ids: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_ids: torch.Tensor
    num_classes: int

    def __post_init__(self):
        for split, x, y, ids in (("train", self.x_train, self.y_train, self.train_ids),
                                 ("val", self.x_val, self.y_val, self.val_ids)):
            if not len(x) == len(y) == len(ids):
                raise ValueError(f"{self.name}: {split} inputs, labels and ids differ in length")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def model_kwargs(self) -> dict:
        """What a model of this data needs beyond its input shape and number of classes (a recommender's
        users and item features, `interactions.Interactions`); none for a classification dataset."""
        return {}

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the tensors themselves: a cache built from other data never matches."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.train_ids, self.x_val, self.y_val, self.val_ids):
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
        return h.hexdigest()[:16]

    def subset_train(self, size: int, seed: int) -> Dataset:
        """A fixed, seeded subset of the training set (ids kept)."""
        n = len(self.y_train)
        if not 1 <= size <= n:
            raise UnlearnkitError(f"{option('train_size')} must be between 1 and {n} for {self.name}, got {size}")
        if size == n:
            return self
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
        return dataclasses.replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep],
                                   train_ids=self.train_ids[keep])
