import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import EpochStream, Optim, Params
from ..errors import UnlearnkitError
from ..models import init_params
from ..zoo import ORIGINAL_SEEDS, arm_seeds, recipe_optim, stable_hash, tensor_digest
from ..zoo.train import train_cached
from .base import Context, HParams, ScratchArm, Setting, register

ERA_TAG = 0x455241  # "ERA": the fine-tuning sample's stream


@dataclass(frozen=True)
class ERAParams(HParams):
    expand: int = 64              # units added to each hidden layer
    routed_original: float = -0.75  # gradient scale through the original units for identified examples
    l1: float = 1e-4              # L1 on the (masked) hidden activations
    finetune_examples: int = 64   # the coherence fine-tune's retain sample (one full batch)
    finetune_steps: int = 40
    finetune_lr: float = 0.01
    finetune_optimizer: str = "sgd"  # momentum 0.9 ("adam": no weight decay)
    routing: bool = True

    search_space: ClassVar[dict] = {"routed_original": ("float", -1.0, 0.0), "finetune_lr": ("log", 1e-3, 0.1)}

    def _checks(self):
        return [("expand", self.expand >= 1, "must be >= 1"), ("l1", self.l1 >= 0, "must be >= 0"),
                ("finetune_examples", self.finetune_examples >= 1, "must be >= 1"),
                ("finetune_steps", self.finetune_steps >= 0, "must be >= 0"),
                ("finetune_lr", self.finetune_lr > 0, "must be > 0"),
                ("finetune_optimizer", self.finetune_optimizer in ("sgd", "adam"), "must be sgd or adam")]

    def check_setting(self, task, dataset, forget, seed) -> None:
        if task.model != "mlp":
            raise UnlearnkitError(f"era and era-control expand hidden layers: they need an MLP task (a model family "
                                  f"with hidden layers to widen and ablate), and {task.name} is a {task.model}")


@dataclass(frozen=True)
class ERAControlParams(ERAParams):
    routing: bool = False


def _hidden(task) -> tuple[int, int]:
    return task.model_kwargs.get("width", 256), task.model_kwargs.get("depth", 2)


