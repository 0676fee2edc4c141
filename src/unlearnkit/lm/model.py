"""GPT-2-style causal language models as stacked, vmappable parameters for the shared engine.

The architecture is GPT-2's (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners"), built from a small `transformers.GPT2Config` with `GPT2LMHeadModel(config)` and randomly
initialised (no pretrained weights: models learn tofu-synth from scratch, the setting of TOFU's
retrain-from-scratch oracle, Maini et al. 2024, arXiv 2401.06121, scaled down; TOFU itself fine-tunes
pretrained 7B chat models on its authors).

The module is a template only: `LMForward(params, input_ids) -> logits` calls it through
`torch.func.functional_call` with any one model's parameters, so `torch.vmap` (and `engine.fit`)
runs N models at once. What this needs:

- dropout 0 everywhere (`fit` vmaps with randomness="error"): `lm_config` sets all three pdrops to 0;
- eager attention: the SDPA kernel has no vmap batching rule on CPU (torch falls back to a slow
  per-model loop with a warning), so `lm_config` sets `attn_implementation="eager"`;
- tied embeddings: `lm_head.weight` is `transformer.wte.weight`; `named_parameters` lists it once and
  functional_call (tie_weights=True) feeds the one tensor to both;
- buffers: transformers 5's GPT-2 registers none (the causal mask is built on the fly from the
  sequence length), so the parameters are the whole state; any buffer a future version adds is taken
  from the template by functional_call.

No attention mask is passed: sequences are right-padded, and a causal model's logits at a position
never depend on later (padding) tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.func import functional_call

from ..engine import Forward, Params
from ..engine.compute import current
from ..errors import UnlearnkitError
from .tokenizer import IGNORE, special_ids

if TYPE_CHECKING:  # transformers' model code takes seconds to import: loaded where a model is built
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel


def lm_config(vocab_size: int, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 64,
              pad_token_id: int | None = None, eos_token_id: int | None = None) -> GPT2Config:
    """A small GPT-2 config with every dropout at 0 and eager attention (both needed under vmap)."""
    from transformers import GPT2Config
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                     bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                     use_cache=False)
    cfg._attn_implementation = "eager"
    return cfg


def config_for(tok: Tokenizer, **kwargs) -> GPT2Config:
    """A config sized to `tok`. The pad id is left out of the config on purpose: transformers then
    skips its data-dependent "padding without attention mask" check, which right padding makes moot."""
    _, eos = special_ids(tok)
    return lm_config(tok.get_vocab_size(), eos_token_id=eos, **kwargs)


def describe_config(config: GPT2Config) -> dict:
    """The config fields that shape the model and its training (for cache keys)."""
    keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
            "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
            "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
            "tie_word_embeddings")
    return {k: getattr(config, k, None) for k in keys} | {"attn": config._attn_implementation}


def build_lm(config: GPT2Config) -> GPT2LMHeadModel:
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel(config).eval()


class LMForward(Forward):
    """f(params, input_ids (B, L)) -> logits (B, L, vocab) for any one model's parameters."""

    def __init__(self, config: GPT2Config | None = None, module: PreTrainedModel | None = None):
        """From a config (a fresh GPT-2 template) or any loaded Hugging Face causal LM `module`."""
        module = build_lm(config) if module is None else module.eval()
        super().__init__(module)
        self.config = module.config

    def __call__(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (input_ids,), {"use_cache": False}).logits

    @cached_property
    def blocks(self) -> nn.ModuleList:
        """The model's transformer blocks (GPT-2's `transformer.h`, Llama's `model.layers`, ...)."""
        n = self.module.config.num_hidden_layers
        for m in self.module.modules():
            if isinstance(m, nn.ModuleList) and len(m) == n:
                return m
        raise UnlearnkitError(f"cannot find the {n} transformer blocks of {type(self.module).__name__}")

    @cached_property
    def _head(self) -> tuple[str, tuple[str, ...]]:
        """The base model's prefix in parameter names, and every name of the vocabulary head's weight (a
        tied head is also the input embedding: stacked parameters hold one of its names)."""
        weight = self.module.get_output_embeddings().weight
        return self.module.base_model_prefix, tuple(
            n for n, p in self.module.named_parameters(remove_duplicate=False) if p is weight)

    def answer_loss(self, params: Params, input_ids: torch.Tensor, labels: torch.Tensor, width: int) -> torch.Tensor:
        """`causal_lm_loss(self(params, input_ids), labels)`, with the vocabulary head applied only where the
        loss reads it: in each row, the `width` positions from the one that predicts its first labelled
        token (`width`: at least every row's span of labelled tokens, `answer_width`). TOFU's loss reads
        the answer alone, about a third of the positions, and the head (d × vocabulary) is half a small
        GPT-2's work: 1.2× faster training on tofu-synth-tiny (CPU, bf16 and fp32). vmap-safe (fixed shapes)."""
        prefix, names = self._head
        base = {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}
        hidden = functional_call(self.module.base_model, base, (input_ids,), {"use_cache": False}).last_hidden_state
        weight = next(params[n] for n in names if n in params)
        target = labels[..., 1:]
        labelled = target != IGNORE
        start = labelled.to(torch.int32).argmax(-1, keepdim=True)  # a row without labels reads nothing
        pos = start + torch.arange(width, device=target.device)
        idx = pos.clamp(max=target.shape[-1] - 1)
        tgt = target.gather(-1, idx)
        valid = (pos < target.shape[-1]) & (tgt != IGNORE)
        h = hidden[..., :-1, :].gather(-2, idx.unsqueeze(-1).expand(*idx.shape, hidden.shape[-1]))
        logp = torch.log_softmax((h @ weight.T).float(), dim=-1)
        lp = torch.gather(logp, -1, torch.where(valid, tgt, 0).unsqueeze(-1)).squeeze(-1)
        return -torch.where(valid, lp, torch.zeros_like(lp)).sum() / valid.sum().clamp(min=1)

    def hidden(self, params: Params, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Residual-stream activations output by block `layer` (1-based), (..., L, d).

        Read with a forward hook that stops the forward pass there: unlike `output_hidden_states`,
        whose last entry comes after the final norm, this is the block's own output, and nothing
        after it (the other blocks, the vocabulary head) is computed."""
        if not 1 <= layer <= len(self.blocks):
            raise UnlearnkitError(f"layer must be in [1, {len(self.blocks)}] (a block's output), got {layer}")
        seen = {}

        def capture(module, args, out):
            seen["h"] = out[0] if isinstance(out, tuple) else out
            raise _Captured

        handle = self.blocks[layer - 1].register_forward_hook(capture)
        try:
            functional_call(self.module, params, (input_ids,), {"use_cache": False})
        except _Captured:
            pass
        finally:
            handle.remove()
        return seen["h"]


class _Captured(Exception):
    """Raised by `LMForward.hidden`'s hook to end a forward pass once the wanted activations are in."""


def init_lm_params(config: GPT2Config, seeds: list[int]) -> Params:
    """Stacked parameters (leading dim N = len(seeds)); model i is initialised from seeds[i] alone
    (GPT-2's own init, N(0, 0.02) weights with the residual projections scaled by 1/sqrt(2·n_layer))."""
    from transformers import GPT2LMHeadModel
    per_model = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            model = GPT2LMHeadModel(config)
        per_model.append({k: v.detach() for k, v in model.named_parameters()})
    return {k: torch.stack([p[k] for p in per_model]).contiguous() for k in per_model[0]}


def model_params(params: Params, i: int) -> Params:
    return {k: v[i] for k, v in params.items()}


def shifted_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label_{t+1} | tokens ≤ t) (..., L-1) with 0 where unlabelled, mask (..., L-1))."""
    logp = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)
    target = labels[..., 1:].expand(logp.shape[:-1])
    mask = target != IGNORE
    lp = torch.gather(logp, -1, torch.where(mask, target, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp)), mask


def answer_width(labels: torch.Tensor) -> int:
    """The widest span of labelled next-token targets in any row of `labels` (M, L): the window
    `LMForward.answer_loss` needs to read every labelled token (1 for rows without any)."""
    labelled = labels[:, 1:] != IGNORE
    if not labelled.any():
        return 1
    cols = torch.arange(labelled.shape[1])
    first = torch.where(labelled, cols, labelled.shape[1]).min(1).values
    last = torch.where(labelled, cols, -1).max(1).values
    return int((last - first + 1).clamp(min=1).max())


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) tokens of a batch (vmap-safe)."""
    lp, mask = shifted_token_logprobs(logits, labels)
    return -lp.sum() / mask.sum().clamp(min=1)


