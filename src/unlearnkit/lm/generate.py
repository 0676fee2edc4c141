"""Greedy answers of N stacked language models, one model at a time through Hugging Face `generate`.

ROUGE needs generated text, and generation is sequential over tokens: the KV cache of `generate`
makes it far cheaper than re-running the vmapped forward on the whole prefix at every step, so this
is the one place where models are handled one by one (evaluation only, never training). The cache is
asked for explicitly: our configs say `use_cache=False` (training and the vmapped forward never want
one), and `generate` follows the config, so without it every new token re-ran the whole prefix (5×
slower on tofu-synth-tiny, the same answers).
Questions are left-padded with an attention mask, as batched decoding requires.
"""
from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer
from torch import nn

from ..engine import Params
from ..engine.compute import current

_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {device: its copy there}


def on_run_device(module: nn.Module, params: Params) -> tuple[nn.Module, Params]:
    """`module` and `params` on the run's device, where generation runs (it is evaluation work, like
    `engine.predict`). A module elsewhere is copied there once (generation loads each model's weights into
    it): the template stays where it is, for the code that calls it with parameters on the CPU."""
    dev = torch.device(current().device)
    if next(module.parameters()).device != dev:
        copies = _copies.setdefault(module, {})
        if dev not in copies:
            copies[dev] = copy.deepcopy(module).to(dev)
        module = copies[dev]
    return module, {k: v.to(dev) for k, v in params.items()}


@torch.no_grad()
def load_into(module: nn.Module, params: Params) -> nn.Module:
    """Copy one model's parameters into `module` (tied weights are one tensor, copied once)."""
    own = dict(module.named_parameters())
    for name, value in params.items():
        own[name].copy_(value)
    return module


@torch.no_grad()
def greedy_answers(module: nn.Module, params: Params, tok: Tokenizer, questions: Sequence[str],
                   max_new_tokens: int, pad_id: int, eos_id: int, batch_size: int = 128) -> list[list[str]]:
    """[models][questions] greedy continuations (decoded, up to EOS) of N = leading-dim models' weights.
    Params that carry an inference-time method's state generate through `steering.answers_for`."""
    n_models = next(iter(params.values())).shape[0]
    prompts = [tok.encode(q).ids for q in questions]
    dev = next(module.parameters()).device
    out = []
    for i in range(n_models):
        load_into(module, {k: v[i] for k, v in params.items()}).eval()
        answers = []
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=dev)
            context = getattr(module.config, "n_positions", None) or module.config.max_position_embeddings
            room = context - width  # positions beyond the model's range do not exist
            gen = module.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(1, min(max_new_tokens, room)),
                                  do_sample=False, use_cache=True,
                                  pad_token_id=pad_id, eos_token_id=eos_id)[:, width:]
            for row in gen.tolist():
                row = row[:row.index(eos_id)] if eos_id in row else row
                answers.append(tok.decode([t for t in row if t != pad_id]).strip())
        out.append(answers)
    return out
