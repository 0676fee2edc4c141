"""Forget sets that are hard (or easy) to unlearn: the bi-level worst case of Fan et al. and cheaper proxies.

Worst-case forget sets (Fan, Liu, Hero, Liu 2024, "Challenging Forgets: Unveiling the Worst-Case Forget
Sets in Machine Unlearning", arXiv 2403.07362; reference code OPTML-Group/Unlearn-WorstCase, data-wise/).
A set of K of the n training points is a weight vector w in S = {w ∈ [0, 1]^n : Σ_i w_i = K} (the
relaxation of w ∈ {0, 1}^n, 1ᵀw = K), and the worst case solves

    min_{w ∈ S}  Σ_i w_i ℓ_i(θ(w)) + γ‖w‖²                 (upper level: the forget set's loss after
                                                            unlearning; a low loss is a set not forgotten)
    θ(w) = unlearning from the original θ_o by fine-tuning on Σ_i (1 − w_i) ℓ_i(θ)   (lower level)

The lower level is E epochs of sign-SGD, θ ← θ − α·sign(∇), from θ_o. A sign has a zero derivative almost
everywhere, so dθ(w)/dw vanishes and the upper-level gradient is the partial one, ℓ(θ(w)) + 2γw: the
per-example losses after unlearning, which is what the reference code's upper step uses
(`optimize_select`). One upper step is w ← Proj_S(w − η(ℓ(θ(w)) + 2γw)), the projection found by
bisection (`project`), and after T steps the K largest weights are the set (`top_k`). Like the reference,
every step restarts the lower level from θ_o and the search starts from a random K-subset (here the
run's own `random:K`). The easiest set (`easy:K`) ascends the same forget loss instead (the reference's
`reverse_optimize_select`, whose γ term, zero by default, is kept as a penalty here).

Departures, for this toolkit's ensembles: the lower level runs on the first `Selection.models` of the
run's original models at once (engine.fit, vmapped) and the upper gradient averages their losses, so
the set is the recipe's worst case rather than one model's; and two step sizes (`Selection`: the
reference's move an MLP's weights too far and the selection weights too little).

What the search finds here: the forget loss after unlearning is near zero for thousands of typical
training points, so the minimum is a plateau; the search leaves it with the random start's low-loss
members and fills the rest with other near-zero-loss points (on the default task, seed 0, 56 of
worst:100's points are random:100's and 43 are among the 100 lowest-loss points). Retraining without
such points hardly changes the models' predictions on them, so against oracles (KLoM) the worst case
is the mildest set, not the hardest; `easy:K` (never-fitted, atypical points) is the one where methods
stay far from retraining.

The proxies beside it rank examples by a score that needs no search: the loss under the originals
(`lowest-loss:K`, typical examples: fitted whether or not they are trained on), counterfactual
memorisation from the datamodels' subset models (`memorised:K`, `memorisation`) and the datamodels'
self-influence (`influence:K`, `LinearDatamodels.self_influence`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import EpochStream, Forward, Optim, Params, derived_seed, fit, predict
from ..zoo import ZooCache, stable_hash, tensor_digest

SELECTION_TAG = 0x5C1  # the lower level's minibatch streams
BISECTION_STEPS = 100  # halvings of the shift's bracket: far below float64 resolution for any n here


@dataclass(frozen=True)
class Selection:
    """The bi-level search's settings; the reference code's flag (and default) in brackets.

    Two step sizes differ from the reference's, measured on the default task (fashion-mnist-mlp, four
    originals, K = 100). Lower level: sign-SGD moves every weight by the full step, and the reference's
    example α = 1e-3 (for a ResNet-18, whose batch-normalised weights are scale-free) takes an MLP's
    validation accuracy from 86% to 81% in two epochs and quadruples its training loss: that is damage,
    not unlearning. α = 1e-4 keeps the accuracy (86%) and still raises the excluded points' loss. Upper
    level: the per-example losses are mostly below 0.3 (median 0.007), so with the reference's η = 0.01
    no weight moves by more than ~0.03 in ten steps and the top-K set stays the random start; η = 10
    moves a weight across [0, 1] for a loss difference of 0.1 (the random set's mean loss)."""

    iterations: int = 10    # upper-level steps T (--select_epochs 10)
    epochs: float = 2.0     # lower-level sign-SGD epochs per upper step E (--unlearn_steps)
    lr: float = 1e-4        # lower-level sign-SGD step α (--theta_lr, see above)
    step: float = 10.0      # upper-level step η (--w_lr 0.01, see above)
    gamma: float = 0.0      # coefficient γ of ‖w‖² (--gamma 0.0)
    models: int = 4         # originals the lower level runs on; their losses are averaged (reference: one)


SELECTION = Selection()


def project(a: torch.Tensor, k: float, steps: int = BISECTION_STEPS) -> torch.Tensor:
    """The Euclidean projection of `a` onto {w ∈ [0, 1]^n : Σw = k}: w = clamp(a − μ, 0, 1), the shift μ
    found by bisection on the decreasing Σ clamp(a − μ, 0, 1) (the reference's `bisection`, bracket
    [min a − 1, max a], where the sum is n and 0). In float64; needs 0 ≤ k ≤ n."""
    a = a.double()
    if not 0 <= k <= len(a):
        raise ValueError(f"cannot project onto weights summing to {k} with {len(a)} entries in [0, 1]")
    lo, hi = float(a.min()) - 1.0, float(a.max())
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if float((a - mid).clamp(0.0, 1.0).sum()) > k:
            lo = mid
        else:
            hi = mid
    return (a - 0.5 * (lo + hi)).clamp(0.0, 1.0)


def top_k(scores, k: int, then=None) -> np.ndarray:
    """The positions of the k largest `scores`, sorted; ties go to the larger `then` if given, then to the
    earlier position (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    keys = [np.arange(len(scores))] + ([-np.asarray(then, dtype=np.float64)] if then is not None else [])
    return np.sort(np.lexsort([*keys, -scores])[:k])


def per_example_losses(forward: Forward, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every model on every example: (models, examples)."""
    logits = predict(forward, params, x)
    return F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="none").view(len(logits), -1)


