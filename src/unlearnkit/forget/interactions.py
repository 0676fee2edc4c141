"""Forget sets of a recommendation task: interactions, users and items (the requests MMRecUn unlearns).

Every request is a set of training interaction rows (`data.interactions`): `interactions:K|F` random
interactions; `users:K|F` random users with all their training interactions (a user's "right to be
forgotten"); `items:K|F` random items with every training interaction whose positive is that item (a
revoked licence); `user:ID,…` and `item:ID,…` the same for named users or items. An item forgotten this
way may still appear among other rows' sampled negatives: those are the sampler's, not the data's.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset, Interactions
from ..errors import UnlearnkitError
from .parse import by_ids, draw_rng, id_list, resolve_amount


def _interactions_of(ds: Dataset, kind: str) -> Interactions:
    if not isinstance(ds, Interactions):
        raise UnlearnkitError(f"{kind}: forget sets are for recommendation tasks (e.g. rec-mf); {ds.name} is not "
                              "interaction data")
    return ds


def _interactions(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    ds = _interactions_of(ds, "interactions")
    if len(args) != 1:
        raise UnlearnkitError("interactions takes one argument: interactions:K or interactions:FRACTION")
    n = len(ds.y_train)
    k = resolve_amount(args[0], n, "interactions", "interactions")
    if k > n:
        raise UnlearnkitError(f"interactions:{args[0]} asks for {k} interactions; the training set has {n}")
    return torch.randperm(n, generator=draw_rng(seed))[:k].numpy()


def _entities(kind: str, column: int):
    """users:K|F or items:K|F — K (or a fraction F) of the users (items) with a training interaction,
    drawn from the seed, with all of their training interactions."""
    def draw(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
        ds = _interactions_of(ds, kind)
        if len(args) != 1:
            raise UnlearnkitError(f"{kind} takes one argument: {kind}:K or {kind}:FRACTION")
        present = np.unique(ds.x_train[:, column].numpy())
        k = resolve_amount(args[0], len(present), kind, kind)
        if k > len(present):
            raise UnlearnkitError(f"{kind}:{args[0]} asks for {k} {kind}; {len(present)} have training interactions")
        chosen = present[torch.randperm(len(present), generator=draw_rng(seed))[:k].numpy()]
        return np.flatnonzero(np.isin(ds.x_train[:, column].numpy(), chosen))
    return draw


def _named(kind: str, column: int):
    """user:ID,… or item:ID,… — the named users' (items') training interactions; an id that does not
    exist, or has no training interaction, is refused."""
    def pick(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
        ds = _interactions_of(ds, kind)
        ids = id_list(":".join(args), kind)
        if not ids:
            raise UnlearnkitError(f"{kind}: no ids given; write {kind}:3 or {kind}:3,17")
        count = ds.n_users if column == 0 else ds.n_items
        missing = [i for i in ids if not 0 <= i < count]
        if missing:
            raise UnlearnkitError(f"{kind} {missing[0]} does not exist: {ds.name} has {kind}s 0..{count - 1}"
                                  + (f" ({len(missing)} ids out of range)" if len(missing) > 1 else ""))
        rows = ds.x_train[:, column].numpy()
        idle = [i for i in ids if not (rows == i).any()]
        if idle:
            raise UnlearnkitError(f"{kind} {idle[0]} has no training interactions in {ds.name}: nothing to forget")
        return np.flatnonzero(np.isin(rows, ids))
    return pick


REC_KINDS = {
    "interactions": (_interactions, "interactions:K (K random training interactions) or interactions:F (a fraction, "
                                    "with a decimal point: interactions:0.05)"),
    "users": (_entities("users", 0), "users:K or users:F (random users with all their training interactions)"),
    "items": (_entities("items", 1), "items:K or items:F (random items with every training interaction with them)"),
    "user": (_named("user", 0), "user:ID[,ID…] (the named users' training interactions)"),
    "item": (_named("item", 1), "item:ID[,ID…] (every training interaction with the named items)"),
    "ids": (by_ids, "ids:4,8,15 or ids:@FILE (stable interaction ids, e.g. a run's forget_set.json)"),
}
