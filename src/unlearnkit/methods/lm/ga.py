from ...engine import Params
from .base import LM_REGISTRY, LMContext, LMLoopParams, answer_nll, register


@register("ga", LMLoopParams, LM_REGISTRY)
def ga(ctx: LMContext, hp: LMLoopParams) -> Params:
    """Gradient ascent on the forget answers: minimise −NLL(S_F).

    Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models" (ACL,
    arXiv 2210.01504), Eq. 2 (maximise the token NLL of the target sequences); TOFU's "Gradient
    Ascent" baseline (Maini et al. 2024 §4). Unbounded: it drives the loss up without limit, so its
    budget (epochs, lr) is what keeps the model usable.
    """
    def loss(params, batch, frozen):
        x, y, _ = batch["forget"]
        return -answer_nll(ctx, params, x, y)

    return ctx.fit(loss, {"forget": ctx.stream("forget", ctx.forget, hp.batch_size)}, hp.epochs, hp.optim(), desc="ga")
