from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from ..engine import Params
from .base import Context, LoopParams, register
from .random_labels import draw_random_labels
from .scrub import distill_kl


@dataclass(frozen=True)
class LLMUParams(LoopParams):
    epochs: float = 20.0         # passes over S_F (the harmful data drives LLMU's steps)
    lr: float = 2e-3             # the ascent term is unbounded: small steps (the paper's LLM rate is 2e-6)
    ascent: float = 0.5          # ε1, weight of gradient ascent on S_F
    random: float = 1.0          # ε2, weight of CE toward random other labels on S_F
    normal: float = 1.0          # ε3, weight of KL(original ‖ model) on S_R
    forget_batch_size: int = 32

    search_space: ClassVar[dict] = {**LoopParams.search_space, "epochs": ("float", 2.0, 40.0),
                                    "ascent": ("float", 0.0, 1.0)}

    def _checks(self):
        return super()._checks() + [(k, getattr(self, k) >= 0, "must be >= 0") for k in ("ascent", "random", "normal")] \
            + [("forget_batch_size", self.forget_batch_size >= 1, "must be >= 1")]


@register("llmu", LLMUParams)
def llmu(ctx: Context, hp: LLMUParams) -> Params:
    """LLMU for classifiers: ascent on S_F, CE toward random labels on S_F, KL to the original on S_R.

    Yao, Xu & Liu 2023, "Large Language Model Unlearning" (arXiv 2310.10683), the method's update
    θ ← θ − ε1·∇L_fgt − ε2·∇L_rdn − ε3·∇L_nor with L_fgt = −CE on the harmful (forget) data,
    L_rdn = CE toward random responses on the same inputs and L_nor = KL(original ‖ model) on normal
    (retain) data; the paper's weights ε1 = 0.5, ε2 = 1, ε3 = 1 (its LLM setting). Made for labels as the
    corrective-unlearning issue asks: a random response is a label drawn once per model and forget point
    uniformly from the other classes (`random_labels.draw_random_labels`), and the KL is over class
    probabilities (temperature 1). Forget batches drive the steps; retain batches cycle beside them.
    """
    teacher = {"teacher": ctx.originals, "labels": draw_random_labels(ctx.dataset.y_train, ctx.forget, ctx.seeds,
                                                                      ctx.dataset.num_classes)}

    def loss(params, batch, frozen):
        (xf, yf, pf), (xr, _, _) = batch["forget"], batch["retain"]
        zf = ctx.forward(params, xf)
        zr = ctx.forward(params, xr)
        return (-hp.ascent * F.cross_entropy(zf, yf) + hp.random * F.cross_entropy(zf, frozen["labels"][pf])
                + hp.normal * distill_kl(zr, ctx.forward(frozen["teacher"], xr).detach(), 1.0))

    streams = {"forget": ctx.stream("forget", ctx.forget, hp.forget_batch_size),
               "retain": ctx.stream("retain", ctx.retain, hp.batch_size)}
    return ctx.fit(loss, streams, hp.epochs, hp.optim(), frozen=teacher, desc="llmu")