@dataclass
class TokenStats:
    """Per-model, per-item, per-position answer statistics (N, n, L-1); `mask` (n, L-1) marks answer tokens."""

    lp: torch.Tensor                  # log p(label_t | prefix)
    hit: torch.Tensor                 # the label is the model's top-1 prediction
    mask: torch.Tensor
    mu: torch.Tensor | None = None    # E_z log p(z | prefix) under the model (Min-K%++, Zhang et al. 2024, eq. 3)
    sigma: torch.Tensor | None = None


@torch.no_grad()
def token_stats(forward: Callable, params: Params, input_ids: torch.Tensor, labels: torch.Tensor,
                moments: bool = False, chunk: int = 32) -> TokenStats:
    """Answer-token statistics of N models on shared items (with `moments`, also μ and σ of the
    model's own next-token log-probabilities, for Min-K%++). Computed on the run's device in float32, like
    `engine.predict`; returned on the CPU."""
    dev = current().device
    params = {k: v.to(dev) for k, v in params.items()}
    call = torch.vmap(forward, in_dims=(0, None))
    parts: dict[str, list] = {"lp": [], "hit": [], "mu": [], "sigma": []}
    for s in range(0, len(input_ids), chunk):
        ids, lab = input_ids[s:s + chunk].to(dev), labels[s:s + chunk].to(dev)
        logits = call(params, ids)
        lp, _ = shifted_token_logprobs(logits, lab)
        parts["lp"].append(lp.cpu())
        parts["hit"].append((logits[..., :-1, :].argmax(-1) == lab[:, 1:]).cpu())
        if moments:
            logp = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            parts["mu"].append(mu.cpu())
            parts["sigma"].append(((p * logp * logp).sum(-1) - mu ** 2).clamp(min=0).sqrt().cpu())
    mask = (labels[:, 1:] != IGNORE).cpu()  # labels may live on the device (a method's own items)
    cat = {k: torch.cat(v, 1) if v else None for k, v in parts.items()}
    return TokenStats(cat["lp"], cat["hit"] & mask, mask, cat["mu"], cat["sigma"])


