"""Language-model tasks: a generated tofu-synth benchmark, a tokenizer, a GPT-2 size and a recipe.

`load_tofu(task)` builds everything a run needs from the task alone (no download): the benchmark,
its held-out items, the tokenizer trained on its text, and the encoded training set. The training set
is the author QAs, then the canaries, then the world facts (`TofuSynth.train_items`): world facts are
the models' general knowledge, retained by every arm and scored by model utility.

Held-out items are generated beyond the trained ones (authors n_authors…, canaries n_canaries…; the
generator's streams are per item, so the trained items do not change) and never trained on: they are
the non-members of the membership-inference attacks and the "val" split of KLoM.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
from tokenizers import Tokenizer

from ..data.tofu_synth import QA, TofuSynth, generate
from ..errors import UnlearnkitError
from ..tasks import Recipe
from .tokenizer import build_tokenizer, encode_items

if TYPE_CHECKING:  # every run reads LM_TASKS; transformers' model code loads only when an LM is built
    from transformers import GPT2Config

#: A recipe that fits small LMs from scratch in few epochs (Adam, linear decay, no weight decay).
DEFAULT_LM_RECIPE = Recipe(epochs=20, batch_size=16, optimizer="adam", lr=3e-3, momentum=0.9,
                           weight_decay=0.0, schedule="linear")

DEFAULT_LM_METHODS = ("none", "retrain", "ga", "graddiff", "npo", "simnpo", "idkdpo", "altpo", "undial", "wga",
                      "satimp", "ceu", "pdu", "llmu", "rmu", "flat", "idk", "traced", "sae-clamp", "guard")


@dataclass(frozen=True)
class LMTask:
    name: str
    n_authors: int = 200
    qa_per_author: int = 10
    n_world: int = 100
    n_canaries: int = 50
    holdout_authors: int = 10
    holdout_canaries: int = 50
    vocab_size: int = 1024
    max_len: int = 64
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    recipe: Recipe = DEFAULT_LM_RECIPE
    retain_eval: int = 200      # retain author QAs scored per model (a fixed seeded sample)
    data_seed: int = 0
    description: str = ""

    def describe(self) -> dict:
        return dataclasses.asdict(self)


LM_TASKS: dict[str, LMTask] = {t.name: t for t in [
    LMTask("tofu-synth-gpt", n_authors=50, n_world=50, n_canaries=40, holdout_authors=10, holdout_canaries=40,
           max_len=56, n_embd=96, recipe=dataclasses.replace(DEFAULT_LM_RECIPE, epochs=15),
           description="tofu-synth: 50 fictitious authors × 10 QAs + 40 canaries + 50 world facts, 2-layer GPT-2 "
                       "(d=96) trained from scratch (default LM task)"),
    LMTask("tofu-synth-tiny", n_authors=40, qa_per_author=5, n_world=20, n_canaries=20, holdout_authors=8,
           holdout_canaries=20, max_len=48, n_layer=1, n_embd=64, retain_eval=60,
           recipe=dataclasses.replace(DEFAULT_LM_RECIPE, epochs=25),
           description="tofu-synth, 40 authors × 5 QAs, 1-layer GPT-2 (d=64): seconds to train (tests)"),
]}


def get_lm_task(name: str) -> LMTask:
    if name not in LM_TASKS:
        raise UnlearnkitError(f"unknown language-model task {name!r}; known: {', '.join(LM_TASKS)}")
    return LM_TASKS[name]


@dataclass
class TofuData:
    """A task's benchmark, tokenizer and encoded training set: input_ids and labels (items, max_len)."""

    task: LMTask
    bench: TofuSynth
    holdout: tuple[QA, ...]
    tok: Tokenizer
    items: tuple[QA, ...] = field(init=False)

    def __post_init__(self):
        self.items = self.bench.train_items()

    @cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_items(self.tok, self.items, self.task.max_len)

    @cached_property
    def config(self) -> GPT2Config:
        from .model import config_for
        t = self.task
        return config_for(self.tok, n_layer=t.n_layer, n_embd=t.n_embd, n_head=t.n_head, n_positions=t.max_len)

    def forget_positions(self, spec: str, seed: int) -> np.ndarray:
        """Sorted training positions of `authors:F` / `authors:K` or `canaries:K` / `canaries:F`.

        The amount follows the classifier specs' grammar (forget.parse_amount: a count has no decimal
        point, a fraction has one, in (0, 1]); the benchmark gets its own form, authors:FRACTION or
        canaries:COUNT. Its draw takes a prefix of one seeded permutation whatever the amount, so every
        spec valid before selects the same items, and authors:5 of 50 authors is authors:0.1."""
        from ..forget import resolve_amount

        kind, *args = str(spec).strip().split(":")
        if kind not in ("authors", "canaries") or len(args) != 1:
            raise UnlearnkitError(f"malformed language-model forget spec {spec!r}; expected authors:F (a fraction of "
                                  "the authors, with a decimal point: authors:0.01|0.05|0.1 are TOFU's forget01/05/10),"
                                  " authors:K (K authors) or canaries:K (K canaries)")
        if kind == "authors":
            n = self.bench.n_authors
            k = resolve_amount(args[0], n, "authors", "authors")
            if k >= n:
                raise UnlearnkitError(f"authors:{args[0]} asks for {k} of the {n} authors; model utility is scored "
                                      f"on retained authors, so keep one: use at most authors:{n - 1}")
            spec = f"authors:{k / n!r}"  # round(k/n · n) == k: the same k authors the fraction gave
        elif self.bench.canaries:
            spec = f"canaries:{resolve_amount(args[0], len(self.bench.canaries), 'canaries', 'canaries')}"
        return self.bench.forget_positions(spec, seed)

    def holdout_like(self, forget: np.ndarray) -> tuple[QA, ...]:
        """Held-out items of the forget set's kind (authors or canaries): the MIA non-members."""
        kinds = {self.items[p].kind for p in forget}
        return tuple(qa for qa in self.holdout if qa.kind in kinds)

    def retain_sample(self, retain: np.ndarray, seed: int) -> np.ndarray:
        """A fixed seeded sample of the retained author QAs (utility and retain KLoM are scored on it)."""
        authors = retain[[self.items[p].kind == "author" for p in retain]]
        k = min(self.task.retain_eval, len(authors))
        return np.sort(np.random.default_rng([seed, 0xE7A1]).choice(authors, k, replace=False))


def load_tofu(task: LMTask) -> TofuData:
    full = generate(n_authors=task.n_authors + task.holdout_authors, qa_per_author=task.qa_per_author,
                    n_world=task.n_world, n_canaries=task.n_canaries + task.holdout_canaries, seed=task.data_seed)
    n_qa = task.n_authors * task.qa_per_author
    bench = TofuSynth(full.authors[:n_qa], full.world, full.canaries[:task.n_canaries])
    holdout = full.authors[n_qa:] + full.canaries[task.n_canaries:]
    # the tokenizer sees the held-out text too: trained on the training text alone, it would merge the
    # forget authors' names into tokens and not the held-out ones', a membership signal every oracle has
    return TofuData(task, bench, holdout, build_tokenizer(full, task.vocab_size))
