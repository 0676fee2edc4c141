import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..engine import Optim, Params, predict
from ..tasks import Task
from ..zoo import ORACLE_SEEDS, arm_seeds, zoo_family
from .base import Context, Ensemble, HParams, ScratchArm, Setting, register


@dataclass(frozen=True)
class IAUParams(HParams):
    alpha: float = 0.005   # gradient restriction of the originals' and oracles' training: CE + alpha·‖∇_θ CE‖₂
    lr: float = 1e-3       # the one Adam step

    search_space: ClassVar[dict] = {"lr": ("log", 1e-4, 1e-2)}

    def _checks(self):
        return [("alpha", self.alpha >= 0, "must be >= 0 (0: the task's own recipe)"),
                ("lr", self.lr > 0, "must be > 0")]


def restricted(task: Task, alpha: float) -> Task:
    """The task with its recipe's gradient restriction set to `alpha` (cached under keys of its own)."""
    return dataclasses.replace(task, recipe=dataclasses.replace(task.recipe, grad_penalty=alpha))


def influence_step(ctx: Context, params: Params, lr: float) -> Params:
    """One Adam step (fresh state, β = (0.9, 0.999), ε = 1e-8, no weight decay) from `params` on
    L(S_R) − L(S_F), both the mean cross-entropy over the whole set (one full batch each, as the reference
    code's loaders are). From a fresh state Adam's first step is θ − lr·g / (|g| + ε), g = ∇L(S_R) − ∇L(S_F)
    elementwise: every coordinate moves by about lr against the sign of its g."""
    def loss(p, batch, frozen):
        (x_r, y_r, _), (x_f, y_f, _) = batch["retain"], batch["forget"]
        return F.cross_entropy(ctx.forward(p, x_r), y_r) - F.cross_entropy(ctx.forward(p, x_f), y_f)

    streams = {"retain": ctx.stream("iau-retain", ctx.retain, len(ctx.retain)),
               "forget": ctx.stream("iau-forget", ctx.forget, len(ctx.forget))}
    return ctx.fit(loss, streams, 1, Optim("adam", lr, 0.0, 0.0, "constant"), params=params, desc="iau step")


def iau_arms(hp: IAUParams, setting: Setting) -> list[ScratchArm]:
    """IAU's `scratch`: the deployed models and its oracles, both of the restricted recipe (at α = 0 they are
    the run's own originals and oracles, counted once). A restricted step differentiates twice, so it costs
    at least twice the task's (`scale`, a lower bound)."""
    task, ds = restricted(setting.task, hp.alpha), setting.data
    everything, retain = torch.arange(len(ds.y_train)), torch.as_tensor(setting.retain)
    scale = 2.0 if hp.alpha > 0 else 1.0
    return [ScratchArm(everything, seeds=tuple(setting.seeds), family=zoo_family(task, ds, everything), scale=scale),
            ScratchArm(retain, ORACLE_SEEDS, family=zoo_family(task, ds, retain), scale=scale)]


@register("iau", IAUParams, scratch=iau_arms)
def iau(ctx: Context, hp: IAUParams) -> Ensemble:
    """IAU, Influence Approximation Unlearning: gradient-restricted models, one step along ∇L(S_R) − ∇L(S_F).

    Judged against oracles of the same restricted recipe.

    Liu, Wu, Lian & Chen 2025, "Efficient Machine Unlearning via Influence Approximation" (arXiv 2507.23257);
    reference code Lolo1222/IAU (train_model.py, IAU_unlearn.py). Removing a point has the influence of
    adding one whose gradient is the negative of its own (incremental approximation): unlearning ascends the
    forget loss; gradient correction descends the retain loss beside it, against over-forgetting; gradient
    restriction trains the model with ℓ + α‖∇_θ ℓ‖₂ (α = 0.005) so that no point's gradient is large
    when its deletion is asked. The unlearning is the reference's: one Adam step at lr 1e-3 from the
    deployed model on mean-CE(S_R) − mean-CE(S_F), each over its whole set (`influence_step`).
    Because the restriction changes training, the deployed models are this task's recipe plus the
    restriction (trained through the zoo and cached under the recipe with its α, not charged: the deployed
    system has them), and so are the oracles it is judged by (`reference: "iau-oracles"`: S_R, the reference
    oracles' seeds, not charged). The charged cost is the one step.
    Deviations: ℓ's gradient norm is the paper's ‖∇_θ ℓ‖₂ over all parameters, of each minibatch's mean loss
    (the reference code sums the per-tensor norms, at most √(tensors) times more); models train with the
    task's recipe plus the restriction (the reference: Adam 1e-3, batch 64, up to 200 epochs, early stopping
    on validation accuracy).
    """
    task = restricted(ctx.task, hp.alpha)
    everything = torch.arange(len(ctx.dataset.y_train))
    deployed = ctx.uncharged(lambda: ctx.train_from_scratch(everything, ctx.seeds, "iau originals", task))
    oracles = ctx.uncharged(lambda: ctx.train_from_scratch(
        ctx.retain, arm_seeds(ORACLE_SEEDS, ctx.n_models, ctx.run_seed), "iau oracles", task))
    unlearned = influence_step(ctx, deployed, hp.lr)
    return Ensemble(lambda x: predict(ctx.forward, unlearned, x), lambda x: predict(ctx.forward, oracles, x),
                    reference="iau-oracles")
