
import torch
import torch.nn.functional as F

from ...engine import Params
from .base import (
    LM_REGISTRY,
    LMContext,
    answer_nll,
    forget_reference,
    register,
    sequence_logprob,
)
from .npo import NPOParams

DPOParams = NPOParams  # the same fields, defaults (β 0.1, γ = α = 1) and checks as NPO's


def dpo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·[log(π_θ(y_w|x)/π_ref(y_w|x)) − log(π_θ(y_l|x)/π_ref(y_l|x))]).

    Rafailov et al. 2023, "Direct Preference Optimization" (arXiv 2305.18290), Eq. 7, scaled by 2/β as
    OpenUnlearning's `compute_dpo_loss` (src/trainer/utils.py, l. 47–67) and the AltPO authors' code
    compute it: with the winner's term dropped it is NPO's loss (Zhang et al. 2024, Eq. 3), and at
    π_θ = π_ref it is (2/β)·log 2. The scale changes neither the minimiser nor the gradient's
    direction, only its size (TOFU's own code uses the unscaled −log σ(·), i.e. β/2 times this).
    log π are summed answer log-probabilities; the inputs broadcast, and the mean runs over all pairs.
    """
    margin = (logp_w - ref_w) - (logp_l - ref_l)
    return -2.0 / beta * F.logsigmoid(beta * margin).mean()


def pair_logprobs(ctx: LMContext, params: Params, x_w: torch.Tensor, y_w: torch.Tensor, x_l: torch.Tensor,
                  y_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_w|x), log π(y_l|x)) of one model on a batch of preferred and rejected rows, in one forward."""
    logp, _ = sequence_logprob(ctx.forward(params, torch.cat([x_w, x_l])), torch.cat([y_w, y_l]))
    return logp[:len(x_w)], logp[len(x_w):]


@register("idkdpo", DPOParams, LM_REGISTRY)
def idkdpo(ctx: LMContext, hp: DPOParams) -> Params:
    """DPO preferring a refusal to the forget answer, plus retain NLL: γ·L_DPO(idk ≻ y_F) + α·NLL(S_R).

    TOFU's "Preference Optimization" baseline (Maini et al. 2024 §4: refusals as the preferred answers
    to the forget questions, the forget answers as the rejected ones) as OpenUnlearning runs it: its
    `DPO` trainer (src/trainer/unlearn/dpo.py) on the forget set with idk answers (experiment
    unlearn/tofu/idk.yaml) and configs/trainer/DPO.yaml: β = 0.1, γ = 1, α = 1, retain NLL. The
    reference policy is the frozen original (its log-probabilities of both answers computed once,
    `reference_logprobs`); each item's refusal is fixed by its id
    (`tofu_synth.refusal`). TOFU's own code has β = 0.1 too, but no 2/β scale and no retain term
    (`alpha=0`, and β/2 times the forget loss, reproduce it). Loop settings (lr, epochs) are the
    toolkit's LM defaults, not OpenUnlearning's 1e-5 × 10 epochs, which are for billion-weight models.
    """
    idk_x, idk_y = ctx.on_device(*ctx.refusals)

    def loss(params, batch, frozen):
        (xf, yf, pf), (xr, yr, _) = batch["forget"], batch["retain"]
        xw, yw = idk_x[pf], idk_y[pf]
        logp_w, logp_l = pair_logprobs(ctx, params, xw, yw, xf, yf)
        return (hp.gamma * dpo_loss(logp_w, logp_l, frozen["ref_w"][pf], frozen["ref_l"][pf], hp.beta)
                + hp.alpha * answer_nll(ctx, params, xr, yr))

    reference = {"ref_w": forget_reference(ctx, ctx.refusals), "ref_l": forget_reference(ctx)}
    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen=reference, desc="idkdpo")
