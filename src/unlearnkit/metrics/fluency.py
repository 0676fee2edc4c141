"""Fluency of generated text: RWKU's weighted bi-/tri-gram entropy (pure functions, no model code).

RWKU (Jin et al. 2024, arXiv 2406.10890, utility set "fluency"; its code
LLaMA-Factory/src/llmtuner/eval/eval_fluency.py, after ROME's generation entropy, Meng et al. 2022)
scores each greedy generation by

    H_n = −Σ_g f_g log2 f_g   over the distinct word n-grams g of the text, f_g their relative frequency,
    entropy(text) = mean(2/3 · H_2, 4/3 · H_3) = H_2 / 3 + 2 · H_3 / 3,

and reports the arithmetic mean over the generations. A text with fewer than n words has no n-gram and
H_n = 0 (an empty generation scores 0). Repetitive text has few distinct n-grams and a low entropy;
varied text a high one (at most log2 of its n-gram count, so longer texts can score higher).

Words: RWKU uses NLTK's `word_tokenize` (Punkt sentences, then Treebank words). `word_tokens` follows
its rules for English text without NLTK: punctuation marks are tokens of their own, clitics are split
("don't" → "do", "n't"; "Velmora's" → "Velmora", "'s"), hyphenated words and decimal numbers are kept
whole. It differs where Treebank turns double quotes into `` and '' (here both are '"') and where
Punkt keeps an abbreviation's period ("Dr."; here every period is a token).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

#: RWKU's n-gram orders and weights (eval_fluency.py `compute_n_gram_entropy`: ns=[2, 3], weights=[2/3, 4/3]).
NS = (2, 3)
WEIGHTS = (2 / 3, 4 / 3)

_WORDS = re.compile(r"[A-Za-z]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)*|\w+(?:-\w+)*|[^\w\s]",
                    re.IGNORECASE)


def word_tokens(text: str) -> list[str]:
    """The words of `text` (NLTK `word_tokenize`-like, see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    return _WORDS.findall(text)


def ngram_entropy(words: Sequence[str], n: int) -> float:
    """H_n in bits: the entropy of the distribution of the word n-grams of `words` (0 if there is none)."""
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(counts.values())
    return float(-sum(c / total * math.log2(c / total) for c in counts.values())) if total else 0.0


def generation_entropy(text: str, ns: Sequence[int] = NS, weights: Sequence[float] = WEIGHTS) -> float:
    """RWKU's fluency of one generation: the mean over n of weight_n · H_n (default H_2/3 + 2·H_3/3)."""
    words = word_tokens(text)
    return float(np.mean([w * ngram_entropy(words, n) for n, w in zip(ns, weights, strict=True)]))


def fluency(texts: Iterable[str]) -> float:
    """RWKU's fluency of a model: the arithmetic mean of `generation_entropy` over its generations."""
    values = [generation_entropy(t) for t in texts]
    if not values:
        raise ValueError("fluency needs at least one generation")
    return float(np.mean(values))


__all__ = ["NS", "WEIGHTS", "fluency", "generation_entropy", "ngram_entropy", "word_tokens"]