def routed_forward(params: Params, x: torch.Tensor, route: torch.Tensor, width: int, depth: int,
                   scale_original: float, routing: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of one widened MLP and the mean |activation| of its hidden layers. For examples with
    route = True the activations are m⊙a + (1 − m)⊙stopgrad(a): the forward value is unchanged, the gradient
    through unit j is scaled by m_j (1 on the added units, `scale_original` on the original ones)."""
    h, l1 = x.flatten(1), x.new_zeros(())
    for i in range(depth):
        k = 2 * i + 1
        a = F.relu(h @ params[f"{k}.weight"].T + params[f"{k}.bias"])
        if routing:
            units = torch.arange(a.shape[-1], device=a.device)
            m = torch.where(units < width, scale_original, 1.0).to(a.dtype)
            m = torch.where(route[:, None], m[None], torch.ones_like(a))
            a = m * a + (1 - m) * a.detach()
        l1 = l1 + a.abs().mean()
        h = a
    k = 2 * depth + 1
    return h @ params[f"{k}.weight"].T + params[f"{k}.bias"], l1


def ablate(params: Params, width: int, depth: int) -> Params:
    """The widened models with their added units removed: models of the task's own width."""
    out = {}
    for i in range(depth + 1):
        k = 2 * i + 1
        w = params[f"{k}.weight"]
        rows = w.shape[1] if i == depth else width
        cols = w.shape[2] if i == 0 else width
        out[f"{k}.weight"] = w[:, :rows, :cols].clone()
        out[f"{k}.bias"] = params[f"{k}.bias"][:, :rows].clone()
    return out


def era_key(task, ds, seeds: list[int], forget, hp: ERAParams) -> str:
    """The cache key of ERA's widened arm: everything that made it."""
    return stable_hash({"era": True, "task": task.describe(), "data": ds.fingerprint, "seeds": seeds,
                        "routed": tensor_digest(torch.as_tensor(np.sort(forget))) if hp.routing else None,
                        "expand": hp.expand, "scale": hp.routed_original, "l1": hp.l1})


def era_arm(hp: ERAParams, setting: Setting) -> list[ScratchArm]:
    """ERA's `scratch`: its widened arm on every training example; a step costs the widened MLP's products
    over the task's (the ratio of their weights)."""
    task, ds = setting.task, setting.data
    width, depth = _hidden(task)
    inputs = math.prod(ds.input_shape)

    def weights(w: int) -> int:
        return inputs * w + (depth - 1) * w * w + w * ds.num_classes
    key = era_key(task, ds, setting.seeds, setting.forget, hp)
    return [ScratchArm(torch.arange(len(ds.y_train)), ORIGINAL_SEEDS, key, weights(width + hp.expand) / weights(width))]


def era_models(ctx: Context, hp: ERAParams) -> Params:
    """Expand, Route (or not), Ablate: the widened originals trained with routing on the identified
    examples (through the zoo's cache, keyed by everything that made them), then ablated."""
    task, ds = ctx.task, ctx.dataset
    width, depth = _hidden(task)
    seeds = arm_seeds(ORIGINAL_SEEDS, ctx.n_models, ctx.run_seed)
    positions = torch.arange(len(ds.y_train))
    routed = torch.zeros(len(ds.y_train), dtype=torch.bool)  # the same for every model: a closure, not frozen
    routed[torch.as_tensor(ctx.forget)] = hp.routing
    (routed,) = ctx.on_device(routed)  # indexed by the batch positions, on the run's device

    def loss(params, batch, frozen):
        x, y, idx = batch["train"]
        logits, l1 = routed_forward(params, x, routed[idx], width, depth, hp.routed_original, hp.routing)
        return F.cross_entropy(logits, y) + hp.l1 * l1

    key = era_key(task, ds, seeds, ctx.forget, hp)
    arm = train_cached(key, loss, lambda: init_params("mlp", ds.input_shape, ds.num_classes, seeds,
                                                      width=width + hp.expand, depth=depth),
                       EpochStream(positions, seeds, task.recipe.batch_size), (ds.x_train, ds.y_train),
                       task.recipe.epochs, recipe_optim(task), ctx.cache, "era" if hp.routing else "era-control",
                       {"task": task.name, "seeds": seeds})
    # training-time work, charged like any arm a method needs (what a cache hit or a resume saved included)
    return ablate(ctx.counted(arm), width, depth)


def coherence_finetune(ctx: Context, params: Params, hp: ERAParams, one_loss) -> Params:
    """`finetune_steps` full-batch steps of `one_loss(params, x, y)` (one model's loss) on a seeded sample
    of `finetune_examples` retain examples, keeping each model's step with the lowest loss on a held-out
    retain sample of the same size. Shared by the classifier and language-model ERA."""
    if hp.finetune_steps == 0:
        return params
    rng = np.random.default_rng([ctx.run_seed, ERA_TAG])
    sample = rng.choice(ctx.retain, size=min(len(ctx.retain), 2 * hp.finetune_examples), replace=False)
    train, held = sample[:hp.finetune_examples], sample[hp.finetune_examples:] if len(sample) > hp.finetune_examples \
        else sample
    x_h, y_h = (t[torch.as_tensor(held)] for t in ctx.train_data)

    @torch.no_grad()
    def held_score(p: Params) -> torch.Tensor:  # higher is better: minus the held-out loss, per model
        return -torch.vmap(one_loss, in_dims=(0, None, None))(p, x_h, y_h)

    def loss(p, batch, frozen):
        x, y, _ = batch["coherence"]
        return one_loss(p, x, y)

    best, best_score = ctx.keep_better(None, None, params, held_score(params))
    carry = {}
    optim = Optim(hp.finetune_optimizer, hp.finetune_lr, 0.9 if hp.finetune_optimizer == "sgd" else 0.0, 0.0,
                  "constant")
    for _ in range(hp.finetune_steps):
        params = ctx.one_step(loss, "coherence", train, len(train), optim, params, carry)
        best, best_score = ctx.keep_better(best, best_score, params, held_score(params))
    return best


def _cross_entropy(ctx: Context):
    return lambda p, x, y: F.cross_entropy(ctx.forward(p, x), y)


@register("era", ERAParams, scratch=era_arm)
def era(ctx: Context, hp: ERAParams) -> Params:
    """ERA, Expand-Route-Ablate: gradient routing localises what the identified examples teach into added
    units during training; removing those units unlearns it.

    Cloud et al. 2024, "Gradient Routing: Masking Gradients to Localize Computation in Neural Networks"
    (arXiv 2410.04332; repository kxcloud/gradient-routing). Each hidden layer gets `expand` extra units;
    while the originals train (the task's recipe, all of the manipulated data), an identified example's
    hidden activations are routed, m⊙a + (1 − m)⊙stopgrad(a) with m = 1 on the added units and −0.75 on the
    original ones (the paper's TinyStories rates), every other example trains normally (unidentified
    manipulated examples are trained as retain data, as in the paper's partial labelling); L1 1e-4 on the
    hidden activations. Then the added units are removed (ablate) and each model gets a coherence
    fine-tune: 40 full-batch steps on 64 retain examples, keeping its best step by the loss on a held-out
    retain sample. ERA changes training: its widened models are trained per identified set through the
    zoo and cached.
    Deviations: an MLP instead of a transformer's MLP blocks; SGD 0.01 for the fine-tune (GR: AdamW).
    """
    return coherence_finetune(ctx, era_models(ctx, hp), hp, _cross_entropy(ctx))


@register("era-control", ERAControlParams, scratch=era_arm)
def era_control(ctx: Context, hp: ERAControlParams) -> Params:
    """ERA without routing (Cloud et al. 2024's control): expand, train with the L1 penalty, ablate the
    added units and fine-tune, with no gradient masking — what expansion and fine-tuning alone do."""
    return coherence_finetune(ctx, era_models(ctx, hp), hp, _cross_entropy(ctx))
