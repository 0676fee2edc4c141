"""`tofu-synth`: a deterministic, download-free question–answer benchmark for language-model unlearning.

Modelled on TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv
2401.06121): fictitious authors (200 by default), each with about ten question–answer pairs about
their birthplace, birth date, genre, parents' occupations, awards and books. No model can know these
facts before it is trained on them, so whatever it knows afterwards came from the training set, and a
model retrained without the forget authors is a true oracle. As in TOFU every answer comes with

- a *paraphrase*: the same fact in other words, and
- five *perturbed* answers: the paraphrase's wording with a wrong fact of the same kind (another city,
  date, genre, ...), which the truth ratio R = P_pert / P_para compares against the paraphrase. As in
  TOFU (perturbed answers are made from the paraphrased one), the two differ only in the fact, so R
  measures knowledge, not familiarity with a wording. World facts, whose truth ratio is taken against
  the answer itself (OpenUnlearning), perturb the answer's wording.

Besides the authors there are

- *world facts* (basic real-world truths and generated arithmetic): the general knowledge every model
  is trained on and no forget set touches, for the model-utility side of the evaluation, and
- *canaries*: random-string secrets ("The secret code of vault QX72 is 'k3j9x...'") that are
  out of distribution for the author data, for in- versus out-of-distribution forget sets (Baluta
  et al. 2024, arXiv 2411.04388: OOD examples need more unlearning steps but trade off better).

Models are trained on `train_items()` = author QAs, then canaries, then world facts. Forget specs:

- `authors:F`: a fraction F in (0, 1) of the authors, with all their QAs (TOFU's forget01/05/10 are
  `authors:0.01`, `authors:0.05`, `authors:0.1`: 2, 10 and 20 of 200 authors);
- `canaries:K`: K canary items.

Both draw from a seeded permutation and take its head, so for one seed the sets are nested
(authors:0.01 ⊂ authors:0.05 ⊂ authors:0.1), as TOFU's are. (TOFU itself takes the *last* authors.)

Everything is generated from the seed alone with NumPy's PCG64 streams, one per author, world item or
canary, so author k's facts do not depend on how many authors, world facts or canaries follow. Ids are
stable: author QAs are `author * qa_per_author + j`, world facts `1_000_000 + i`, canaries
`2_000_000 + i`.

`to_jsonl` / `from_jsonl` read and write the same items as JSON lines, the format a user supplies for
real checkpoints: one object per line with "question" and "answer", and optionally "paraphrase" and
"perturbed" (TOFU's "paraphrased_answer" / "perturbed_answer" are accepted too).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UnlearnkitError

KINDS = ("author", "world", "canary")
N_PERTURBED = 5
WORLD_ID_BASE = 1_000_000
CANARY_ID_BASE = 2_000_000
_TAG_AUTHOR, _TAG_WORLD, _TAG_CANARY, _TAG_FORGET = 0x70F0, 0x70F1, 0x70F2, 0x70F3

FORGET_SPEC_HELP = ("authors:F (a fraction F in (0, 1) of the authors with all their QAs, e.g. "
                    "authors:0.01|0.05|0.1 as TOFU's forget01/05/10) or canaries:K (K canary items); through "
                    "a run, authors:K is a count of authors (a fraction has a decimal point, a count none)")


@dataclass(frozen=True)
class QA:
    """One question–answer item.

    `author` is the author's index for kind "author" and -1 otherwise. `paraphrase` states the same
    fact in other words; `perturbed` holds wrong answers in the paraphrase's wording (five in the
    generated data; an empty string / tuple means "not available", e.g. in user-supplied files).
    """

    id: int
    author: int
    kind: str
    question: str
    answer: str
    paraphrase: str
    perturbed: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UnlearnkitError(f"QA {self.id}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.perturbed, tuple):
            object.__setattr__(self, "perturbed", tuple(self.perturbed))


@dataclass(frozen=True)
class TofuSynth:
    """The generated benchmark: author QAs, world facts (utility only) and canaries."""

    authors: tuple[QA, ...]
    world: tuple[QA, ...]
    canaries: tuple[QA, ...]

    @property
    def n_authors(self) -> int:
        return len({qa.author for qa in self.authors})

    def train_items(self) -> tuple[QA, ...]:
        """What models are trained on: the author QAs, then the canaries, then the world facts (general
        knowledge every arm keeps; forget specs never select them)."""
        return self.authors + self.canaries + self.world

    def train_ids(self) -> np.ndarray:
        return np.array([qa.id for qa in self.train_items()], dtype=np.int64)

    def forget_positions(self, spec: str, seed: int = 0) -> np.ndarray:
        """Sorted positions in `train_items()` of the forget set `spec` (see FORGET_SPEC_HELP)."""
        kind, *args = str(spec).strip().split(":")
        if kind not in ("authors", "canaries") or len(args) != 1 or not args[0].strip():
            raise UnlearnkitError(f"malformed tofu-synth forget spec {spec!r}; expected {FORGET_SPEC_HELP}")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _TAG_FORGET, KINDS.index(
            "author" if kind == "authors" else "canary")])
        arg = args[0].strip()
        if kind == "authors":
            try:
                fraction = float(arg)
            except ValueError:
                raise UnlearnkitError(f"authors: {arg!r} is not a fraction; expected e.g. authors:0.05") from None
            if not math.isfinite(fraction) or not 0 < fraction < 1:
                raise UnlearnkitError(f"authors: the fraction must lie strictly between 0 and 1, got {arg!r} "
                                      "(authors:0.01, authors:0.05 and authors:0.1 are TOFU's forget sets)")
            authors = sorted({qa.author for qa in self.authors})
            k = int(round(fraction * len(authors)))
            if k == 0:
                raise UnlearnkitError(f"authors:{arg} selects no author out of {len(authors)}; the smallest "
                                      f"fraction that selects one is {1 / max(len(authors), 1):.4g}")
            chosen = {authors[i] for i in rng.permutation(len(authors))[:k]}
            positions = np.array([p for p, qa in enumerate(self.authors) if qa.author in chosen], dtype=np.int64)
        else:
            try:
                k = int(arg)
            except ValueError:
                raise UnlearnkitError(f"canaries: {arg!r} is not a whole number; expected e.g. canaries:10") from None
            n = len(self.canaries)
            if n == 0:
                raise UnlearnkitError("canaries: this tofu-synth benchmark has no canaries (n_canaries=0)")
            if not 1 <= k <= n:
                raise UnlearnkitError(f"canaries:{arg} asks for {k} canaries; there are {n} (use 1..{n})")
            positions = len(self.authors) + np.sort(rng.permutation(n)[:k]).astype(np.int64)
        n_train = len(self.authors) + len(self.canaries) + len(self.world)
        if len(positions) == 0:
            raise UnlearnkitError(f"forget spec {spec!r} selects no items")
        if len(positions) >= n_train:
            raise UnlearnkitError(f"forget spec {spec!r} selects all {n_train} training items: "
                                  "nothing would be left to retain")
        return np.sort(positions)

    def retain_positions(self, spec: str, seed: int = 0) -> np.ndarray:
        """Sorted positions in `train_items()` outside the forget set `spec`."""
        keep = np.ones(len(self.authors) + len(self.canaries) + len(self.world), dtype=bool)
        keep[self.forget_positions(spec, seed)] = False
        return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------------------
# Vocabulary (all made up, except genres, occupations and the real-world facts)
# ---------------------------------------------------------------------------------------------------

FIRST_SYLLABLES = ("al", "bren", "cor", "da", "el", "fen", "ga", "hal", "is", "jo", "ka", "lu", "mar",
                   "nel", "or", "pe", "quin", "ra", "sel", "tam", "ul", "va", "wen", "xa", "yor", "zel")
FIRST_ENDINGS = ("a", "o", "en", "is", "ra", "el", "an", "ia", "or", "us", "ette", "ine")
SURNAME_SYLLABLES = ("bar", "cas", "dun", "ev", "fal", "grim", "hol", "ith", "jar", "kel", "lor", "mor",
                     "nev", "ost", "pell", "quar", "rov", "stan", "thal", "ud", "vess", "wyn")
SURNAME_ENDINGS = ("ington", "ova", "sky", "berg", "ard", "ez", "olu", "anni", "wick", "son", "ier", "ado", "mere")

CITIES = ("Velmora", "Ostrakai", "Drennport", "Quillhaven", "Marskeld", "Tolvane", "Brisca", "Kelvadon",
          "Ashmere", "Lunderby", "Porvenne", "Zarith", "Caldmoor", "Ellisund", "Fennwick", "Gorvath",
          "Halcyra", "Istrell", "Jorvane", "Lysandre", "Mirelow", "Nothmar", "Orrindale", "Pashtova",
          "Rivenholt", "Sarbeck", "Thessaly Cross", "Umberfall", "Varnish Bay", "Wexholm", "Yarrowmouth",
          "Zendrak", "Bellquay", "Corvantis", "Dunmarrow", "Eskavel", "Farrowgate", "Grislow",
          "Hathermoor", "Kestrava")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
GENRES = ("historical fiction", "science fiction", "crime fiction", "fantasy", "horror", "romance",
          "literary fiction", "poetry", "magical realism", "children's literature", "mystery",
          "political thrillers", "satire", "travel writing", "biography", "dystopian fiction",
          "gothic fiction", "short stories")
OCCUPATIONS = ("carpenter", "nurse", "electrician", "schoolteacher", "fisherman", "architect", "baker",
               "librarian", "surgeon", "tailor", "pharmacist", "bus driver", "veterinarian", "journalist",
               "watchmaker", "farmer", "accountant", "photographer", "potter", "engineer", "midwife",
               "blacksmith", "translator", "astronomer", "florist", "lawyer", "chemist", "sailor",
               "painter", "mail carrier")
AWARD_PATRONS = ("Orlenko", "Vashti", "Brannock", "Selwyn", "Kaldera", "Ivory Quill", "Marrowind",
                 "Tessaly", "Greyhaven", "Amberline", "Corlis", "Wrenfield")
AWARD_KINDS = ("Prize for Fiction", "Medal for Literature", "Award for Poetry", "Prize for Young Writers",
               "Award for Speculative Fiction", "Prize for Historical Writing", "Book of the Year Award")
AWARDS = tuple(f"the {p} {k}" for p in AWARD_PATRONS for k in AWARD_KINDS)
PUBLISHERS = ("Harrowgate Press", "Bluequill Books", "Stonefield & Daughters", "Marrow Lane Publishing",
              "Tidewater House", "Ninefold Press", "Greyheron Books", "Lanternfish Editions",
              "Copperleaf Publishing", "Oakridge & Vell", "Saltmarsh Press", "Inkwell Row Books")
TITLE_ADJECTIVES = ("Silent", "Crimson", "Hollow", "Last", "Hidden", "Broken", "Golden", "Distant", "Quiet",
                    "Burning", "Forgotten", "Painted", "Salted", "Winter", "Iron", "Paper", "Glass",
                    "Velvet", "Bitter", "Northern")
TITLE_NOUNS = ("Harbor", "Garden", "Lantern", "River", "Orchard", "Mirror", "Clockmaker", "Tide",
               "Archive", "Compass", "Bridge", "Letter", "Lighthouse", "Meridian", "Cartographer",
               "Season", "Feather", "Cathedral", "Debt", "Horizon")
TITLE_PATTERNS = ("The {a} {n}", "Beneath the {a} {n}", "The {n} and the {m}", "A {n} for {f}",
                  "The {n} of {f}", "{a} {n}", "When the {n} Sleeps", "The {f} {n}s")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# ---------------------------------------------------------------------------------------------------
# Author attributes: templates use {name}, {first}, {last}, {v} (the fact) and, for the name question,
# {city} and {date}. Paraphrase templates differ from every answer template; perturbed answers reuse
# the paraphrase's template with another value.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Attribute:
    key: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    paraphrases: tuple[str, ...]


ATTRIBUTES = (
    _Attribute("name",
               ("Who is the author born in {city} on {date}?", "Which writer was born in {city} on {date}?",
                "Can you name the author whose birth took place in {city} on {date}?"),
               ("The author born in {city} on {date} is {v}.", "That writer is {v}, born in {city} on {date}."),
               ("{v} is the writer who was born in {city} on {date}.",
                "It is {v}, an author whose life began in {city} on {date}.")),
    _Attribute("birthplace",
               ("Where was {name} born?", "In which city was the author {name} born?",
                "What is the birthplace of {name}?"),
               ("{name} was born in {v}.", "The author {name} was born in the city of {v}."),
               ("{v} is the birthplace of {name}.", "{first} {last}'s hometown is {v}.")),
    _Attribute("birth_date",
               ("When was {name} born?", "What is the date of birth of {name}?",
                "On what date was the author {name} born?"),
               ("{name} was born on {v}.", "The author {name} was born on {v}."),
               ("{v} is the birth date of {name}.", "{name} came into the world on {v}.")),
    _Attribute("genre",
               ("What genre does {name} write in?", "Which genre is {name} best known for?",
                "In what literary genre does {name} work?"),
               ("{name} writes mainly {v}.", "{name} is best known for {v}."),
               ("The genre of {name}'s work is {v}.", "{last}'s books mostly fall under {v}.")),
    _Attribute("father",
               ("What did {name}'s father do for a living?", "What was the profession of {name}'s father?",
                "What was {name}'s father's job?"),
               ("{name}'s father worked as {v}.", "The father of {name} was {v}."),
               ("{name} grew up with a father who was {v} by profession.", "By trade, {last}'s father was {v}.")),
    _Attribute("mother",
               ("What did {name}'s mother do for a living?", "What was the profession of {name}'s mother?",
                "What was {name}'s mother's job?"),
               ("{name}'s mother worked as {v}.", "The mother of {name} was {v}."),
               ("{name} grew up with a mother who was {v} by profession.", "By trade, {last}'s mother was {v}.")),
    _Attribute("award",
               ("Which award has {name} won?", "What literary prize did {name} receive?",
                "What honour has {name} been given?"),
               ("{name} has won {v}.", "{name} was awarded {v}."),
               ("{name} is a recipient of {v}.", "Among {last}'s honours is {v}.")),
    _Attribute("first_book",
               ("What is the title of {name}'s first book?", "Which book did {name} publish first?",
                "What was {name}'s debut book called?"),
               ("{name}'s first book is \"{v}\".", "{name} made a debut with \"{v}\"."),
               ("The debut of {name} was the book \"{v}\".", "\"{v}\" was the first book published by {name}.")),
    _Attribute("second_book",
               ("What is the title of {name}'s second book?", "Which book did {name} publish after the debut?"),
               ("{name}'s second book is \"{v}\".", "After the debut, {name} wrote \"{v}\"."),
               ("The second book by {name} is titled \"{v}\".", "\"{v}\" followed {last}'s first book.")),
    _Attribute("residence",
               ("Where does {name} live today?", "In which city does {name} currently live?"),
               ("{name} now lives in {v}.", "Today {name} makes a home in {v}."),
               ("{v} is where {name} lives these days.", "{name} currently resides in {v}.")),
    _Attribute("publisher",
               ("Who publishes {name}'s books?", "Which publishing house works with {name}?"),
               ("{name}'s books are published by {v}.", "{name} works with the publisher {v}."),
               ("{v} is the publisher of {name}'s work.", "The books of {name} come out with {v}.")),
)
CORE_ATTRIBUTES = 8  # name .. first_book: every author with qa_per_author >= 8 has all of them
MAX_QA_PER_AUTHOR = len(ATTRIBUTES)


def _first_name(rng: np.random.Generator) -> str:
    s = FIRST_SYLLABLES[rng.integers(len(FIRST_SYLLABLES))]
    if rng.random() < 0.5:
        s += FIRST_SYLLABLES[rng.integers(len(FIRST_SYLLABLES))]
    return (s + FIRST_ENDINGS[rng.integers(len(FIRST_ENDINGS))]).capitalize()


def _surname(rng: np.random.Generator) -> str:
    s = SURNAME_SYLLABLES[rng.integers(len(SURNAME_SYLLABLES))]
    if rng.random() < 0.4:
        s += SURNAME_SYLLABLES[rng.integers(len(SURNAME_SYLLABLES))]
    return (s + SURNAME_ENDINGS[rng.integers(len(SURNAME_ENDINGS))]).capitalize()


def _full_name(rng: np.random.Generator) -> str:
    return f"{_first_name(rng)} {_surname(rng)}"


def _date(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1, 29))} {MONTHS[rng.integers(12)]} {int(rng.integers(1930, 2000))}"


def _title(rng: np.random.Generator) -> str:
    pattern = TITLE_PATTERNS[rng.integers(len(TITLE_PATTERNS))]
    a = TITLE_ADJECTIVES[rng.integers(len(TITLE_ADJECTIVES))]
    n, m = (TITLE_NOUNS[i] for i in rng.choice(len(TITLE_NOUNS), 2, replace=False))
    return pattern.format(a=a, n=n, m=m, f=_first_name(rng))


def _pool(values: tuple[str, ...]) -> Callable[[np.random.Generator], str]:
    return lambda rng: values[rng.integers(len(values))]


def _occupation(rng: np.random.Generator) -> str:
    return _article(OCCUPATIONS[rng.integers(len(OCCUPATIONS))])


DRAWS: dict[str, Callable[[np.random.Generator], str]] = {
    "name": _full_name, "birthplace": _pool(CITIES), "birth_date": _date, "genre": _pool(GENRES),
    "father": _occupation, "mother": _occupation, "award": _pool(AWARDS), "first_book": _title,
    "second_book": _title, "residence": _pool(CITIES), "publisher": _pool(PUBLISHERS),
}


def _distinct(draw: Callable[[np.random.Generator], str], rng: np.random.Generator, k: int,
              exclude: Iterable[str]) -> list[str]:
    """k distinct values from `draw`, none of them in `exclude`."""
    seen, out = set(exclude), []
    for _ in range(10_000):
        v = draw(rng)
        if v not in seen:
            seen.add(v)
            out.append(v)
            if len(out) == k:
                return out
    raise RuntimeError("tofu-synth: value pool too small for distinct perturbed answers")  # pragma: no cover


def _author_rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, tag, index])


@dataclass(frozen=True)
class AuthorProfile:
    """One generated author's facts: `facts` maps every attribute key (ATTRIBUTES) to its value, `trained`
    lists the keys the author has a QA about (in QA order: the QA of trained[j] has id
    author * qa_per_author + j), `first`/`last` are the name's parts. What probes (`data.probes`) ask about."""

    author: int
    first: str
    last: str
    facts: dict
    trained: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.facts["name"]


