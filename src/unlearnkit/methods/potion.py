import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..engine import Params, predict
from ..metrics import accuracy
from .base import Context, HParams, register
from .importance import output_norm_importance
from .ssd import dampen, finetune_from, ssd_importances, with_finetune

log = logging.getLogger(__name__)

S_GROWTH = 1.1


@dataclass(frozen=True)
class PotionParams(HParams):
    rho: float = 0.0         # stop once forget accuracy <= rho × the original's ("p_cut")
    batch_size: int = 512    # of both importance passes (the reference's default)
    max_tries: int = 500     # the reference's MAX_TRY

    search_space: ClassVar[dict] = {"rho": ("float", 0.0, 0.75)}  # the reference sweeps ρ ∈ [0, 0.75]

    def _checks(self):
        return [("rho", 0 <= self.rho <= 1, "must be in [0, 1]"),
                ("batch_size", self.batch_size >= 1, "must be >= 1"),
                ("max_tries", self.max_tries >= 1, "must be >= 1")]


PotionFinetuneParams = with_finetune(PotionParams)


@dataclass
class PotionSearch:
    """What the per-model search found (arrays have one entry per model)."""

    params: Params              # the dampened models
    s: np.ndarray               # the last s tried
    alpha: np.ndarray           # the α it gave
    tries: np.ndarray           # how many s were tried
    met: np.ndarray             # whether the stopping rule held (False: max_tries was reached)
    forget_acc: np.ndarray      # accuracy of the returned models on S_F (training labels)
    original_acc: np.ndarray    # accuracy of the originals on S_F
    history: list[list[float]]  # every s tried, per model: s0·1.1^k


def finite_ratios(imp_d: Params, imp_f: Params) -> list[np.ndarray]:
    """Per model, the sorted finite values of r = I_F / I_D over all its parameters (0/0 and x/0 dropped)."""
    r = torch.cat([(imp_f[k] / imp_d[k]).flatten(1) for k in imp_d], dim=1)
    return [np.sort(row[np.isfinite(row)].astype(np.float64)) for row in r.numpy()]


