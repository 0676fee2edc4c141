"""What language-model unlearning methods share: their Context, hyperparameters and loss pieces.

An LM method is, like a classifier method, one function `fn(ctx, hp) -> Params` registered by name
(in `LM_REGISTRY`), with its loss written for ONE model and run on all N originals by `ctx.fit`. A
batch row is a tokenised question–answer pair (input_ids, labels with −100 off the answer), so
`answer_nll` is TOFU's fine-tuning loss and `sequence_logprob` is log π(y|x) of NPO/DPO.

TOFU's convention (Maini et al. 2024 §4; OpenUnlearning's trainers): an epoch is a pass over the
forget set, and methods with a retain term draw a retain batch beside each forget batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch

from ...data.tofu_synth import QA, refusal
from ...engine import Params
from ...engine.compute import current
from ...engine.observe import seen_through
from ...errors import UnlearnkitError, option
from ...lm.lora import LoraForward, LoraSpec
from ...lm.model import causal_lm_loss, shifted_token_logprobs, token_stats
from ...lm.tokenizer import encode_pairs
from ...lm.train import train_lm_models
from ...tasks import Recipe
from ...zoo import Arm
from ..base import LM_REGISTRY, Context, LoopParams, register  # noqa: F401  (register: for the method files)


@dataclass(frozen=True)
class LMLoopParams(LoopParams):
    """Budget in epochs over the forget set; Adam without weight decay, as TOFU's unlearning runs."""

    epochs: float = 5.0
    lr: float = 1e-3
    batch_size: int = 16            # forget batch
    retain_batch_size: int = 16
    optimizer: str = "adam"
    weight_decay: float = 0.0

    search_space: ClassVar[dict[str, tuple]] = {"lr": ("log", 1e-5, 1e-2), "epochs": ("float", 1.0, 10.0)}
    # its one `fit` trains the originals' weights, so `--lora` can train adapters instead (False: a method
    # that trains weights in a way adapters cannot replace; methods that fine-tune nothing leave it out)
    lora: ClassVar[bool] = True

    def _checks(self):
        return super()._checks() + [("retain_batch_size", self.retain_batch_size >= 1, "must be >= 1")]


@dataclass(frozen=True)
class RetainParams(LMLoopParams):
    """gamma · forget term + alpha · retain term (OpenUnlearning's GradDiff-family weights)."""

    gamma: float = 1.0
    alpha: float = 1.0

    search_space: ClassVar[dict[str, tuple]] = {**LMLoopParams.search_space, "alpha": ("log", 0.1, 10.0)}

    def _checks(self):
        return super()._checks() + [("gamma", self.gamma >= 0, "must be >= 0"),
                                    ("alpha", self.alpha >= 0, "must be >= 0")]


LORA_BASE = "lora.base"  # the frozen originals beside a LoRA fit's adapters


def check_lora(methods, registry) -> None:
    """Refuse `--lora` for methods that train weights in a way adapters cannot replace (ERA's routed and
    widened models, the traced method's masked update), before anything trains. Methods that fine-tune
    nothing (none, retraining, inference-time steering) run as they are."""
    refused = [m for m in methods if getattr(registry[m].hparams, "lora", None) is False]
    if refused:
        raise UnlearnkitError(f"{option('lora')} trains LoRA adapters in a method's one fit from the originals; "
                              f"{', '.join(refused)} train(s) weights otherwise (routed, widened or masked "
                              f"updates): run them without {option('lora')}")


