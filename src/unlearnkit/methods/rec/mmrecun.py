from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...engine import Params
from ...models import bpr_loss
from ..base import REC_REGISTRY, Context, register
from .base import BPRLoopParams


@dataclass(frozen=True)
class MMRecUnParams(BPRLoopParams):
    # passes over the forget interactions: on rec-mf, 10 bring forgotten interactions' Recall@20 to the oracles'
    # (interactions:0.05); user and item requests need about 40 (users:10, items:5; README)
    epochs: float = 10.0
    batch_size: int = 64         # forget batch
    retain_batch_size: int = 256
    alpha: float = 1.0           # weight of the reverse BPR on the forget interactions
    beta: float = 1.0            # weight of the forward BPR on the retained ones

    search_space: ClassVar[dict[str, tuple]] = {**BPRLoopParams.search_space, "alpha": ("log", 0.1, 10.0)}

    def _checks(self):
        return super()._checks() + [("retain_batch_size", self.retain_batch_size >= 1, "must be >= 1"),
                                    ("alpha", self.alpha > 0, "must be > 0"), ("beta", self.beta >= 0, "must be >= 0")]


def reverse_bpr_loss(scores: torch.Tensor) -> torch.Tensor:
    """MMRecUn's reverse BPR: mean over rows and negatives of −ln σ(ŷ_uj − ŷ_ui), scores (B, 1 + K) with
    the positive first — BPR with the roles of the interacted item and the negative swapped."""
    return F.softplus(scores[:, :1] - scores[:, 1:]).mean()


@register("mmrecun", MMRecUnParams, REC_REGISTRY)
def mmrecun(ctx: Context, hp: MMRecUnParams) -> Params:
    """MMRecUn: reverse BPR on the forget interactions + forward BPR on the retained ones (Sinha et al. 2024).

    Sinha, Mandal & Kankanhalli, "Multi-Modal Recommendation Unlearning for Legal, Licensing, and Modality
    Constraints" (AAAI 2025, arXiv 2405.15328), §3: from the trained recommender, minimise
    α·L_revBPR(D_f) + β·L_BPR(D_r) + λ‖Θ‖², the reverse term attenuating the forget interactions, the
    forward term reinforcing the retained ones, λ‖Θ‖² BPR's regulariser (here the optimizer's coupled
    weight decay). An epoch is a pass over the forget interactions, a retain batch drawn beside each
    forget batch. Interactions, users (all their interactions) and items (all interactions with them)
    are unlearned alike: each request is a set of interaction rows.
    """
    def loss(params, batch, frozen):
        (xf, _, _), (xr, _, _) = batch["forget"], batch["retain"]
        return (hp.alpha * reverse_bpr_loss(ctx.forward(params, xf))
                + hp.beta * bpr_loss(ctx.forward(params, xr)))

    streams = {"forget": ctx.stream("forget", ctx.forget, hp.batch_size),
               "retain": ctx.stream("retain", ctx.retain, hp.retain_batch_size)}
    return ctx.fit(loss, streams, hp.epochs, hp.optim(), desc="mmrecun")
