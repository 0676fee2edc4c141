"""Top-K ranking metrics of recommenders: Recall@K and NDCG@K (pure functions over score arrays).

As the LightGCN / MMRec evaluators compute them (the protocol MMRecUn reports, Sinha et al. 2024 §4):
for each user, rank every item that is not excluded (the user's known interactions other than the
ones being asked about) by score; with R_u the user's relevant items and hits the relevant items among
the top K,

    Recall@K = |hits| / |R_u|,
    NDCG@K   = Σ_{r ∈ top K, item_r ∈ R_u} 1/log2(r + 2)  /  Σ_{r < min(K, |R_u|)} 1/log2(r + 2)

(r counted from 0), averaged over the users with at least one relevant item.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def recall_ndcg_at_k(scores, relevant: np.ndarray, exclude: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """{"recall": (models,), "ndcg": (models,)} of scores (models, users, items) against the (users,
    items) boolean masks `relevant` and `exclude` (which must not overlap: an excluded item is never
    ranked, so it could not be found)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    relevant, exclude = np.asarray(relevant, dtype=bool), np.asarray(exclude, dtype=bool)
    if s.dim() != 3 or relevant.shape != tuple(s.shape[1:]) or exclude.shape != relevant.shape:
        raise ValueError(f"scores must be (models, users, items) and both masks (users, items); got "
                         f"{tuple(s.shape)}, {relevant.shape} and {exclude.shape}")
    if (relevant & exclude).any():
        raise ValueError("an item is both relevant and excluded for some user")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    ranked = int((~exclude).sum(1).min())
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= ranked:
        raise ValueError(f"k must be in [1, {ranked}] (the fewest items any user has left to rank), got {k}")
    users = relevant.any(1)
    if not users.any():
        raise ValueError("no user has a relevant item")
    s, rel = s[:, users], torch.as_tensor(relevant[users])
    s = s.masked_fill(torch.as_tensor(exclude[users]), float("-inf"))
    top = s.topk(k, dim=2).indices                                  # (models, users, k)
    hits = rel.unsqueeze(0).expand(len(s), -1, -1).gather(2, top).double()
    n_rel = rel.sum(1).double()                                     # (users,)
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
    ideal = torch.cumsum(discount, 0)[(n_rel.clamp(max=k) - 1).long()]
    return {"recall": (hits.sum(2) / n_rel).mean(1).numpy(),
            "ndcg": ((hits * discount).sum(2) / ideal).mean(1).numpy()}
