import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ...data.tofu_synth import ATTRIBUTES, CANARY_TEMPLATES, QA
from ...engine import Params
from ...lm.tokenizer import encode_pairs
from .base import (
    LM_REGISTRY,
    LMContext,
    RetainParams,
    answer_nll,
    forget_reference,
    reference_logprobs,
    register,
)
from .dpo import DPOParams, dpo_loss, pair_logprobs

_TAG_ALTERNATE = 0xA170


@dataclass(frozen=True)
class AltPOParams(DPOParams):
    alternates: int = 5    # k alternate answers per forget question (the authors' augment_k)

    search_space: ClassVar[dict] = {**RetainParams.search_space, "beta": ("log", 0.05, 0.5),
                                    "alpha": ("log", 1.0, 5.0)}

    def _checks(self):
        return super()._checks() + [("alternates", self.alternates >= 1, "must be >= 1")]


# --- alternate answers without a language model ------------------------------------------------------

_SLOT = re.compile(r"\{(\w+)\}")


def _template_regex(template: str, fixed: dict[str, str] | None = None) -> re.Pattern:
    """`template` ("{name} was born in {v}.") as a regex: slots in `fixed` literal, the others groups."""
    fixed, parts, seen, pos = fixed or {}, [], set(), 0
    for m in _SLOT.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        key = m.group(1)
        if key in fixed:
            parts.append(re.escape(fixed[key]))
        elif key in seen:
            parts.append(f"(?P={key})")
        else:
            parts.append(f"(?P<{key}>.+?)")
            seen.add(key)
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


# (fact kind, question regexes, answer templates) of tofu-synth's author attributes and canaries
_FAMILIES = ([(a.key, [_template_regex(q) for q in a.questions], a.answers) for a in ATTRIBUTES]
             + [("canary_code", [_template_regex(q)], (a,)) for q, a, _ in CANARY_TEMPLATES])


def parse_fact(qa: QA) -> tuple[str, str, tuple[int, int]] | None:
    """(fact kind, value, span of the value in the answer) of a tofu-synth author or canary QA; None for
    anything else (world facts, user-supplied items)."""
    for kind, questions, answers in _FAMILIES:
        for q in questions:
            mq = q.fullmatch(qa.question)
            if mq is None:
                continue
            for a in answers:
                ma = _template_regex(a, mq.groupdict()).fullmatch(qa.answer)
                if ma is not None and "v" in ma.groupdict():
                    return kind, ma.group("v"), ma.span("v")
    return None


def alternate_answers(items: Sequence[QA], forget: Sequence[int], retain: Sequence[int], k: int,
                      seed: int) -> tuple[list[list[str]], int]:
    """k alternate answers for each forget position, and how many of those items fell back to random ones.

    An item whose fact parses (`parse_fact`) gets its own answer with the fact replaced by k distinct
    values that other training items (forget or retain) hold for the same kind of fact — another
    author's birthplace, book title, parent's occupation, another canary's code: plausible, in the
    answer's wording, and wrong. An item that does not parse, or whose kind has no other value, gets k
    answers of random retained items (as `LMContext.mismatched`). Draws are fixed by `seed` and item id.
    """
    facts = [parse_fact(qa) for qa in items]
    values: dict[str, list[str]] = {}
    for f in facts:
        if f is not None and f[1] not in values.setdefault(f[0], []):
            values[f[0]].append(f[1])
    out, fallbacks = [], 0
    retain = np.asarray(retain)
    for p in forget:
        qa, fact = items[p], facts[p]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _TAG_ALTERNATE, int(qa.id) & 0xFFFFFFFF])
        pool = [v for v in values[fact[0]] if v != fact[1]] if fact is not None else []
        if pool:
            (start, end) = fact[2]
            chosen = rng.choice(len(pool), k, replace=len(pool) < k)
            out.append([qa.answer[:start] + pool[i] + qa.answer[end:] for i in chosen])
        else:
            fallbacks += 1
            out.append([items[d].answer for d in rng.choice(retain, k, replace=len(retain) < k)])
    return out, fallbacks


