"""Unlearning at inference: methods that leave the weights alone and change how the model runs.

`sae-clamp` (an SAE clamps features of one block's output, `lm.sae`) and `guard` (a prompt classifier
and forbidden-continuation penalties on the logits, `lm.guard`) return the originals' weights plus their
own per-model state in the same params dict, under a reserved key prefix, so that `torch.vmap` hands
model i its own state with its weights. Everything that scores a row goes through the two functions
here: `forward_for` (the teacher-forced Forward: token statistics, truth ratios, attacks) and
`answers_for` (ROUGE, probes, fluency: plain weights through `generate.greedy_answers`), so a steered row is
measured exactly as the metrics see the deployed system. Its weights still hold the knowledge: KLoM
against the oracles and the attacks on the unchanged weights show it (a row says it suppresses).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..engine import Forward, Params
from .generate import greedy_answers, on_run_device
from .guard import GUARD_PREFIX, GuardedForward, guarded_greedy_answers
from .guard import diagnostics as guard_diagnostics
from .model import LMForward, split_prefixed
from .sae import PREFIX, ClampedForward, sae_hook, split_sae

PREFIXES = (PREFIX, GUARD_PREFIX)
MECHANISM = {PREFIX: "inference-time clamp of SAE features (weights untouched)",
             GUARD_PREFIX: "generation-time guard (weights untouched)"}


def split_state(params: Params) -> tuple[Params, Params]:
    """(the model's weights, the steering state: the entries under a reserved prefix)."""
    return split_prefixed(params, PREFIXES)


def diagnostics(params: Params) -> dict:
    """What a steered row reports about its mechanism beyond the metrics (the guard's classifier: accuracy,
    recall on the forget questions, flag rates elsewhere); {} for plain weights and SAE clamps."""
    return guard_diagnostics(params) if kind(params) == GUARD_PREFIX else {}


def kind(params: Params) -> str | None:
    """The steering prefix present in `params` ("sae." or "guard."), or None for plain weights."""
    return next((p for p in PREFIXES if any(k.startswith(p) for k in params)), None)


def forward_for(base: LMForward, params: Params) -> Forward:
    """The Forward that scores `params`: `base` itself for plain weights, else the steering wrapper."""
    k = kind(params)
    if k == PREFIX:
        return ClampedForward.from_params(base, params)
    if k == GUARD_PREFIX:
        return GuardedForward(base)
    return base


def answers_for(module: nn.Module, params: Params, tok, questions: Sequence[str], max_new_tokens: int,
                pad_id: int, eos_id: int, batch_size: int = 128) -> list[list[str]]:
    """Greedy answers, [models][questions], of plain weights (`generate.greedy_answers`) or of steered
    params: each model generates with its own state (the SAE hooked on its block while Hugging Face's
    `generate` runs; the guard's decoder, which re-scores every prefix), on the run's device."""
    module, params = on_run_device(module, params)
    if kind(params) is None:
        return greedy_answers(module, params, tok, questions, max_new_tokens, pad_id, eos_id, batch_size)
    if kind(params) == PREFIX:
        weights, sae = split_sae(params)
        out = []
        for i in range(next(iter(weights.values())).shape[0]):
            with sae_hook(module, {k: v[i] for k, v in sae.items()}):
                out += greedy_answers(module, {k: v[i:i + 1] for k, v in weights.items()}, tok, questions,
                                      max_new_tokens, pad_id, eos_id, batch_size)
        return out
    n_positions = getattr(module.config, "n_positions", None) or module.config.max_position_embeddings
    return guarded_greedy_answers(GuardedForward(LMForward(module=module)), params, tok, questions, max_new_tokens,
                                  pad_id, eos_id, n_positions, batch_size)


__all__ = ["MECHANISM", "PREFIXES", "answers_for", "diagnostics", "forward_for", "kind", "split_state"]
