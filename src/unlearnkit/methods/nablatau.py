from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from ..engine import Params, predict
from ..metrics import mean_cross_entropy
from .base import Context, LoopParams, register


@dataclass(frozen=True)
class NablaTauParams(LoopParams):
    epochs: float = 4.0          # passes over S_R
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    phases: int = 4              # α and L_val are held constant within a phase and refreshed between them
    alpha_scale: float = 5 / 3   # α₀ = alpha_scale·|S_F|/|S|
    forget_batch_size: int = 64

    search_space: ClassVar[dict] = {"lr": ("log", 1e-4, 1e-2), "epochs": ("float", 1.0, 8.0),
                                    "alpha_scale": ("float", 0.5, 5.0)}

    def _checks(self):
        return super()._checks() + [("phases", self.phases >= 1, "must be >= 1"),
                                    ("alpha_scale", self.alpha_scale >= 0, "must be >= 0"),
                                    ("forget_batch_size", self.forget_batch_size >= 1, "must be >= 1")]


@register("nablatau", NablaTauParams)
def nablatau(ctx: Context, hp: NablaTauParams) -> Params:
    """∇τ: ascend on S_F only until its loss reaches the validation loss, while descending on S_R.

    Trippa et al. 2024, "∇τ: Gradient-based and Task-Agnostic Machine Unlearning" (arXiv 2403.14339; the
    authors' notebook dnl-trpp/Nabla-Tau): L = α·ReLU(L_val − L_F)² + (1 − α)·L_R, with L_F and L_R the
    batch-mean cross-entropies on S_F and S_R and L_val the model's mean validation loss, so the forget
    loss is pushed up to what unseen data scores and no further; α starts at α₀ = 5/3·|S_F|/|S| and falls
    linearly to 0. Adam at 1e-3.
    Deviations: the loop holds α and L_val constant within each of `phases` equal parts of the budget
    (the notebook lowers α every epoch and refreshes L_val every 5), L_val is each model's own; Adam with L2
    weight decay 0 instead of AdamW; retain batches drive the steps and `epochs` counts passes over S_R
    (default 4), where the notebook's forget batches drive each epoch with retain batches drawn beside them
    (about 3 passes over S_R in all), and it decays the learning rate linearly to 0.1× (`LinearLR`).
    """
    alpha0 = hp.alpha_scale * len(ctx.forget) / (len(ctx.forget) + len(ctx.retain))
    x_val, y_val = ctx.dataset.x_val, ctx.dataset.y_val
    model, carry = ctx.originals, {}
    for phase in range(hp.phases):
        alpha = alpha0 * (1 - phase / hp.phases)
        l_val = mean_cross_entropy(predict(ctx.forward, model, x_val), y_val)

        def loss(params, batch, frozen, alpha=alpha):
            (xr, yr, _), (xf, yf, _) = batch["retain"], batch["forget"]
            l_f = F.cross_entropy(ctx.forward(params, xf), yf)
            return (alpha * F.relu(frozen["l_val"] - l_f) ** 2
                    + (1 - alpha) * F.cross_entropy(ctx.forward(params, xr), yr))

        streams = {"retain": ctx.stream(f"retain{phase}", ctx.retain, hp.batch_size),
                   "forget": ctx.stream(f"forget{phase}", ctx.forget, hp.forget_batch_size)}
        model = ctx.fit(loss, streams, hp.epochs / hp.phases, hp.optim(), params=model, frozen={"l_val": l_val},
                        carry=carry, desc=f"nablatau {phase + 1}/{hp.phases}")
    return model