@register("altpo", AltPOParams, LM_REGISTRY)
def altpo(ctx: LMContext, hp: AltPOParams) -> Params:
    """AltPO: DPO preferring k plausible wrong answers to the forget answer, plus retain NLL (β = 0.1, k = 5).

    Mekala et al. 2024/2025, "Alternate Preference Optimization for Unlearning Factual Knowledge in
    Large Language Models" (arXiv 2409.13474, COLING 2025), §3: negative feedback on the forget answer
    with in-domain positive feedback from alternate answers, i.e. γ·mean over (item, alternate) pairs of
    L_DPO(y_alt ≻ y_F) + α·NLL(S_R), with `dpo_loss` as the authors' code (dataloader.py, `DPO`, the
    −(2/β)-scaled form) and OpenUnlearning (the `DPO` trainer fed QAwithAlternateDataset,
    community/methods/AltPO/run.sh). Defaults: β = 0.1, α = γ = 1, k = 5 alternates per question (the
    authors' README command: subdpo, beta=0.1, retain_wt=1, augment_k=5; OpenUnlearning's DPO.yaml and
    generate.yaml repeats=5; its suggested grid β ∈ {0.05, 0.1, 0.5}, α ∈ {1, 2, 5}).

    Alternate answers. The authors sample them from the model itself, prompted to rewrite the answer
    with different plausible facts. Here no language model generates anything: tofu-synth answers are
    templates with one fact slot, so an alternate is the item's own answer with the fact replaced by
    the value of the same kind of fact held by a random other forget or retain item (another author's
    birthplace, genre, award or book; another canary's code) — `alternate_answers`. Of the two options
    the data allows this is the faithful one: like the authors' alternates it answers *this* question
    about *this* subject, plausibly, in-distribution, and wrongly; `ctx.mismatched` (a random retained
    item's whole answer) is about another subject, often another question, and is what LLMU's "random
    responses" are, not AltPO's. Items that are not tofu-synth templates (user JSONL, world facts) fall
    back to k random retained answers, as `ctx.mismatched`. The items' `perturbed` answers would be the
    closest match in form, but they are what the truth ratio (and so forget quality) scores: training
    on them would move the metric directly, so they are not used.

    Deviations: the k alternates of a question are k pairs in one step (the authors list each as its
    own row, so one of their epochs is k of our passes over S_F; our `epochs` counts passes over S_F as
    every method here does); loop settings are the toolkit's LM defaults (the authors: lr 5e-5, 2
    epochs of k = 5 rows, for a 7B model).
    """
    k = hp.alternates
    answers, _ = alternate_answers(ctx.items, ctx.forget, ctx.retain, k, ctx.run_seed)
    rows = [ctx.items[p] for p in ctx.forget for _ in range(k)]
    alt_x, alt_y = encode_pairs(ctx.tok, rows, [a for alts in answers for a in alts], ctx.max_len,
                                (ctx.pad_id, ctx.eos_id))
    slot = torch.full((len(ctx.items),), -1, dtype=torch.long)
    slot[torch.as_tensor(ctx.forget)] = torch.arange(len(ctx.forget))
    slot, alt_x, alt_y = ctx.on_device(slot, *(t.view(len(ctx.forget), k, -1) for t in (alt_x, alt_y)))

    def loss(params, batch, frozen):
        (xf, yf, pf), (xr, yr, _) = batch["forget"], batch["retain"]
        s = slot[pf]
        xa, ya = alt_x[s].flatten(0, 1), alt_y[s].flatten(0, 1)     # (B·k, L): item-major
        logp_w, logp_l = pair_logprobs(ctx, params, xa, ya, xf, yf)
        ref_w, ref_l = frozen["ref_w"][s], frozen["ref_l"][pf]
        forget = dpo_loss(logp_w.view(-1, k), logp_l.unsqueeze(-1), ref_w, ref_l.unsqueeze(-1), hp.beta)
        return hp.gamma * forget + hp.alpha * answer_nll(ctx, params, xr, yr)

    # the reference policy read through its log-probabilities, computed once (`reference_logprobs`):
    # of the alternates (n_forget, k) per model, and of the forget answers
    ref_alt = reference_logprobs(ctx, alt_x.flatten(0, 1), alt_y.flatten(0, 1)).view(ctx.n_models, -1, k)
    reference = {"ref_w": ref_alt, "ref_l": forget_reference(ctx)}
    return ctx.fit(loss, ctx.pair_streams(hp), hp.epochs, hp.optim(), frozen=reference, desc="altpo")
