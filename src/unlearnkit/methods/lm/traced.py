import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...engine import Params
from ...errors import UnlearnkitError
from ...lm.model import causal_lm_loss
from ...lm.trace import causal_trace, mlp_parameter_names, subject_tokens
from .base import LM_REGISTRY, LMContext, LMLoopParams, register, sequence_logprob
from .npo import npo_loss

log = logging.getLogger(__name__)

FORGET_LOSSES = ("ga", "npo")
RETAIN_LOSSES = ("nll", "kl")


@dataclass(frozen=True)
class TracedParams(LMLoopParams):
    layers: int = 1              # update the MLPs of the k blocks with the largest traced indirect effect
    samples: int = 10            # noise draws per forget item in the trace (ROME: 10)
    noise: float = 3.0           # noise std in units of the subject embeddings' std (ROME: 3)
    window: int = 1              # MLP layers restored together in the trace (ROME: 10 of GPT-2 XL's 48)
    forget_loss: str = "ga"      # "ga": −answer NLL (SHA256); "npo": NPO against the original
    beta: float = 0.1            # NPO's β
    retain_loss: str = "nll"     # "nll": retain answer NLL (SHA256); "kl": KL(original ‖ model) on retain answers
    alpha_scale: float = 0.3     # α = clip(a·b^ΔL + c, α_min, α_max), ΔL = retain NLL − the original's
    alpha_base: float = 6.0
    alpha_offset: float = 0.8
    alpha_min: float = 1.2
    alpha_max: float = 2.8

    search_space: ClassVar[dict] = {**LMLoopParams.search_space, "alpha_max": ("float", 1.2, 10.0)}
    lora: ClassVar[bool] = False  # its localisation is the update mask on the traced MLPs

    def _checks(self):
        return super()._checks() + [
            ("layers", self.layers >= 1, "must be >= 1 (blocks whose MLP is updated)"),
            ("samples", self.samples >= 1, "must be >= 1"),
            ("noise", self.noise > 0, "must be > 0 (a multiple of the subject embeddings' std)"),
            ("window", self.window >= 1, "must be >= 1"),
            ("forget_loss", self.forget_loss in FORGET_LOSSES, f"must be one of {', '.join(FORGET_LOSSES)}"),
            ("beta", self.beta > 0, "must be > 0"),
            ("retain_loss", self.retain_loss in RETAIN_LOSSES, f"must be one of {', '.join(RETAIN_LOSSES)}"),
            ("alpha_scale", self.alpha_scale >= 0, "must be >= 0"),
            ("alpha_base", self.alpha_base > 0, "must be > 0"),
            ("alpha_min", self.alpha_min >= 0, "must be >= 0"),
            ("alpha_max", self.alpha_max >= self.alpha_min, "must be >= alpha_min"),
        ]

    def check_setting(self, task, data, forget, seed) -> None:
        n = data.config.n_layer
        if self.layers > n:
            raise UnlearnkitError(f"traced.layers={self.layers}, but the model has {n} blocks; use 1 to {n}")
        subject_tokens(data.tok, [data.items[p] for p in forget], task.max_len)  # every subject found, or say which


def adaptive_alpha(delta: torch.Tensor, hp: TracedParams) -> torch.Tensor:
    """SHA256's retain weight: clip(a·b^ΔL + c, α_min, α_max) for a retain loss ΔL above its baseline, α_min
    otherwise (a·b⁰ + c = 1.1 < α_min with their constants, so the clip gives that too)."""
    grown = hp.alpha_scale * hp.alpha_base ** delta.clamp(min=0) + hp.alpha_offset
    return grown.clamp(hp.alpha_min, hp.alpha_max)


def traced_update_mask(ctx: LMContext, layers: list[int]) -> Params:
    """1 on every parameter of the MLPs of blocks `layers` (0-based), 0 elsewhere."""
    chosen = set(mlp_parameter_names(ctx.forward, ctx.originals, layers))
    return {k: torch.full((1,) * v.dim(), float(k in chosen)) for k, v in ctx.originals.items()}


