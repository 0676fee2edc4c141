from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...lm.tokenizer import IGNORE
from .base import LM_REGISTRY, LMContext, RetainParams, answer_nll, register


@dataclass(frozen=True)
class UNDIALParams(RetainParams):
    beta: float = 10.0     # the paper's γ: how far the answer token's logit is lowered in the target
    alpha: float = 0.0     # no retain term, as the paper

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta": ("log", 1.0, 30.0)}

    def _checks(self):
        return super()._checks() + [("beta", self.beta >= 0, "must be >= 0")]


def undial_target(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of the target distribution (..., L-1, V), answer-token mask (..., L-1)).

    At each answer position the target is softmax(z − β·e_y): the original model's next-token logits z
    with only the logit of the token the answer has there, y, lowered by β.
    """
    z = ref_logits[..., :-1, :]
    target = labels[..., 1:]
    mask = target != IGNORE
    hit = torch.arange(z.shape[-1], device=z.device) == torch.where(mask, target, 0).unsqueeze(-1)
    hit = hit & mask.unsqueeze(-1)
    return torch.log_softmax(z - beta * hit.to(z.dtype), dim=-1), mask


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over a batch's answer tokens of KL(softmax(z_ref − β·e_y) ‖ p_θ): distillation on adjusted logits.

    Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
    Language Models" (arXiv 2402.10052, NAACL 2025), §3: the student is trained towards a fixed target,
    the original model's distribution with the memorised token's logit reduced by a strength (their γ,
    OpenUnlearning's β). OpenUnlearning's `compute_undial_loss` (src/trainer/utils.py, l. 70–99) takes
    the soft-label cross-entropy H(target, p_θ) = KL + H(target): the same gradient; we subtract the
    constant H(target) so the loss is 0 when the student matches the target (at the start when β = 0).
    """
    logq, mask = undial_target(ref_logits.detach(), labels, beta)
    logp = torch.log_softmax(logits[..., :-1, :], dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


@register("undial", UNDIALParams, LM_REGISTRY)
def undial(ctx: LMContext, hp: UNDIALParams) -> Params:
    """UNDIAL: distil the original's logits, answer token lowered by β, on S_F: γ·L_UNDIAL(S_F) + α·NLL(S_R).

    Dong et al. 2024 (arXiv 2402.10052), §3, as OpenUnlearning's `UNDIAL` trainer
    (src/trainer/unlearn/undial.py: a GradDiff with the forget loss replaced, retain NLL) with
    configs/trainer/UNDIAL.yaml: β = 10 ("the strength of penalty for memorized tokens"), γ = 1,
    α = 0 (the paper uses no retain set; community/methods/UNDIAL/README.md suggests β in [3, 30] and
    searching α). The teacher is the frozen original (a fixed target, unlike distilling a moving model).
    Deviation: OpenUnlearning averages over every position of the padded batch (question, answer and
    padding, where its label −100 lowers the logit of vocabulary entry V−100); we distil on the answer
    tokens only, where a "target token" exists. Loop settings are the toolkit's LM defaults
    (OpenUnlearning: lr 1e-4, 10 epochs, for billion-weight models).
    """
    streams = ctx.pair_streams(hp) if hp.alpha else {"forget": ctx.stream("forget", ctx.forget, hp.batch_size)}

    def loss(params, batch, frozen):
        xf, yf, _ = batch["forget"]
        out = hp.gamma * undial_loss(ctx.forward(params, xf), ctx.forward(frozen["reference"], xf), yf, hp.beta)
        if hp.alpha:
            xr, yr, _ = batch["retain"]
            out = out + hp.alpha * answer_nll(ctx, params, xr, yr)
        return out

    return ctx.fit(loss, streams, hp.epochs, hp.optim(), frozen={"reference": ctx.originals}, desc="undial")
