from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, vmap

from ..engine import Params
from ..engine.compute import current
from ..errors import UnlearnkitError
from ..models import init_params
from .base import Context, HParams, register


@dataclass(frozen=True)
class NewtonParams(HParams):
    damping: float = 0.0       # added to the Hessian's diagonal (per example), for non-convex models
    max_params: int = 20_000   # the full Hessian is max_params² numbers per model

    def _checks(self):
        return [("damping", self.damping >= 0, "must be >= 0"),
                ("max_params", 1 <= self.max_params <= 200_000, "must be in [1, 200000] (the Hessian is its square)")]

    def check_setting(self, task, dataset, forget, seed) -> None:
        size = sum(v[0].numel() for v in init_params(task.model, dataset.input_shape, dataset.num_classes, [0],
                                                      **task.model_kwargs).values())
        _check_size(size, self.max_params)


def _check_size(size: int, max_params: int) -> None:
    if size > max_params:
        raise UnlearnkitError(f"newton needs the full Hessian; this model has {size} parameters "
                              f"(max_params={max_params}): use it on a small convex task such as digits-logreg")


@register("newton", NewtonParams)
def newton(ctx: Context, hp: NewtonParams) -> Params:
    """One Newton (influence) step that removes S_F from an L2-regularised model: exact-ish for convex ones.

    Guo, Goldstein, Hannun & van der Maaten 2020, "Certified Data Removal from Machine Learning Models"
    (ICML, arXiv 1911.03030), §3 and Theorem 1; Koh & Liang 2017 (influence functions). With the task's
    objective in sum form L(θ; D) = Σ_{i∈D} ℓ_i(θ) + (λ|D|/2)‖θ‖² (λ = the recipe's weight decay, which
    the zoo applies to every parameter), removing F from a minimiser θ of L(·; S) is
        θ⁻ = θ + H⁻¹ Δ,   Δ = Σ_{j∈F} ∇ℓ_j(θ) + |F|·λ·θ,   H = Σ_{i∈R} ∇²ℓ_i(θ) + (λ|R| + damping)·I,
    one Newton step on L(·; R) from θ (∇L(θ; R) = −Δ at an exact optimum). H is built as the
    Gauss–Newton matrix Σ J_iᵀ (diag p_i − p_i p_iᵀ) J_i (J_i the logits' Jacobian): for a linear model
    (logistic regression) it *is* the Hessian, and for others a positive semi-definite approximation
    (Martens 2014), ~10× faster to build than autograd's Hessian. Cost: building H takes ~2·n·C·P²
    FLOPs, which on a task as small as digits-logreg (P = 650, 40 cheap epochs) exceeds retraining;
    the step pays off when retraining means many epochs over a large set. Each model keeps its own SGD
    noise: the step is a shift computed at that model's θ, not a jump to the common retain optimum, so
    unlearned models spread like oracles do. Needs the full Hessian: meant for small convex models
    (`digits-logreg`), where it lands at the oracles' noise floor and so checks the whole pipeline.
    """
    names = list(ctx.originals)
    shapes = [ctx.originals[k].shape[1:] for k in names]
    sizes = [s.numel() for s in shapes]
    _check_size(sum(sizes), hp.max_params)
    lam = ctx.task.recipe.weight_decay
    dev = current().device  # the Hessians are the method's work: built on the run's device, in float64
    x, y = ctx.dataset.x_train.to(dev), ctx.dataset.y_train.to(dev)
    forget, retain = torch.as_tensor(ctx.forget, device=dev), torch.as_tensor(ctx.retain, device=dev)

    def unflatten(flat: torch.Tensor) -> Params:
        return {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}

    def summed_loss(flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = functional_call(ctx.forward.module, unflatten(flat), (x[idx],))
        return F.cross_entropy(logits, y[idx], reduction="sum")

    def logits_one(flat: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(ctx.forward.module, unflatten(flat), (xi.unsqueeze(0),)).squeeze(0)

    def step(flat: torch.Tensor) -> torch.Tensor:
        delta = grad(summed_loss)(flat, forget) + len(forget) * lam * flat
        h = (lam * len(retain) + hp.damping) * torch.eye(len(flat), dtype=flat.dtype, device=flat.device)
        for chunk in retain.split(512):
            jac = vmap(jacrev(logits_one), in_dims=(None, 0))(flat, x[chunk])       # (b, C, P)
            p = torch.softmax(vmap(logits_one, in_dims=(None, 0))(flat, x[chunk]), dim=-1)
            curvature = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)     # ∇² of CE in the logits
            h += jac.flatten(0, 1).T @ (curvature @ jac).flatten(0, 1)
        return flat + torch.linalg.solve(h, delta)

    flat = torch.cat([ctx.originals[k].flatten(1) for k in names], dim=1).to(dev, torch.float64)
    with torch.no_grad():
        x = x.double()
        new = torch.stack([step(f) for f in flat])  # N Hessians of P² numbers: one model at a time bounds memory
    out = {k: t.view(-1, *s).float().cpu() for k, t, s in zip(names, new.split(sizes, dim=1), shapes)}
    return {k: v.contiguous() for k, v in out.items()}
