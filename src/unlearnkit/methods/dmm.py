from dataclasses import dataclass
from typing import ClassVar

import torch

from ..budget import MAX_MODELS
from ..engine import Params, predict
from .base import Context, register
from .om import MatchParams, match_outputs


@dataclass(frozen=True)
class DMMParams(MatchParams):
    datamodels: str = ""          # a directory saved by `unlearnkit datamodels`; "" fits them (cached)
    models: int = 100             # subset models M when fitting here
    subset: float = 0.5

    search_space: ClassVar[dict] = MatchParams.search_space

    def _checks(self):
        from ..attribution.subsets import MIN_MODELS
        return super()._checks() + [("models", MIN_MODELS <= self.models <= MAX_MODELS,
                                     f"must be in [{MIN_MODELS}, {MAX_MODELS}]"),
                                    ("subset", 0 < self.subset < 1, "must be in (0, 1)")]

    def check_setting(self, task, dataset, forget, seed) -> None:
        if self.datamodels:  # readable, and fitted for this task and training set
            from ..attribution import load_datamodels
            load_datamodels(self.datamodels, task, dataset)


@register("dmm", DMMParams)
def dmm(ctx: Context, hp: DMMParams) -> Params:
    """Datamodel Matching: predict the oracle's outputs with datamodels, then fine-tune to match them.

    Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" (arXiv
    2410.23232), §4, Eq. for DMM: f(x; S_R) ≈ f(x; S) − Σ_{i∈S_F} β_i(x), then OM's matching step with
    the predicted outputs as targets. Our datamodels predict margins (ridge, `attribution/`), so the
    prediction moves each model's correct-class logit by −Σ_{i∈S_F} β_i(x), which changes its margin by
    exactly that amount and leaves the other logits as they are; each model keeps its own logits
    otherwise, so the ensemble keeps its spread. (The reference's datamodels, `dm_direct`, predict every
    class's logit, and it subtracts a prediction from each; margin datamodels fix only the true class's.)
    The datamodels are a one-time cost amortised over all
    deletion requests, so fitting them is not charged to a request (it is reported in the log).
    """
    from ..attribution import compute_datamodels, load_datamodels

    if hp.datamodels:
        dm = load_datamodels(hp.datamodels, ctx.task, ctx.dataset)
    else:
        dm = ctx.uncharged(lambda: compute_datamodels(ctx.task, ctx.dataset, hp.models, hp.subset, ctx.run_seed,
                                                      ctx.cache).datamodels)
    n = len(ctx.dataset.y_train)
    shift = dm.removal_effect(ctx.forget)[:n]                    # predicted margin drop on each train point
    targets = predict(ctx.forward, ctx.originals, ctx.dataset.x_train)
    targets[:, torch.arange(n), ctx.dataset.y_train] -= shift
    return match_outputs(ctx, targets, hp, "dmm")