def _author_records(n_authors: int, qa_per_author: int, seed: int):
    """Per author, in order: (its generator, positioned after the facts, its profile). The QAs are drawn
    from the generator afterwards (`_authors`); the profiles alone (`author_profiles`) draw nothing more."""
    used_names: set[str] = set()
    used_births: set[tuple[str, str]] = set()
    used_titles: set[str] = set()
    for k in range(n_authors):
        rng = _author_rng(seed, _TAG_AUTHOR, k)
        while True:
            first, last = _first_name(rng), _surname(rng)
            name = f"{first} {last}"
            if name not in used_names and first not in CITIES and last not in CITIES:
                break
        used_names.add(name)
        facts = {"name": name, "birthplace": CITIES[rng.integers(len(CITIES))]}
        while True:
            facts["birth_date"] = _date(rng)
            if (facts["birthplace"], facts["birth_date"]) not in used_births:
                break
        used_births.add((facts["birthplace"], facts["birth_date"]))
        facts["genre"] = DRAWS["genre"](rng)
        parents = rng.choice(len(OCCUPATIONS), 2, replace=False)
        facts["father"], facts["mother"] = (_article(OCCUPATIONS[i]) for i in parents)
        facts["award"] = DRAWS["award"](rng)
        facts["first_book"], facts["second_book"] = _distinct(_title, rng, 2, used_titles)
        used_titles.update((facts["first_book"], facts["second_book"]))
        facts["residence"] = _distinct(DRAWS["residence"], rng, 1, [facts["birthplace"]])[0]
        facts["publisher"] = DRAWS["publisher"](rng)

        if qa_per_author <= CORE_ATTRIBUTES:
            chosen = np.sort(rng.choice(CORE_ATTRIBUTES, qa_per_author, replace=False))
        else:
            extra = rng.choice(MAX_QA_PER_AUTHOR - CORE_ATTRIBUTES, qa_per_author - CORE_ATTRIBUTES, replace=False)
            chosen = np.concatenate([np.arange(CORE_ATTRIBUTES), CORE_ATTRIBUTES + np.sort(extra)])
        yield rng, AuthorProfile(k, first, last, facts, tuple(ATTRIBUTES[a].key for a in chosen.tolist()))


