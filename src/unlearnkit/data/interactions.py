"""Implicit-feedback interactions as a Dataset: one row per (user, item) interaction.

A recommendation task reuses the classifier pipeline whole (zoo, engine, forget sets, KLoM) by writing
each interaction as a row `x = [user, item, neg_1, …, neg_K]` with K sampled negative items and label
`y = 0`: the "classes" of a row are its positive item and its K negatives, and a recommender's scores
of them, `[ŷ_ui, ŷ_uj1, …, ŷ_ujK]`, play the part of logits. The classifier margin of that row,
ŷ_ui − logsumexp_k ŷ_ujk, is then a score margin of the interaction (ŷ_ui − ŷ_uj for K = 1), and BPR
(Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback", eq. 3) is
mean_k −ln σ(ŷ_ui − ŷ_ujk) over the same row (`models.mf.bpr_loss`).

Negatives are drawn once, when the data is generated, from the items the user never interacted with
(neither in training nor in validation), and stay with their row: the engine's vmapped loss must be
deterministic, and a row's margin must mean the same thing in every arm.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .dataset import Dataset


@dataclass(frozen=True, eq=False)
class Interactions(Dataset):
    """Training and held-out interactions of `n_users` users with `n_items` items; `item_features`
    (n_items, F) are the items' content features (what a multi-modal recommender projects into its item
    embeddings). `num_classes` is 1 + K, the row's positive and its K negatives."""

    n_users: int = 0
    n_items: int = 0
    item_features: torch.Tensor | None = None

    def __post_init__(self):
        super().__post_init__()
        for split, x in (("train", self.x_train), ("val", self.x_val)):
            if x.dim() != 2 or x.shape[1] != self.num_classes + 1 or x.dtype != torch.int64:
                raise ValueError(f"{self.name}: {split} rows must be int64 [user, item, {self.num_classes - 1} "
                                 f"negatives], got {tuple(x.shape)} {x.dtype}")
            if len(x) and not (0 <= int(x[:, 0].min()) and int(x[:, 0].max()) < self.n_users):
                raise ValueError(f"{self.name}: {split} rows name users outside 0..{self.n_users - 1}")
            if len(x) and not (0 <= int(x[:, 1:].min()) and int(x[:, 1:].max()) < self.n_items):
                raise ValueError(f"{self.name}: {split} rows name items outside 0..{self.n_items - 1}")
        if self.item_features is None or self.item_features.shape[0] != self.n_items:
            raise ValueError(f"{self.name}: item_features must have one row per item ({self.n_items})")

    @property
    def model_kwargs(self) -> dict:
        return {"n_users": self.n_users, "item_features": self.item_features}

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint.encode())
        h.update(np.ascontiguousarray(self.item_features.numpy()).tobytes())
        h.update(f"{self.n_users},{self.n_items}".encode())
        return h.hexdigest()[:16]

    def users_of(self, positions) -> np.ndarray:
        """The users of training rows `positions`."""
        return self.x_train[torch.as_tensor(positions, dtype=torch.long), 0].numpy()

    def items_of(self, positions) -> np.ndarray:
        """The (positive) items of training rows `positions`."""
        return self.x_train[torch.as_tensor(positions, dtype=torch.long), 1].numpy()

    def matrix(self, positions=None, val: bool = False) -> np.ndarray:
        """(n_users, n_items) bool: the interactions of training rows `positions` (all by default), or of
        the validation rows."""
        x = self.x_val if val else self.x_train[torch.as_tensor(
            np.arange(len(self.x_train)) if positions is None else positions, dtype=torch.long)]
        out = np.zeros((self.n_users, self.n_items), dtype=bool)
        out[x[:, 0].numpy(), x[:, 1].numpy()] = True
        return out