def trace_forget_set(ctx: LMContext, hp: TracedParams):
    """The originals' causal trace on the forget items (subjects from tofu-synth's question templates)."""
    x, y = ctx.train_data
    rows = torch.as_tensor(ctx.forget)
    subjects = subject_tokens(ctx.tok, [ctx.items[p] for p in ctx.forget], ctx.max_len)
    return causal_trace(ctx.forward, ctx.originals, x[rows], y[rows], subjects, ctx.seeds, samples=hp.samples,
                        noise=hp.noise, window=hp.window)


@register("traced", TracedParams, LM_REGISTRY)
def traced(ctx: LMContext, hp: TracedParams) -> Params:
    """Causal tracing, then unlearning in the traced MLPs only: −NLL(S_F) + α(ΔL)·NLL(S_R) (SHA256).

    Agrawal & Huang 2025, "SHA256 at SemEval-2025 Task 4: Selective Amnesia — Constrained Unlearning for
    Large Language Models via Knowledge Isolation" (arXiv 2504.12996; code LAB-FLAIR/Constrained-Unlearning-
    for-LLM): causal mediation analysis (ROME's causal tracing, `lm.trace`) locates the blocks whose MLPs
    carry the forget facts (OLMo-1B: blocks 0–5 of 16); only those MLPs are trained (every parameter of
    them, their `--train_kind mlp`), with the joint loss L = −CE(S_F) + α·CE(S_R), CE the mean answer-token
    cross-entropy, α = clip(0.3·6^ΔL + 0.8, 1.2, α_max) where the retain loss exceeds its baseline by ΔL
    (paper: α_max 2.8; code: 2.3, after rounding to one decimal).

    Here the blocks are the `layers` whose MLP has the largest indirect effect at the last subject token,
    averaged over the N originals and the forget items. Deviations: ΔL is measured against the original
    model's retain loss on the same batch (SHA256: the first epoch's running mean of the trained model's
    own retain loss) and α is not rounded; `forget_loss=npo` and `retain_loss=kl` (KL(original ‖ model)
    on the retain answers, weighted by the same α) are options, not SHA256's.
    """
    n = len(ctx.forward.blocks)
    if hp.layers > n:
        raise UnlearnkitError(f"traced.layers={hp.layers}, but the model has {n} blocks; use 1 to {n}")
    trace = trace_forget_set(ctx, hp)
    layers = trace.top_layers(hp.layers)
    ie = trace.mean_effects()["mlp"]
    log.info("traced: updating the MLPs of blocks %s (MLP indirect effects %s)", layers,
             ", ".join(f"{i}: {v:+.4f}" for i, v in enumerate(ie)))
    ctx.extra["traced_layers"] = layers
    ctx.extra["trace"] = trace.to_dict(hp.layers)

    def loss(params, batch, frozen):
        (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
        logits_f = ctx.forward(params, xf)
        if hp.forget_loss == "ga":
            forget = -causal_lm_loss(logits_f, yf)
        else:
            logp, _ = sequence_logprob(logits_f, yf)
            logp_ref, _ = sequence_logprob(ctx.forward(frozen["reference"], xf).detach(), yf)
            forget = npo_loss(logp, logp_ref, hp.beta)
        logits_r = ctx.forward(params, xr)
        logits_ref = ctx.forward(frozen["reference"], xr).detach()
        nll = causal_lm_loss(logits_r, yr)
        alpha = adaptive_alpha((nll - causal_lm_loss(logits_ref, yr)).detach(), hp)
        if hp.retain_loss == "nll":
            retain = nll
        else:
            logp = torch.log_softmax(logits_r[..., :-1, :], -1)
            logq = torch.log_softmax(logits_ref[..., :-1, :], -1)
            mask = (yr[..., 1:] != -100).to(logp.dtype)
            retain = ((logq.exp() * (logq - logp)).sum(-1) * mask).sum() / mask.sum().clamp(min=1)
        return forget + alpha * retain

    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen={"reference": ctx.originals},
                   update_mask=traced_update_mask(ctx, layers), desc="traced")