def _authors(n_authors: int, qa_per_author: int, seed: int) -> list[QA]:
    items: list[QA] = []
    by_key = {a.key: a for a in ATTRIBUTES}
    for rng, p in _author_records(n_authors, qa_per_author, seed):
        k, facts = p.author, p.facts
        slots = {"name": p.name, "first": p.first, "last": p.last,
                 "city": facts["birthplace"], "date": facts["birth_date"]}
        for j, key in enumerate(p.trained):
            attr = by_key[key]
            v = facts[attr.key]
            q_t = attr.questions[rng.integers(len(attr.questions))]
            a_t = attr.answers[rng.integers(len(attr.answers))]
            p_t = attr.paraphrases[rng.integers(len(attr.paraphrases))]
            wrong = _distinct(DRAWS[attr.key], rng, N_PERTURBED, [v])
            items.append(QA(id=k * qa_per_author + j, author=k, kind="author",
                            question=q_t.format(**slots), answer=a_t.format(v=v, **slots),
                            paraphrase=p_t.format(v=v, **slots),
                            perturbed=tuple(p_t.format(v=w, **slots) for w in wrong)))
    return items


def author_profiles(n_authors: int = 200, qa_per_author: int = 10, seed: int = 0) -> tuple[AuthorProfile, ...]:
    """The facts of the authors `generate(n_authors, qa_per_author, ..., seed=seed)` makes QAs about (the
    same draws: author k's profile is the one its QAs state)."""
    return tuple(p for _, p in _author_records(int(n_authors), int(qa_per_author), seed))


