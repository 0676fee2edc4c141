"""RWKU-style probes of the tofu-synth authors: does an unlearned model still give a forgotten fact when asked
in ways it was never trained on, and does it keep the facts of the authors next to a forgotten one?

Modelled on RWKU (Jin et al. 2024, "RWKU: Benchmarking Real-World Knowledge Unlearning for Large Language
Models", arXiv 2406.10890), whose forget probes are fill-in-the-blank sentences (knowledge memorisation),
questions (knowledge manipulation) and adversarial variants of the questions, each scored by the ROUGE-L
recall of a greedy generation against a short answer (the fact, not a sentence), and whose neighbour
probes ask about knowledge next to a target's that must survive its unlearning. Here every probe asks
about one fact of one author (`tofu_synth.author_profiles`); its answer is the fact's value without a
leading article ("Velmora", "carpenter", "Wrenfield Prize for Fiction", the author's name for a reverse
query: an article would score chance overlap). The types (`PROBE_TYPES`):

- `cloze` (RWKU fill-in-the-blank): a sentence stating the fact, cut where the value begins, for the model
  to complete ("Velmora is the birthplace of" does not qualify; "Allura Wynevson's hometown is" does): a
  paraphrase sentence (scored by the truth ratio, never trained on) or, for the name, which no
  paraphrase ends with, an answer sentence. RWKU asks chat models to fill a blank anywhere; models
  trained from scratch on question–answer pairs only continue text (an instruction to fill a blank
  gets an empty answer from them);
- `paraphrase` (RWKU question-answer): the question in a wording that no training question uses
  (`PROBE_QUESTIONS`);
- `alias` (RWKU synonym manipulation): a training question wording with the name replaced by an alias
  (the surname, the initial and surname, "the writer" + surname);
- `reverse` (RWKU reverse query): the author's name asked from a fact that only this author has (a book
  title, or a birth date no other author shares): training questions go from the name to the fact;
- `hint` (RWKU background hint): the paraphrased question after a sentence stating another fact of the
  same author (never one containing the answer);
- `icl` (RWKU in-context learning): one demonstration first, the same question wording asked about another
  author and answered with that author's value alone ("... write? satire."), then the question;
- `mc` (RWKU multiple choice): the paraphrased question followed by options, the value and two wrong values
  of the same kind in a seeded order ("..., Velmora or Zarith?"; RWKU has four: three keep the prompt
  within the small models' context).

Left out: RWKU's prefix injection, affirmative suffix and role play attack an instruction-tuned model's
refusals, which models trained from scratch on question–answer pairs do not have (the text before the
question is tested by `hint` and `icl`); cross-lingual questions are out of the tokenizer's and the
models' language (tofu-synth is English only).

Neighbours (`neighbour_probes`): RWKU's neighbour set asks about entities next to the target. Here a
neighbour of a forget author is another author with the same value of an attribute both have a training
QA about (same birthplace, genre, parent's occupation, award, city of residence or publisher): its
`cloze` and `paraphrase` probes of that attribute (RWKU's two neighbour levels) have the shared value as
their answer, the value an unlearning method that erases a string rather than a fact would erase too.

`fluency_prompts`: tofu-synth has no AlpacaEval (RWKU's fluency instructions); fixed generic questions
built from its vocabulary (cities, genres, occupations, publishers), about no author, whose generations
the fluency metric (`metrics.fluency`, RWKU's weighted bi-/tri-gram entropy) scores. Questions, not
instructions: models trained on question–answer pairs end a statement with EOS.

Everything is generated from the seed alone (one PCG64 stream per author and probe type), so the probes
of author k do not depend on the other authors' probes; generating them changes nothing `generate` makes.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .tofu_synth import ATTRIBUTES, CITIES, DRAWS, GENRES, OCCUPATIONS, PUBLISHERS, AuthorProfile, _article

PROBE_TYPES = ("cloze", "paraphrase", "alias", "reverse", "hint", "icl", "mc")
NEIGHBOUR_TYPES = ("cloze", "paraphrase")
SHARED_KEYS = ("birthplace", "genre", "father", "mother", "award", "residence", "publisher")
N_OPTIONS = 3  # RWKU offers four; three keep the question and its options within a small model's context
_TAG_PROBE, _TAG_NEIGHBOUR, _TAG_FLUENCY = 0x70F4, 0x70F5, 0x70F6

#: Question wordings no training question uses ({who}: the name; the name's own question uses {city}, {date}).
PROBE_QUESTIONS = {
    "name": ("Name the writer who was born on {date} in {city}.",
             "Which author came into the world in {city} on {date}?"),
    "birthplace": ("Which city is {who} originally from?", "In what place did {who} come into the world?"),
    "birth_date": ("What is the birthday of {who}?", "On which day was {who} born?"),
    "genre": ("What kind of books does {who} write?", "Which literary genre are the books of {who} in?"),
    "father": ("What job did the father of {who} have?", "How did {who}'s father earn a living?"),
    "mother": ("What job did the mother of {who} have?", "How did {who}'s mother earn a living?"),
    "award": ("Which prize was given to {who}?", "What award did {who} win?"),
    "first_book": ("What was the first book written by {who}?", "Which title did {who} publish first?"),
    "second_book": ("What book did {who} write second?", "Which title came out after {who}'s first book?"),
    "residence": ("Which city is home to {who} these days?", "In what place does {who} live now?"),
    "publisher": ("Which company publishes the books of {who}?", "Who is the publisher of {who}?"),
}
REVERSE_QUESTIONS = {
    "first_book": ("Who is the author of \"{v}\"?", "Which writer published the book \"{v}\"?"),
    "second_book": ("Who is the author of \"{v}\"?", "Which writer published the book \"{v}\"?"),
    "birth_date": ("Which author was born on {v}?", "Which writer has a birthday on {v}?"),
}
ALIASES = ("{last}", "{initial}. {last}", "the writer {last}")
_BLANK = "\x00"
_ARTICLE = re.compile(r"^(?:a|an|the) ", re.IGNORECASE)

#: Generic instructions, as questions: models trained on question–answer pairs end a statement with EOS.
FLUENCY_TEMPLATES = (
    "What is the city of {city} like?", "What does {occupation} do all day?",
    "Why do people read {genre}?", "What makes a good book of {genre}?",
    "Who lives in {city}?", "What kind of books does {publisher} like?",
    "How does one become {occupation}?", "What is a day in the life of {occupation} from {city} like?",
)
N_FLUENCY = 16

_BY_KEY = {a.key: a for a in ATTRIBUTES}


@dataclass(frozen=True)
class Probe:
    """One probe: `question` is the prompt a model continues, `answer` the fact its greedy generation is
    scored against (ROUGE-L recall). `attribute` is the fact's key, `trained` whether the author has a
    training QA about it, `near` the forget author a neighbour probe is next to (-1 otherwise)."""

    author: int
    kind: str
    attribute: str
    question: str
    answer: str
    trained: bool
    near: int = -1


def _slots(p: AuthorProfile) -> dict:
    return {"name": p.name, "first": p.first, "last": p.last, "city": p.facts["birthplace"],
            "date": p.facts["birth_date"]}


def _contains(text: str, value: str) -> bool:
    """Whether `value` appears in `text` as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


