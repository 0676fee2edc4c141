"""rec-synth: a seeded, generated implicit-feedback task with item content features (no download).

Users and items get latent taste vectors (dimension `latent`); an item's content features are a fixed
random linear map of its latent vector plus noise (what an image or text encoder would give a
multi-modal recommender: informative, not complete). User u interacts with `n_u` distinct items drawn
without replacement with probabilities ∝ exp(sharpness·⟨p_u, q_i⟩/√latent + popularity_i) (Gumbel
top-k); a random `val_fraction` of each user's items (at least one) is held out as validation. Every
interaction row carries `negatives` items the user never interacted with (`interactions.Interactions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .interactions import Interactions

GENERATOR_TAG = 0x5EC5


@dataclass(frozen=True)
class RecSynth:
    n_users: int = 300
    n_items: int = 400
    min_per_user: int = 10
    max_per_user: int = 40
    latent: int = 8
    features: int = 16
    feature_noise: float = 0.5
    sharpness: float = 2.0
    negatives: int = 4
    val_fraction: float = 0.2
    seed: int = 0


GENERATORS = {
    "rec-synth": RecSynth(),
    "rec-synth-tiny": RecSynth(n_users=60, n_items=80, min_per_user=8, max_per_user=16),
}


def load_rec_synth(name: str) -> Interactions:
    """The interactions of generator `name` (GENERATORS); ids number every interaction user by user."""
    g = GENERATORS[name]
    rng = np.random.default_rng([g.seed, GENERATOR_TAG])
    users, items = rng.normal(size=(g.n_users, g.latent)), rng.normal(size=(g.n_items, g.latent))
    popularity = rng.normal(scale=0.5, size=g.n_items)
    features = items @ rng.normal(size=(g.latent, g.features)) / np.sqrt(g.latent)
    features += g.feature_noise * rng.normal(size=features.shape)
    features = (features - features.mean(0)) / features.std(0)
    logits = g.sharpness * users @ items.T / np.sqrt(g.latent) + popularity
    rows, held_out = [], []
    for u in range(g.n_users):
        n_u = int(rng.integers(g.min_per_user, g.max_per_user + 1))
        chosen = np.argsort(-(logits[u] + rng.gumbel(size=g.n_items)))[:n_u]
        val = np.zeros(n_u, dtype=bool)
        val[rng.permutation(n_u)[:max(1, round(g.val_fraction * n_u))]] = True
        others = np.setdiff1d(np.arange(g.n_items), chosen)
        negatives = others[np.argsort(rng.random((n_u, len(others))), axis=1)[:, :g.negatives]]
        rows.append(np.column_stack([np.full(n_u, u), chosen, negatives]))
        held_out.append(val)
    x, val = torch.as_tensor(np.concatenate(rows)), torch.as_tensor(np.concatenate(held_out))
    ids = torch.arange(len(x))
    return Interactions(name, x[~val], torch.zeros(int((~val).sum()), dtype=torch.int64), ids[~val],
                        x[val], torch.zeros(int(val.sum()), dtype=torch.int64), ids[val],
                        num_classes=1 + g.negatives, n_users=g.n_users, n_items=g.n_items,
                        item_features=torch.as_tensor(features, dtype=torch.float32))