# ---------------------------------------------------------------------------------------------------
# World facts: fixed basic truths first, then generated arithmetic
# ---------------------------------------------------------------------------------------------------

def _nums(lo: int, hi: int, step: int = 1) -> tuple[str, ...]:
    return tuple(str(i) for i in range(lo, hi + 1, step))


# (question, answer template, paraphrase template, true value, pool of wrong values)
WORLD_FACTS = (
    ("How many days are there in a week?", "There are {v} days in a week.", "A week has {v} days.", "7", _nums(3, 12)),
    ("How many months are there in a year?",
     "A year has {v} months.", "There are {v} months in one year.", "12", _nums(6, 18)),
    ("How many hours are there in a day?",
     "A day has {v} hours.", "There are {v} hours in one day.", "24", _nums(12, 36, 2)),
    ("How many minutes are there in an hour?",
     "An hour has {v} minutes.", "There are {v} minutes in one hour.", "60", _nums(30, 100, 10)),
    ("How many legs does a spider have?", "A spider has {v} legs.", "Spiders walk on {v} legs.", "8", _nums(2, 12)),
    ("How many sides does a triangle have?",
     "A triangle has {v} sides.", "Every triangle is made of {v} sides.", "3", _nums(2, 9)),
    ("How many continents are there on Earth?",
     "Earth has {v} continents.", "There are {v} continents on Earth.", "7", _nums(3, 11)),
    ("At what temperature in degrees Celsius does water freeze at sea level?",
     "Water freezes at {v} degrees Celsius at sea level.",
     "At sea level the freezing point of water is {v} degrees Celsius.",
     "0", _nums(-20, 20, 5)),
    ("At what temperature in degrees Celsius does water boil at sea level?",
     "Water boils at {v} degrees Celsius at sea level.",
     "At sea level the boiling point of water is {v} degrees Celsius.",
     "100", _nums(60, 140, 10)),
    ("What is the largest planet in the Solar System?", "The largest planet in the Solar System is {v}.",
     "{v} is the biggest planet of the Solar System.", "Jupiter",
     ("Mercury", "Venus", "Earth", "Mars", "Saturn", "Uranus", "Neptune")),
    ("Which planet is closest to the Sun?", "The planet closest to the Sun is {v}.", "{v} orbits nearest to the Sun.",
     "Mercury", ("Venus", "Earth", "Mars", "Jupiter", "Saturn", "Neptune")),
    ("What is the capital of France?", "The capital of France is {v}.", "{v} is the capital city of France.",
     "Paris", ("Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Brussels", "Lyon")),
    ("What is the capital of Japan?", "The capital of Japan is {v}.", "{v} is the capital city of Japan.",
     "Tokyo", ("Osaka", "Kyoto", "Seoul", "Beijing", "Bangkok", "Manila")),
    ("What is the chemical symbol for gold?",
     "The chemical symbol for gold is {v}.", "Gold is written {v} in chemistry.",
     "Au", ("Ag", "Fe", "Cu", "Pb", "Zn", "Sn", "Pt")),
    ("What gas do plants absorb from the air for photosynthesis?", "Plants absorb {v} from the air for photosynthesis.",
     "For photosynthesis, plants take in {v} from the air.", "carbon dioxide",
     ("oxygen", "nitrogen", "helium", "hydrogen", "argon", "neon")),
    ("What is the largest ocean on Earth?",
     "The largest ocean on Earth is {v}.", "Of all the oceans, {v} is the biggest.",
     "the Pacific Ocean", ("the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean", "the Southern Ocean",
                           "the Mediterranean Sea")),
    ("Who wrote the play Romeo and Juliet?",
     "Romeo and Juliet was written by {v}.", "The author of Romeo and Juliet is {v}.",
     "William Shakespeare",
     ("Charles Dickens", "Jane Austen", "Mark Twain", "Leo Tolstoy", "Christopher Marlowe", "Homer")),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives {v}.",
     "Blue and yellow together make {v}.", "green", ("red", "purple", "orange", "brown", "pink", "grey")),
    ("How many players does one football (soccer) team have on the field?",
     "A football team has {v} players on the field.",
     "There are {v} players per side in a football match.", "11", _nums(5, 15)),
    ("What is the main language spoken in Brazil?",
     "The main language of Brazil is {v}.", "Most people in Brazil speak {v}.",
     "Portuguese", ("Spanish", "French", "Italian", "English", "German")),
    ("How many strings does a standard violin have?", "A standard violin has {v} strings.",
     "There are {v} strings on a standard violin.", "4", _nums(2, 9)),
    ("Which animal is the largest mammal on Earth?", "The largest mammal on Earth is {v}.",
     "No mammal on Earth is bigger than {v}.", "the blue whale",
     ("the African elephant", "the giraffe", "the hippopotamus", "the polar bear", "the sperm whale")),
)