def percentile_sorted(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear interpolation) of an already sorted array."""
    if len(values) == 0:
        return 0.0  # no finite ratio: every I_D is 0, and any α selects exactly the I_F > 0
    pos = min(max(q, 0.0), 100.0) / 100 * (len(values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return float(values[lo] + (values[hi] - values[lo]) * (pos - lo))


def potion_alpha(sorted_ratios: np.ndarray, s: float) -> float:
    """α = percentile(r, 100 − ln(1 + 100·s)): about the top ln(1+100s) % of finite ratios exceed it."""
    return percentile_sorted(sorted_ratios, 100 - math.log1p(100 * s))


def potion_search(ctx: Context, hp: PotionParams, imp_d: Params | None = None,
                  imp_f: Params | None = None) -> PotionSearch:
    """Potion's PTN search, for each model separately but evaluated for all still-searching models at once.

    Try k (k = 0, 1, ...) dampens a copy of the ORIGINAL parameters with s_k = s0·1.1^k (so the dampening
    never compounds); a model stops at the first s whose result has forget accuracy <= ρ × its original's,
    or after `max_tries` tries (then it keeps the last s tried).
    """
    if imp_d is None or imp_f is None:
        imp_d, imp_f = ssd_importances(ctx, hp.batch_size, data_positions=ctx.retain)
    n = ctx.n_models
    ratios = finite_ratios(imp_d, imp_f)
    x_f = ctx.dataset.x_train[torch.as_tensor(ctx.forget)]
    y_f = ctx.dataset.y_train[torch.as_tensor(ctx.forget)]
    original_acc = accuracy(predict(ctx.forward, ctx.originals, x_f), y_f).numpy()
    s0 = len(ctx.forget) / (len(ctx.forget) + len(ctx.retain)) / 25
    s, alpha = np.full(n, s0), np.zeros(n)
    tries, met, done = np.zeros(n, dtype=int), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    forget_acc = original_acc.copy()
    history: list[list[float]] = [[] for _ in range(n)]
    out = {k: v.clone() for k, v in ctx.originals.items()}
    active = None
    while not done.all():
        if active is None or len(active) != (~done).sum():  # slice the still-searching models
            active = np.flatnonzero(~done)
            idx = torch.as_tensor(active)
            theta, d, f = ({k: v[idx] for k, v in t.items()} for t in (ctx.originals, imp_d, imp_f))
        for i in active:
            alpha[i] = potion_alpha(ratios[i], s[i])
            history[i].append(float(s[i]))
            tries[i] += 1
        sub = dampen(theta, d, f, torch.as_tensor(alpha[active]), 1.0)
        acc = accuracy(predict(ctx.forward, sub, x_f), y_f).numpy()
        for k, v in sub.items():
            out[k][idx] = v
        forget_acc[active] = acc
        for j, i in enumerate(active):
            if acc[j] <= hp.rho * original_acc[i]:
                met[i] = done[i] = True
            elif tries[i] >= hp.max_tries:
                done[i] = True
            else:
                s[i] *= S_GROWTH
    if not met.all():
        log.warning("potion: %d of %d models reached max_tries=%d without forget accuracy <= %.3g × original",
                    int((~met).sum()), n, hp.max_tries, hp.rho)
    log.info("potion: s per model %s after %s tries", np.array2string(s, precision=4), tries.tolist())
    return PotionSearch(out, s, alpha, tries, met, forget_acc, original_acc, history)


@register("potion", PotionParams)
def potion(ctx: Context, hp: PotionParams) -> Params:
    """Potion: SSD with an adaptive threshold, raised per model until S_F's accuracy drops to ρ × original.

    Schoepf, Foster, Brintrup 2024, "Potion: Towards Poison Unlearning", DMLR, arXiv 2406.09173 (method
    section; reference repo class `ASSD` and `assd_tuning`). Importances as SSD's (importance.py, same batch
    size for both) but, as in the reference code, I_D on the RETAIN set S_R and I_F on S_F, computed once.
    α = percentile over the model's parameters of the finite ratios I_F/I_D at 100 − ln(1 + 100·s), λ = 1,
    then SSD's rule θ_i ← min(I_D,i/I_F,i, 1)·θ_i iff I_F,i > α·I_D,i. Search: s0 = (|S_F|/|S|)/25, then
    s ← 1.1·s, each try from the original parameters, until the dampened model's accuracy on S_F w.r.t.
    its training labels is <= ρ·(the original's); at most `max_tries` (500) tries, after which the last s is
    kept (a warning is logged). Defaults: ρ = 0 (reference `p_cut`), batch size 512.
    ρ = 0 suits poison or class forgetting (digits-mlp class:3 stops after 40-80 tries); on random forget
    sets the points stay classified by generalisation, ρ = 0 is unreachable, and the search ends at the cap
    with s ≈ s0·1.1^499 and ~45 % of parameters dampened (a badly damaged model): raise ρ there.
    Deviations: each model searches its own s; batches are shuffled per model; nothing is cached on disk
    (importances are computed once per call). This is the labelled variant (the reference's `ASSD`); the
    label-free one its paper runs on poisons is `potion-lf`.
    """
    return potion_search(ctx, hp).params


@register("potion+finetune", PotionFinetuneParams)
def potion_finetune(ctx: Context, hp: PotionFinetuneParams) -> Params:
    """Potion followed by a short fine-tuning on S_R (the "Potion + fine-tuning" baseline).

    The `potion` method (Schoepf et al. 2024, arXiv 2406.09173) with ρ, batch_size, max_tries, then
    `finetune` (CE on S_R, SGD momentum 0.9, weight decay 5e-4, batch 128) for `epochs` at `lr`, started
    from the dampened models.
    """
    return finetune_from(ctx, potion(ctx, hp), hp.epochs, hp.lr)


@register("potion-lf", PotionParams)
def potion_label_free(ctx: Context, hp: PotionParams) -> Params:
    """Potion with label-free importances: the variant its paper runs on poisoned data.

    Schoepf, Foster, Brintrup 2024 (arXiv 2406.09173); reference `alfssd_tuning(..., x_D=True)` with
    `label_free=True`: I_D on S_R and I_F on S_F are mean |∂ mean‖f(x)‖₂ / ∂θ| over batches
    (`importance.output_norm_importance`), so wrong labels on the manipulated examples do not steer which
    parameters are dampened. The search over s and the stopping rule (forget accuracy on the training
    labels ≤ ρ × the original's) are `potion`'s.
    """
    imp_d = output_norm_importance(ctx, ctx.retain, hp.batch_size, name="importance:lf:D")
    imp_f = output_norm_importance(ctx, ctx.forget, hp.batch_size, name="importance:lf:F")
    return potion_search(ctx, hp, imp_d, imp_f).params


@register("potion-lf+finetune", PotionFinetuneParams)
def potion_label_free_finetune(ctx: Context, hp: PotionFinetuneParams) -> Params:
    """`potion-lf` (Schoepf, Foster & Brintrup 2024, arXiv 2406.09173, label-free importances) followed by
    `finetune` on S_R for `epochs` at `lr`, as `potion+finetune`."""
    return finetune_from(ctx, potion_label_free(ctx, hp), hp.epochs, hp.lr)
