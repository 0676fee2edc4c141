"""Language-model support: a local byte-level BPE tokenizer for tofu-synth, GPT-2-style causal LMs
(Radford et al. 2019) as stacked vmappable parameters, answer-token log-probs for the TOFU metrics
(Maini et al. 2024), and cached vectorised training through the shared engine.

Each name loads its module on first use (as in `unlearnkit`): `lm.task`, which every run consults to tell
a language-model task from a classifier's, must not pull in transformers' model code (2 s of imports)."""
from __future__ import annotations

import importlib

_API = {  # name: the submodule that defines it
    "LMForward": "model", "as_sequences": "model", "build_lm": "model", "causal_lm_loss": "model",
    "config_for": "model", "describe_config": "model", "init_lm_params": "model", "lm_config": "model",
    "mean_token_logprob": "model", "model_params": "model", "shifted_token_logprobs": "model",
    "token_logprobs": "model",
    "EOS": "tokenizer", "IGNORE": "tokenizer", "PAD": "tokenizer", "build_tokenizer": "tokenizer",
    "corpus_texts": "tokenizer", "decode_answer": "tokenizer", "encode_items": "tokenizer", "encode_qa": "tokenizer",
    "special_ids": "tokenizer", "train_tokenizer": "tokenizer",
    "DEFAULT_LM_RECIPE": "task", "lm_key": "train", "lm_loss": "train", "train_lm_models": "train",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value