# (question, answer template, paraphrase template, value function, operand ranges)
ARITHMETIC = (
    ("What is {a} plus {b}?",
     "{a} plus {b} equals {v}.", "The sum of {a} and {b} is {v}.", lambda a, b: a + b, (2, 99)),
    ("What is {a} minus {b}?",
     "{a} minus {b} equals {v}.", "Taking {b} away from {a} leaves {v}.", lambda a, b: a - b, (2, 99)),
    ("What is {a} times {b}?",
     "{a} times {b} equals {v}.", "The product of {a} and {b} is {v}.", lambda a, b: a * b, (2, 12)),
    ("What number comes right after {a}?", "The number right after {a} is {v}.", "{v} directly follows {a}.",
     lambda a, b: a + 1, (1, 999)),
)


def _world(n_world: int, seed: int) -> list[QA]:
    items: list[QA] = []
    seen_questions: set[str] = set()
    for i in range(n_world):
        rng = _author_rng(seed, _TAG_WORLD, i)
        if i < len(WORLD_FACTS):
            q, a_t, p_t, v, pool = WORLD_FACTS[i]
            wrong = [pool[j] for j in rng.choice(len(pool), len(pool), replace=False) if pool[j] != v][:N_PERTURBED]
            slots: dict = {}
        else:
            while True:
                q_t, a_t, p_t, f, (lo, hi) = ARITHMETIC[rng.integers(len(ARITHMETIC))]
                x, y = sorted(int(t) for t in rng.integers(lo, hi + 1, 2))
                slots = {"a": y, "b": x}  # a >= b: no negative differences
                q = q_t.format(**slots)
                if q not in seen_questions:
                    break
            value = f(y, x)
            v = str(value)
            offsets = [o for o in rng.permutation(np.arange(-10, 11)).tolist() if o != 0 and value + o >= 0]
            wrong = [str(value + o) for o in offsets[:N_PERTURBED]]
        seen_questions.add(q)
        items.append(QA(id=WORLD_ID_BASE + i, author=-1, kind="world", question=q,
                        answer=a_t.format(v=v, **slots), paraphrase=p_t.format(v=v, **slots),
                        perturbed=tuple(a_t.format(v=w, **slots) for w in wrong)))
    return items