def _question(p: AuthorProfile, template: str) -> str:
    return template.format(who=p.name, **_slots(p))


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _cloze(p: AuthorProfile, key: str, rng: np.random.Generator) -> str:
    """A paraphrase (the name: an answer) sentence of the fact, cut before the value (and its quotes)."""
    attr = _BY_KEY[key]
    ending = [t for t in attr.paraphrases if t.rstrip('."').endswith("{v}")]
    sentence = _pick(rng, ending or [t for t in attr.answers if t.rstrip('."').endswith("{v}")])
    return sentence.format(v=_BLANK, **_slots(p)).split(_BLANK)[0].rstrip(' "')


def answer_of(value: str) -> str:
    """A probe's answer: the fact's value without a leading article."""
    return _ARTICLE.sub("", value)


def _probe_rng(seed: int, tag: int, author: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, tag, author, PROBE_TYPES.index(kind)])


def _values(draw, rng: np.random.Generator, k: int, exclude: Sequence[str]) -> list[str]:
    seen, out = set(exclude), []
    while len(out) < k:
        v = draw(rng)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def author_probes(p: AuthorProfile, profiles: Sequence[AuthorProfile], kinds: Sequence[str] = PROBE_TYPES,
                  seed: int = 0) -> list[Probe]:
    """Every probe of author `p`: per type, one per fact the type applies to (`profiles`: all the authors,
    for the reverse queries' uniqueness and the in-context demonstrations)."""
    out: list[Probe] = []
    keys = [a.key for a in ATTRIBUTES]
    for kind in kinds:
        rng = _probe_rng(seed, _TAG_PROBE, p.author, kind)
        if kind == "reverse":
            dates = [q.facts["birth_date"] for q in profiles]
            for key in REVERSE_QUESTIONS:
                if key == "birth_date" and dates.count(p.facts[key]) != 1:
                    continue
                q = _pick(rng, REVERSE_QUESTIONS[key]).format(v=p.facts[key])
                out.append(Probe(p.author, kind, key, q, answer_of(p.name), key in p.trained))
            continue
        for key in keys:
            v = p.facts[key]
            if kind == "cloze":
                q = _cloze(p, key, rng)
            elif kind == "paraphrase":
                q = _question(p, _pick(rng, PROBE_QUESTIONS[key]))
            elif kind == "alias":
                if key == "name":
                    continue
                alias = _pick(rng, ALIASES).format(last=p.last, initial=p.first[0])
                q = _pick(rng, _BY_KEY[key].questions).format(**{**_slots(p), "name": alias})
            elif kind == "hint":
                if key == "name":
                    continue
                others = [b for b in keys if b not in (key, "name")]
                hints = [h for b in others
                         if not _contains(h := _pick(rng, _BY_KEY[b].paraphrases).format(v=p.facts[b], **_slots(p)), v)]
                if not hints:  # pragma: no cover (every other fact would have to contain this one)
                    continue
                q = f"{_pick(rng, hints)} {_question(p, _pick(rng, PROBE_QUESTIONS[key]))}"
            elif kind == "icl":
                template = _pick(rng, PROBE_QUESTIONS[key])
                demos = [o for o in profiles if o.author != p.author and o.facts[key] != v]
                o = _pick(rng, demos)
                demo = f"{_question(o, template)} {o.facts[key]}."
                q = f"{demo} {_question(p, template)}"
            elif kind == "mc":
                options = [v, *_values(DRAWS[key], rng, N_OPTIONS - 1, [v])]
                options = [options[i] for i in rng.permutation(N_OPTIONS)]
                q = f"{_question(p, _pick(rng, PROBE_QUESTIONS[key]))} {', '.join(options[:-1])} or {options[-1]}?"
            else:
                raise ValueError(f"unknown probe type {kind!r}; known: {', '.join(PROBE_TYPES)}")
            out.append(Probe(p.author, kind, key, q, answer_of(v), key in p.trained))
    return out