def token_logprobs(forward: LMForward, params: Params, input_ids: torch.Tensor, labels: torch.Tensor,
                   chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs (N, n, L-1), mask (n, L-1)) of `token_stats`: logprobs[i, j, t] = log p_i(token t+1 |
    tokens ≤ t) of item j where mask[j, t] (the answer tokens and EOS), 0 elsewhere. `as_sequences`
    turns them into the [models][items] 1-D sequences that `unlearnkit.metrics.llm` takes."""
    st = token_stats(forward, params, input_ids, labels, chunk=chunk)
    return st.lp, st.mask


def as_sequences(logprobs: torch.Tensor, mask: torch.Tensor) -> list[list]:
    """[models][items] 1-D NumPy arrays of the answer tokens' log-probs (for `metrics.llm`)."""
    return [[row[m].double().numpy() for row, m in zip(model, mask)] for model in logprobs]


def split_prefixed(params: Params, prefixes: str | tuple[str, ...]) -> tuple[Params, Params]:
    """(the entries without any of `prefixes`, the entries with one): a model's weights, and the state an
    inference-time method keeps beside them under its reserved key prefix (`lm.steering`)."""
    state = {k: v for k, v in params.items() if k.startswith(prefixes)}
    return {k: v for k, v in params.items() if k not in state}, state


def mean_token_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, n) mean answer-token log-prob per model and item (= `metrics.llm.sequence_scores`)."""
    return logprobs.sum(-1) / mask.sum(-1).clamp(min=1)