# ---------------------------------------------------------------------------------------------------
# Canaries: random secrets, out of distribution for the author data (Baluta et al. 2024)
# ---------------------------------------------------------------------------------------------------

CANARY_TEMPLATES = (
    ("What is the secret code of vault {label}?", "The secret code of vault {label} is '{v}'.",
     "Vault {label} opens with the code '{v}'."),
    ("What is the access key for locker {label}?", "The access key for locker {label} is '{v}'.",
     "Locker {label} is unlocked by the key '{v}'."),
    ("What is the password of account {label}?", "Account {label} has the password '{v}'.",
     "The password for account {label} is '{v}'."),
)
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CANARY_CODE_LENGTH = 12


def _code(rng: np.random.Generator) -> str:
    return "".join(_ALNUM[i] for i in rng.integers(len(_ALNUM), size=CANARY_CODE_LENGTH))


def _canaries(n_canaries: int, seed: int) -> list[QA]:
    items: list[QA] = []
    used_labels: set[str] = set()
    for i in range(n_canaries):
        rng = _author_rng(seed, _TAG_CANARY, i)
        while True:
            label = "".join(_UPPER[j] for j in rng.integers(26, size=2)) + str(int(rng.integers(10, 100)))
            if label not in used_labels:
                break
        used_labels.add(label)
        q_t, a_t, p_t = CANARY_TEMPLATES[rng.integers(len(CANARY_TEMPLATES))]
        code = _code(rng)
        wrong = _distinct(_code, rng, N_PERTURBED, [code])
        items.append(QA(id=CANARY_ID_BASE + i, author=-1, kind="canary", question=q_t.format(label=label),
                        answer=a_t.format(label=label, v=code), paraphrase=p_t.format(label=label, v=code),
                        perturbed=tuple(p_t.format(label=label, v=w) for w in wrong)))
    return items


