"""A small byte-level BPE tokenizer trained locally on the tofu-synth corpus, and TOFU-style QA encoding.

GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") uses a byte-level
BPE of 50,257 tokens; here the same kind of tokenizer (HuggingFace `tokenizers`: ByteLevel
pre-tokenizer, BPE model, ByteLevel decoder) is trained from scratch on the generated benchmark's own
text with a vocabulary of ~1k, so nothing is downloaded and small models see short sequences.

`encode_qa` follows TOFU (Maini et al. 2024, arXiv 2401.06121) and OpenUnlearning: the model reads
question then answer, and the loss (and every metric) covers the answer tokens only: the labels are
-100 on the question and on the padding. Simplified: no chat template ("Question: ... Answer: ..."
markers) and no BOS token: the question's own tokens come first, one space, then the answer, then
EOS; sequences are right-padded (with a causal model, padding after the sequence cannot change the
logits before it, so no attention mask is needed) and too-long sequences are cut at `max_len`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..data.tofu_synth import QA, TofuSynth

PAD, EOS = "<pad>", "<eos>"
SPECIAL_TOKENS = (PAD, EOS)
IGNORE = -100


def corpus_texts(bench: TofuSynth) -> list[str]:
    """Every string of the benchmark: questions, answers, paraphrases, perturbed answers of the author
    QAs, world facts and canaries (the tokenizer must cover whatever the metrics will score)."""
    texts = []
    for qa in bench.authors + bench.world + bench.canaries:
        texts += [qa.question, qa.answer, qa.paraphrase, *qa.perturbed]
    return [t for t in texts if t]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE trained on `texts`; the same texts always give the same tokenizer.

    Ids 0 and 1 are `<pad>` and `<eos>`; all 256 byte symbols are in the vocabulary, so any string
    can be encoded (no unknown token).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def build_tokenizer(bench: TofuSynth, vocab_size: int = 1024) -> Tokenizer:
    return train_tokenizer(corpus_texts(bench), vocab_size=vocab_size)


def special_ids(tok: Tokenizer) -> tuple[int, int]:
    """(pad id, eos id)."""
    return tok.token_to_id(PAD), tok.token_to_id(EOS)


def encode_qa(tok: Tokenizer, question: str, answer: str, max_len: int = 64,
              specials: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (max_len,), labels (max_len,)) of "question answer<eos>", right-padded.

    labels equal input_ids on the answer tokens and EOS and are -100 elsewhere (question, padding),
    so a causal-LM loss with shifted labels is the answer's NLL given the question, as in TOFU.
    `specials` = (pad id, eos id) for tokenizers other than ours (a checkpoint's own, e.g. GPT-2's
    "<|endoftext|>"); the question gets the tokenizer's own special tokens (a BOS, if it adds one),
    the answer none.
    """
    pad, eos = specials or special_ids(tok)
    # encode the joined text and split at the answer's first character: tokenizers that normalise
    # spaces (SentencePiece's "▁") would add a spurious one to a separately encoded " answer"
    joined = tok.encode(question + " " + answer.lstrip())
    boundary = len(question)
    n_q = next((i for i, (start, end) in enumerate(joined.offsets) if start >= boundary and end > start),
               len(joined.ids))
    q, a = joined.ids[:n_q], joined.ids[n_q:] + [eos]
    ids = (q + a)[:max_len]
    labels = ([IGNORE] * len(q) + a)[:max_len]
    n = len(ids)
    ids += [pad] * (max_len - n)
    labels += [IGNORE] * (max_len - n)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def encode_pairs(tok: Tokenizer, items: Sequence[QA], answers: Sequence[str], max_len: int = 64,
                 specials: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked (n, max_len) input_ids and labels of each item's question with the matching answer text."""
    pairs = [encode_qa(tok, qa.question, a, max_len, specials) for qa, a in zip(items, answers, strict=True)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def encode_items(tok: Tokenizer, items: Sequence[QA], max_len: int = 64, field: str = "answer",
                 which: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked (n, max_len) input_ids and labels of items' question with their `field`
    ("answer", "paraphrase", or "perturbed" with index `which`)."""
    targets = [getattr(qa, field)[which] if field == "perturbed" else getattr(qa, field) for qa in items]
    return encode_pairs(tok, items, targets, max_len)


def decode_answer(tok: Tokenizer, labels: torch.Tensor) -> str:
    """The answer text of one encoded QA (the labelled tokens, EOS dropped)."""
    _, eos = special_ids(tok)
    ids = [int(t) for t in labels[labels != IGNORE] if int(t) != eos]
    return tok.decode(ids).strip()