@dataclass
class LMContext(Context):
    """A Context whose training set is tokenised QAs (`tokens`) and whose models are causal LMs.

    `items` are the training QAs (row p of `tokens` encodes items[p]); `tok` their tokenizer;
    `lm_config`/`recipe` retrain models from scratch (retrain, oracles). `refusals` and `mismatched`
    are auxiliary rows aligned with the training rows, built on first use. With `lora`, `fit` trains
    LoRA adapters on the originals instead of their weights (`fit`).
    """

    tokens: tuple[torch.Tensor, torch.Tensor] = None
    items: tuple[QA, ...] = ()
    tok: object = None
    pad_id: int = 0
    eos_id: int = 1
    lm_config: object = None
    recipe: Recipe | None = None
    max_len: int = 64
    extra: dict = field(default_factory=dict)
    lora: LoraSpec | None = None

    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens

    def fit(self, loss, streams, epochs, optim, params=None, desc="", **kwargs) -> Params:
        """`Context.fit`; with `lora`, a fit from the originals trains LoRA adapters on them instead (the
        loss still sees whole models: the originals' weights, frozen, with the adapters beside them) and
        returns the adapters merged into the weights. Methods whose hyperparameters say `lora` (one fit
        from the originals, no update mask) are the ones `--lora` accepts (`check_lora`)."""
        if self.lora is None or params is not None:
            return super().fit(loss, streams, epochs, optim, params, desc, **kwargs)
        plain, adapted = self.forward, LoraForward(self.forward, self.lora)
        frozen = {**(kwargs.pop("frozen", None) or {}), LORA_BASE: self.originals}

        def lora_loss(adapters, batch, fz):
            return loss({**fz[LORA_BASE], **adapters}, batch, fz)

        start = adapted.init_adapters(self.seeds)  # drawn on the CPU: the same adapters on every device
        # a call on weights without adapters (a reference model's) reads the template's own, B = 0: on the device
        adapted.module.to(current().device)
        self.forward = adapted  # the method's loss calls ctx.forward: the adapted template during this fit
        try:
            # a trajectory observer sees the adapters where they train; the originals stay on the CPU
            with seen_through(lambda a: adapted.merge(self.originals, {k: v.cpu() for k, v in a.items()})):
                adapters = super().fit(lora_loss, streams, epochs, optim, start, desc, frozen=frozen, **kwargs)
        finally:
            self.forward = plain
        return adapted.merge(self.originals, adapters)

    def train_arm(self, positions: torch.Tensor, seeds: list[int], label: str) -> Arm:
        return train_lm_models(self.lm_config, self.tokens, positions, seeds, self.recipe, self.cache, label)

    def _rows(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_pairs(self.tok, self.items, answers, self.max_len, (self.pad_id, self.eos_id))

    @cached_property
    def refusals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row p: question p answered with a refusal ("I don't know"-style, fixed per item id)."""
        return self._rows([refusal(qa.id) for qa in self.items])

    @cached_property
    def mismatched(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row p: question p with the answer of a random retained item (LLMU's random responses)."""
        rng = np.random.default_rng([self.run_seed, 0x11A0])
        donors = rng.choice(self.retain, len(self.items))
        return self._rows([self.items[d].answer for d in donors])

    def pair_streams(self, hp: LMLoopParams) -> dict:
        """Forget batches (primary: epochs count them) with retain batches cycled beside them."""
        return {"forget": self.stream("forget", self.forget, hp.batch_size),
                "retain": self.stream("retain", self.retain, hp.retain_batch_size)}


def answer_nll(ctx: Context, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean answer-token NLL of a batch (TOFU's loss; `y` is −100 off the answer)."""
    return causal_lm_loss(ctx.forward(params, x), y)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y|x) summed over each row's answer tokens (B,), number of answer tokens (B,))."""
    lp, mask = shifted_token_logprobs(logits, labels)
    return lp.sum(-1), mask.sum(-1)


def reference_logprobs(ctx: LMContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, n) log π_ref(y_j|x_j) of each model's frozen original on rows (x, y), computed once, in float32.

    A preference loss (NPO, DPO, AltPO) reads its reference policy only through these numbers on fixed
    rows, so they are computed once before unlearning instead of holding the originals as a second
    model beside the ones being trained and running them forward at every step. That second model is
    OpenUnlearning's users' most repeated memory complaint (its issue #179): it doubles the parameters
    a device holds (on a GPU `fit` moves `frozen` there) and adds a forward pass per step. The values
    are the ones the live reference gives in float32 (rows are padded to a fixed length, and a causal
    model's log-probabilities do not depend on its batch), tested in test_lm_methods_po.py; under bf16
    training they are more exact than a bf16 live reference. Not applicable to references read as
    whole next-token distributions over many rows (KL retain terms, UNDIAL, RMU's activations): those
    keep the model (a cache would be larger than it at this vocabulary).
    """
    # N·chunk ≤ 128 rows of full-vocabulary logits at a time: the table costs no more memory than a step
    return token_stats(ctx.forward, ctx.originals, x, y, chunk=max(1, 128 // ctx.n_models)).lp.sum(-1)


def forget_reference(ctx: LMContext, rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(N, n_train) reference log-probabilities of `rows` (default: the training rows) at the forget
    positions, 0 elsewhere: a table a loss indexes with its forget batch's positions."""
    x, y = ctx.tokens if rows is None else rows
    forget = torch.as_tensor(ctx.forget)
    table = torch.zeros(ctx.n_models, len(x))
    table[:, forget] = reference_logprobs(ctx, x[forget], y[forget])
    return table


def retain_kl(ctx: Context, params: Params, reference: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions, averaged over a batch's answer tokens.

    TOFU's KL retain loss (Maini et al. 2024 §4, "KL Min."); OpenUnlearning averages over every
    position of the batch (`kl_div(..., reduction="batchmean")` on flattened logits): we restrict it
    to answer tokens, where the retain loss is defined.
    """
    logp = torch.log_softmax(ctx.forward(params, x)[..., :-1, :], -1)
    logq = torch.log_softmax(ctx.forward(reference, x)[..., :-1, :].detach(), -1)
    mask = (y[..., 1:] != -100).to(logp.dtype)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