def unlearn_weighted(forward: Forward, params: Params, data: tuple[torch.Tensor, torch.Tensor],
                     keep: torch.Tensor, seeds: list[int], batch_size: int, settings: Selection,
                     round_: int = 0) -> Params:
    """The lower level: `settings.epochs` epochs of sign-SGD from `params` on the cross-entropy weighted
    by `keep` = 1 − w per training example (every example in every batch; its weight decides how much
    it counts). `round_` picks the minibatch order, a fresh one for every upper step."""
    n_models = len(next(iter(params.values())))
    weights = keep.float().expand(n_models, -1).contiguous()

    def loss(p, batch, frozen):
        x, y, i = batch["train"]
        return (frozen["keep"][i] * F.cross_entropy(forward(p, x), y, reduction="none")).mean()

    stream = EpochStream(torch.arange(len(data[1])), seeds, batch_size, tag=derived_seed(SELECTION_TAG, round_))
    return fit(loss, params, {"train": stream}, data, stream.steps(settings.epochs),
               Optim("sign", settings.lr, 0.0, 0.0, "constant"), frozen={"keep": weights},
               desc=f"worst-case selection, step {round_ + 1}/{settings.iterations}")


def bilevel_weights(forward: Forward, params: Params, data: tuple[torch.Tensor, torch.Tensor], k: int,
                    start: np.ndarray, seeds: list[int], batch_size: int, hardest: bool = True,
                    settings: Selection = SELECTION) -> torch.Tensor:
    """The relaxed selection w ∈ S after `settings.iterations` upper steps from the K-subset `start`:
    descending the forget loss after unlearning (hardest to unlearn) or ascending it (easiest).
    `params` are the originals (stacked); their per-example losses are averaged."""
    w = torch.zeros(len(data[1]), dtype=torch.float64)
    w[torch.as_tensor(start)] = 1.0
    direction = 1.0 if hardest else -1.0
    for t in range(settings.iterations):
        unlearned = unlearn_weighted(forward, params, data, 1.0 - w, seeds, batch_size, settings, t)
        losses = per_example_losses(forward, unlearned, *data).double().mean(0)
        w = project(w - settings.step * (direction * losses + 2.0 * settings.gamma * w), k)
    return w


def select(forward: Forward, params: Params, data: tuple[torch.Tensor, torch.Tensor], k: int, start: np.ndarray,
           seeds: list[int], batch_size: int, hardest: bool, cache: ZooCache | None, identity: dict,
           settings: Selection = SELECTION) -> np.ndarray:
    """The K positions of the worst-case (`hardest`) or easiest set: `bilevel_weights` binarised by
    `top_k`. The weights are kept in the model cache as a one-row entry, under a key that hashes
    `identity` (what made the originals) with every input of the search."""
    def search() -> torch.Tensor:
        return bilevel_weights(forward, params, data, k, start, seeds, batch_size, hardest, settings)

    if cache is None:
        return top_k(search(), k)
    key = stable_hash({"selection": "worst-case forget set", "originals": identity, "k": k, "hardest": hardest,
                       "start": tensor_digest(torch.as_tensor(start)), "seeds": seeds, "batch_size": batch_size,
                       "settings": asdict(settings), "format": 1})
    label = f"{'worst' if hardest else 'easiest'}-case selection of {k}"
    with cache.lock(key, label):
        if (hit := cache.load(key, 1)) is not None:
            w = hit[0]["weights"][0]
        else:
            w = search()
            cache.save(key, {"weights": w.unsqueeze(0)}, {"label": label, "k": k, "settings": asdict(settings)})
    return top_k(w, k)


def memorisation(masks: torch.Tensor, margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactual memorisation of each training example (Feldman & Zhang 2020, "What Neural Networks
    Memorize and Why", NeurIPS: mem(A, S, i) = P[h(x_i) = y_i | i trained on] − P[... | not], estimated
    as they do from models trained on random subsets; Zhang et al. 2021, "Counterfactual Memorization in
    Neural Language Models"): the mean correctness (margin > 0) of the models whose subset held it minus
    that of the models whose subset did not. masks (M, n) 0/1, margins (M, ≥ n) on
    the training examples first. Returns (memorisation, the same difference of mean margins), the second
    to break the first's ties (it moves in steps of about 2/M); NaN for an example that no model (or
    every model) trained on."""
    n = masks.shape[1]
    inside, m = masks.double(), margins[:, :n].double()
    outside = 1.0 - inside

    def gap(values: torch.Tensor) -> torch.Tensor:
        return (values * inside).sum(0) / inside.sum(0) - (values * outside).sum(0) / outside.sum(0)
    return gap((m > 0).double()), gap(m)