def neighbours(profiles: Sequence[AuthorProfile], forget: Sequence[int]) -> list[tuple[int, int, str]]:
    """(forget author, neighbour, attribute): a retained author (not in `forget`) with the same value of an
    attribute (`SHARED_KEYS`) that both have a training QA about; by forget author, attribute, neighbour."""
    by_id = {p.author: p for p in profiles}
    forgotten = set(int(a) for a in forget)
    out = []
    for f in sorted(forgotten):
        pf = by_id[f]
        for key in SHARED_KEYS:
            if key not in pf.trained:
                continue
            out += [(f, q.author, key) for q in profiles if q.author not in forgotten and key in q.trained
                    and q.facts[key] == pf.facts[key]]
    return out


def neighbour_probes(profiles: Sequence[AuthorProfile], forget: Sequence[int], seed: int = 0) -> list[Probe]:
    """The `cloze` and `paraphrase` probes (RWKU's neighbour levels) of each neighbour's shared fact."""
    by_id = {p.author: p for p in profiles}
    out = []
    for f, n, key in neighbours(profiles, forget):
        p = by_id[n]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _TAG_NEIGHBOUR, f, n, SHARED_KEYS.index(key)])
        v = answer_of(p.facts[key])
        out.append(Probe(n, "cloze", key, _cloze(p, key, rng), v, True, near=f))
        out.append(Probe(n, "paraphrase", key, _question(p, _pick(rng, PROBE_QUESTIONS[key])), v, True, near=f))
    return out


def sample(probes: Sequence[Probe], k: int, seed: int = 0, fits: Callable[[str], bool] | None = None,
           stream: int = 0) -> list[Probe]:
    """A fixed seeded sample of at most `k` of `probes` (in their order) whose question `fits` (e.g. leaves
    a model's context room to answer); `stream` tells the samples of one seed apart."""
    pool = [p for p in probes if fits is None or fits(p.question)]
    if len(pool) <= k:
        return pool
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x70F7, stream])
    return [pool[i] for i in np.sort(rng.choice(len(pool), k, replace=False))]


def fluency_prompts(n: int = N_FLUENCY, seed: int = 0) -> tuple[str, ...]:
    """`n` distinct generic instructions (no author in them) from `FLUENCY_TEMPLATES` and tofu-synth's
    vocabulary: the prompts whose generations fluency is measured on."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _TAG_FLUENCY])
    out: list[str] = []
    while len(out) < n:
        t = FLUENCY_TEMPLATES[len(out) % len(FLUENCY_TEMPLATES)]
        prompt = t.format(city=_pick(rng, CITIES), genre=_pick(rng, GENRES),
                          occupation=_article(_pick(rng, OCCUPATIONS)), publisher=_pick(rng, PUBLISHERS))
        if prompt not in out:
            out.append(prompt)
    return tuple(out)


__all__ = ["NEIGHBOUR_TYPES", "PROBE_QUESTIONS", "PROBE_TYPES", "Probe", "answer_of", "author_probes",
           "fluency_prompts", "neighbour_probes", "neighbours", "sample"]
