"""Recall@K and NDCG@K of a recommendation run's unlearned models: the probe `experiment.run` gives the
Bench of a task on interaction data, so every row also says how the models rank the catalogue.

Each model scores every (user, item) pair; two questions are asked of the ranking (`metrics.ranking`):
- val (retained utility): the held-out interactions, every training interaction (retained or forgotten)
  excluded from the ranking — the usual protocol, and the same candidates for every arm;
- forget: the forgotten interactions, the user's retained training and validation interactions
  excluded — how high the forgotten items still rank among the items the user has no other record of.
The originals rank forgotten items near the top (they were trained on them); oracles rank them as they
rank any unseen item the user would like; a method should land where the retrain row does.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import Interactions
from .engine import Forward, Params, predict
from .metrics import recall_ndcg_at_k

RANK_K = 20  # MMRecUn's and MMRec's headline cut-off (Recall@20, NDCG@20)


def ranking_probe(forward: Forward, data: Interactions, forget: np.ndarray, retain: np.ndarray, k: int = RANK_K):
    """probe(params) -> {"ranking": {"k", "recall": {"val", "forget"}, "ndcg": {"val", "forget"}}}, each the
    mean over the N models of the mean over users."""
    users, items = torch.meshgrid(torch.arange(data.n_users), torch.arange(data.n_items), indexing="ij")
    pairs = torch.stack([users.flatten(), items.flatten()], 1)
    retained, forgotten, held_out = data.matrix(retain), data.matrix(forget), data.matrix(val=True)

    def probe(params: Params) -> dict:
        scores = predict(forward, params, pairs)[..., 0].view(-1, data.n_users, data.n_items)
        val = recall_ndcg_at_k(scores, held_out, retained | forgotten, k)
        fgt = recall_ndcg_at_k(scores, forgotten, retained | held_out, k)
        return {"ranking": {"k": k, **{m: {"val": float(val[m].mean()), "forget": float(fgt[m].mean())}
                                       for m in ("recall", "ndcg")}}}
    return probe