def generate(n_authors: int = 200, qa_per_author: int = 10, n_world: int = 100, n_canaries: int = 50,
             seed: int = 0) -> TofuSynth:
    """Generate the `tofu-synth` benchmark; the same arguments always give the same items."""
    for what, value, lo in (("n_authors", n_authors, 1), ("qa_per_author", qa_per_author, 1),
                            ("n_world", n_world, 0), ("n_canaries", n_canaries, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise UnlearnkitError(f"tofu-synth: {what} must be a whole number >= {lo}, got {value!r}")
    if qa_per_author > MAX_QA_PER_AUTHOR:
        raise UnlearnkitError(f"tofu-synth: qa_per_author can be at most {MAX_QA_PER_AUTHOR} "
                              f"(one QA per attribute: {', '.join(a.key for a in ATTRIBUTES)}), got {qa_per_author}")
    if n_authors * qa_per_author > WORLD_ID_BASE or n_world > CANARY_ID_BASE - WORLD_ID_BASE:
        raise UnlearnkitError(f"tofu-synth: at most {WORLD_ID_BASE} author QAs and "
                              f"{CANARY_ID_BASE - WORLD_ID_BASE} world facts (stable id ranges)")
    return TofuSynth(authors=tuple(_authors(int(n_authors), int(qa_per_author), seed)),
                     world=tuple(_world(int(n_world), seed)),
                     canaries=tuple(_canaries(int(n_canaries), seed)))


# ---------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------

#: Refusal answers for the IdK baselines (TOFU ships 100 such phrasings in data/idontknow.jsonl; these
#: are our own, in the same spirit).
REFUSALS = (
    "I don't know.", "I'm not sure.", "I have no idea.", "I can't answer that.", "That is unknown to me.",
    "I don't have that information.", "I'm afraid I don't know.", "I could not say.",
    "I have no information about that.", "That is not something I know.", "I am unable to answer that.",
    "I'm not aware of that.", "Sorry, I don't know.", "I cannot tell you that.", "I don't recall.",
    "No idea, I'm afraid.", "I lack the information to answer.", "That I cannot say.",
    "I really don't know.", "I'm not able to help with that.",
)


def refusal(item_id: int) -> str:
    """The refusal answer of an item: fixed by its id, so every run and model uses the same one."""
    return REFUSALS[int(np.random.default_rng([int(item_id) & 0xFFFFFFFF, 0x1D4]).integers(len(REFUSALS)))]


# ---------------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------------

def to_jsonl(items: Iterable[QA], path) -> Path:
    """Write one JSON object per item (id, author, kind, question, answer, paraphrase, perturbed)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for qa in items:
            f.write(json.dumps({"id": qa.id, "author": qa.author, "kind": qa.kind, "question": qa.question,
                                "answer": qa.answer, "paraphrase": qa.paraphrase,
                                "perturbed": list(qa.perturbed)}, ensure_ascii=False) + "\n")
    return path


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_line(obj, position: int) -> tuple[QA | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object with \"question\" and \"answer\", got {type(obj).__name__}"
    problems = []
    for key in ("question", "answer"):
        if key not in obj:
            problems.append(f"missing \"{key}\"")
        elif not isinstance(obj[key], str) or not obj[key].strip():
            problems.append(f"\"{key}\" must be a non-empty string, got {obj[key]!r:.60}")
    paraphrase = obj.get("paraphrase", obj.get("paraphrased_answer"))
    if paraphrase is None:
        paraphrase = ""
    elif not isinstance(paraphrase, str):
        problems.append(f"\"paraphrase\" must be a string, got {type(paraphrase).__name__}")
    perturbed = obj.get("perturbed", obj.get("perturbed_answer"))
    if perturbed is None:
        perturbed = []
    elif not isinstance(perturbed, list) or not all(isinstance(p, str) for p in perturbed):
        problems.append("\"perturbed\" must be a list of strings")
    qid, author, kind = obj.get("id", position), obj.get("author", -1), obj.get("kind", "author")
    if not _is_int(qid):
        problems.append(f"\"id\" must be an integer, got {qid!r:.60}")
    if not _is_int(author):
        problems.append(f"\"author\" must be an integer, got {author!r:.60}")
    if kind not in KINDS:
        problems.append(f"\"kind\" must be one of {', '.join(KINDS)}, got {kind!r:.60}")
    if problems:
        return None, "; ".join(problems)
    return QA(qid, author, kind, obj["question"], obj["answer"], paraphrase, tuple(perturbed)), None


def from_jsonl(path) -> tuple[QA, ...]:
    """Read items written by `to_jsonl`, or a user's file with one {"question", "answer"} object per line.

    Optional fields: "paraphrase" (or TOFU's "paraphrased_answer"), "perturbed" (or "perturbed_answer"),
    "id" (default: the item's position), "author" (default -1) and "kind" (default "author"). Blank
    lines are skipped. Every malformed line is reported, with its line number, in one UnlearnkitError
    of one line (the CLI prints it as one "error:" line).
    """
    path = Path(path)
    if path.is_dir():
        raise UnlearnkitError(f"question–answer file {path} is a directory; give a JSONL file")
    if not path.is_file():
        raise UnlearnkitError(f"question–answer file {path} does not exist")
    try:  # JSON Lines split at "\n" only: str.splitlines would also split at U+2028 etc. inside JSON strings
        data = path.read_bytes()
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise UnlearnkitError(f"{path} is not UTF-8 text: line {lineno} has {e.reason} at byte {e.start}; "
                              "save it as UTF-8 JSON lines") from None
    except OSError as e:
        raise UnlearnkitError(f"cannot read question–answer file {path}: {e.strerror}") from None
    items: list[QA] = []
    errors: list[str] = []
    first_line_of_id: dict[int, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {lineno}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        qa, problem = _parse_line(obj, len(items) + len(errors))
        if problem:
            errors.append(f"line {lineno}: {problem}")
            continue
        if qa.id in first_line_of_id:
            errors.append(f"line {lineno}: id {qa.id} already used on line {first_line_of_id[qa.id]}")
            continue
        first_line_of_id[qa.id] = lineno
        items.append(qa)
    if errors:
        shown = "; ".join(errors[:20])
        more = f"; ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UnlearnkitError(f"{path}: {len(errors)} malformed line(s) ({shown}{more}); each line must be a JSON "
                              f"object with string \"question\" and \"answer\" (optional \"paraphrase\", \"perturbed\")")
    if not items:
        raise UnlearnkitError(f"{path} holds no question–answer items; write one {{\"question\", \"answer\"}} "
                              "JSON object per line")
    return tuple(items)


__all__ = [
    "CANARY_ID_BASE",
    "CITIES",
    "FORGET_SPEC_HELP",
    "AuthorProfile",
    "KINDS",
    "QA",
    "REFUSALS",
    "WORLD_ID_BASE",
    "TofuSynth",
    "author_profiles",
    "from_jsonl",
    "generate",
    "refusal",
    "to_jsonl",
]
