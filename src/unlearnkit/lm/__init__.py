"""Language-model support: a local byte-level BPE tokenizer for tofu-synth, GPT-2-style causal LMs
(Radford et al. 2019) as stacked vmappable parameters, answer-token log-probs for the TOFU metrics
(Maini et al. 2024), and cached vectorised training through the shared engine."""
from .model import (
                    LMForward,
                    as_sequences,
                    build_lm,
                    causal_lm_loss,
                    config_for,
                    describe_config,
                    init_lm_params,
                    lm_config,
                    mean_token_logprob,
                    model_params,
                    shifted_token_logprobs,
                    token_logprobs,
)
from .tokenizer import (
                    EOS,
                    IGNORE,
                    PAD,
                    build_tokenizer,
                    corpus_texts,
                    decode_answer,
                    encode_items,
                    encode_qa,
                    special_ids,
                    train_tokenizer,
)
from .train import DEFAULT_LM_RECIPE, lm_key, lm_loss, train_lm_models

__all__ = [
                    "DEFAULT_LM_RECIPE",
                    "EOS",
                    "IGNORE",
                    "PAD",
                    "LMForward",
                    "as_sequences",
                    "build_lm",
                    "build_tokenizer",
                    "causal_lm_loss",
                    "config_for",
                    "corpus_texts",
                    "decode_answer",
                    "describe_config",
                    "encode_items",
                    "encode_qa",
                    "init_lm_params",
                    "lm_config",
                    "lm_key",
                    "lm_loss",
                    "mean_token_logprob",
                    "model_params",
                    "shifted_token_logprobs",
                    "special_ids",
                    "token_logprobs",
                    "train_lm_models",
                    "train_tokenizer",
]
