"""Tests for the tofu-synth benchmark: generation, forget specs and JSON lines."""
from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pytest

from unlearnkit.data.tofu_synth import (
    CANARY_ID_BASE,
    CITIES,
    QA,
    WORLD_ID_BASE,
    TofuSynth,
    from_jsonl,
    generate,
    to_jsonl,
)
from unlearnkit.errors import UnlearnkitError

DATE = re.compile(r"\b\d{1,2} [A-Z][a-z]+ \d{4}\b")
CITY = re.compile(r"\b(" + "|".join(re.escape(c) for c in sorted(CITIES, key=len, reverse=True)) + r")\b")
CODE = re.compile(r"'([a-z0-9]+)'")


@pytest.fixture(scope="module")
def bench() -> TofuSynth:
    return generate()


def all_items(b: TofuSynth) -> tuple[QA, ...]:
    return b.authors + b.world + b.canaries


def changed_region(answer: str, other: str) -> str:
    """The part of `answer` that differs from `other` (common prefix and suffix removed)."""
    p = len(os.path.commonprefix([answer, other]))
    s = len(os.path.commonprefix([answer[p:][::-1], other[p:][::-1]]))
    return answer[p:len(answer) - s]


# ---------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------

def test_deterministic_and_seeded(bench):
    assert generate() == bench
    other = generate(seed=1)
    assert other != bench
    assert [q.id for q in all_items(other)] == [q.id for q in all_items(bench)]  # ids do not depend on the seed
    assert sum(a.answer != b.answer for a, b in zip(other.authors, bench.authors)) > 1000


def test_ids_and_authors_stable_across_sizes(bench):
    small = generate(n_authors=50, n_world=10, n_canaries=5)
    assert small.authors == bench.authors[:500]
    assert small.world == bench.world[:10]
    assert small.canaries == bench.canaries[:5]


def test_counts_and_ids(bench):
    assert len(bench.authors) == 200 * 10 and bench.n_authors == 200
    assert Counter(q.author for q in bench.authors) == {a: 10 for a in range(200)}
    assert len(bench.world) == 100 and len(bench.canaries) == 50
    ids = [q.id for q in all_items(bench)]
    assert len(set(ids)) == len(ids)
    assert [q.id for q in bench.authors] == list(range(2000))
    assert [q.id for q in bench.world] == list(range(WORLD_ID_BASE, WORLD_ID_BASE + 100))
    assert [q.id for q in bench.canaries] == list(range(CANARY_ID_BASE, CANARY_ID_BASE + 50))
    assert {q.kind for q in bench.authors} == {"author"}
    assert {(q.kind, q.author) for q in bench.world} == {("world", -1)}
    assert {(q.kind, q.author) for q in bench.canaries} == {("canary", -1)}
    assert bench.train_items() == bench.authors + bench.canaries + bench.world
    assert len(set(q.question for q in all_items(bench))) == len(ids)  # every question is answerable


def test_names_unique_and_every_author_has_core_facts(bench):
    by_author: dict[int, list[QA]] = {}
    for q in bench.authors:
        by_author.setdefault(q.author, []).append(q)
    for qas in by_author.values():
        text = " ".join(q.question for q in qas)
        assert re.search(r"(born|took place) in .+ on ", text) and "father" in text and "mother" in text
    names = {by_author[a][1].answer.split(" was born")[0].replace("The author ", "") for a in by_author}
    assert len(names) == 200


def test_small_qa_per_author():
    b = generate(n_authors=7, qa_per_author=4, n_world=3, n_canaries=2, seed=3)
    assert len(b.authors) == 28 and [q.id for q in b.authors] == list(range(28))
    assert Counter(q.author for q in b.authors) == {a: 4 for a in range(7)}


@pytest.mark.parametrize("kwargs", [{"n_authors": 0}, {"qa_per_author": 0}, {"qa_per_author": 12},
                                    {"n_world": -1}, {"n_canaries": 1.5}])
def test_generate_rejects_bad_arguments(kwargs):
    with pytest.raises(UnlearnkitError):
        generate(**kwargs)


def test_perturbed_and_paraphrases(bench):
    for q in all_items(bench):
        assert len(q.perturbed) == 5, q
        assert len(set(q.perturbed)) == 5, q
        assert q.answer not in q.perturbed, q
        assert q.paraphrase and q.paraphrase != q.answer, q
        # TOFU: perturbed answers keep the paraphrase's wording (the answer's, for world facts, whose
        # truth ratio is taken against the answer) and change only the fact, which the answer states
        wording = q.answer if q.kind == "world" else q.paraphrase
        for p in q.perturbed:
            region = changed_region(wording, p)
            assert region in q.answer, (q, p)  # may be empty: "0" vs "20"
            assert len(p) > 0.5 * len(wording) - 20


def test_paraphrase_mentions_the_same_fact(bench):
    for q in bench.authors:
        assert set(CITY.findall(q.answer)) == set(CITY.findall(q.paraphrase)), q
        assert set(DATE.findall(q.answer)) == set(DATE.findall(q.paraphrase)), q
        cities = set(CITY.findall(q.answer))
        if cities and not CITY.search(q.question):  # birthplace / residence: the city is the fact
            assert len(cities) == 1
            for p in q.perturbed:
                other = set(CITY.findall(p))
                assert len(other) == 1 and other != cities, (q, p)
    for q in bench.canaries:
        code = CODE.findall(q.answer)
        assert len(code) == 1 and code == CODE.findall(q.paraphrase)
        assert all(CODE.findall(p) != code for p in q.perturbed)
    birthplace = [q for q in bench.authors if q.question.startswith("Where was")]
    assert len(birthplace) > 20


def test_world_facts_are_consistent(bench):
    for q in bench.world:
        m = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", q.question)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
            assert re.search(rf"\b{value}\.$", q.answer), q
    assert bench.world[0].answer == "There are 7 days in a week."


# ---------------------------------------------------------------------------------------------------
# forget specs
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,n_authors", [("authors:0.01", 2), ("authors:0.05", 10), ("authors:0.1", 20)])
def test_author_forget_sets(bench, spec, n_authors):
    pos = bench.forget_positions(spec, seed=0)
    items = bench.train_items()
    assert len(pos) == n_authors * 10 and np.all(np.diff(pos) > 0)
    authors = Counter(items[p].author for p in pos)
    assert len(authors) == n_authors and set(authors.values()) == {10}
    assert all(items[p].kind == "author" for p in pos)
    retain = bench.retain_positions(spec, seed=0)
    assert len(retain) + len(pos) == len(items) and not set(retain) & set(pos)
    assert np.array_equal(pos, bench.forget_positions(spec, seed=0))


def test_forget_sets_nested_and_seeded(bench):
    f1, f5, f10 = (set(bench.forget_positions(f"authors:{f}", 4).tolist()) for f in ("0.01", "0.05", "0.1"))
    assert f1 < f5 < f10
    assert not np.array_equal(bench.forget_positions("authors:0.1", 0), bench.forget_positions("authors:0.1", 1))


def test_canary_forget_set(bench):
    pos = bench.forget_positions("canaries:5", seed=0)
    items = bench.train_items()
    assert len(pos) == 5 and all(items[p].kind == "canary" for p in pos)
    assert bench.train_ids()[pos].min() >= CANARY_ID_BASE
    assert len(bench.retain_positions("canaries:5")) == len(items) - 5
    assert len(bench.forget_positions("canaries:50")) == 50


@pytest.mark.parametrize("spec", ["authors:0", "authors:1.5", "authors:1", "authors:-0.1", "authors:abc",
                                  "authors:0.001", "authors:nan", "authors", "authors:", "canaries:0",
                                  "canaries:100000", "canaries:2.5", "foo:1", "", "authors:0.1:2"])
def test_bad_forget_specs(bench, spec):
    with pytest.raises(UnlearnkitError):
        bench.forget_positions(spec)


def test_forget_errors_say_what_to_do(bench):
    with pytest.raises(UnlearnkitError, match="authors:F"):
        bench.forget_positions("foo:1")
    with pytest.raises(UnlearnkitError, match="there are 50"):
        bench.forget_positions("canaries:100000")
    with pytest.raises(UnlearnkitError, match="no canaries"):
        generate(n_authors=3, n_canaries=0, n_world=0).forget_positions("canaries:1")
    with pytest.raises(UnlearnkitError, match="nothing would be left"):
        generate(n_authors=3, n_canaries=0, n_world=0).forget_positions("authors:0.9")


# ---------------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------------

def test_jsonl_round_trip(bench, tmp_path):
    items = bench.authors[:25] + bench.world[:5] + bench.canaries[:5]
    path = to_jsonl(items, tmp_path / "items.jsonl")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 35
    assert from_jsonl(path) == items


def test_jsonl_user_format(tmp_path):
    path = tmp_path / "user.jsonl"
    path.write_text('{"question": "Q1?", "answer": "A1."}\n\n'
                    '{"question": "Q2?", "answer": "A2.", "paraphrase": "P2.", "perturbed": ["B2.", "C2."]}\n'
                    '{"question": "Q3?", "answer": "A3.", "paraphrased_answer": "P3.", "perturbed_answer": ["B3."]}\n',
                    encoding="utf-8")
    a, b, c = from_jsonl(path)
    assert (a.id, a.author, a.kind, a.paraphrase, a.perturbed) == (0, -1, "author", "", ())
    assert (b.id, b.paraphrase, b.perturbed) == (1, "P2.", ("B2.", "C2."))
    assert (c.id, c.paraphrase, c.perturbed) == (2, "P3.", ("B3.",))


def test_jsonl_malformed_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = ['{"question": "fine?", "answer": "yes"}',
             '',
             '{"question": "broken?", "answer": ',
             '{"question": "no answer?"}',
             '{"question": "Q?", "answer": 42}',
             '["a", "list"]',
             '{"question": "Q?", "answer": "A", "perturbed": "not a list"}',
             '{"question": "Q?", "answer": "A", "id": 0}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError) as err:
        from_jsonl(path)
    msg = str(err.value)
    for n in (3, 4, 5, 6, 7, 8):
        assert f"line {n}:" in msg
    assert "line 1:" not in msg and "line 2:" not in msg
    assert "not valid JSON" in msg and 'missing "answer"' in msg and "already used on line 1" in msg


def test_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(UnlearnkitError, match="does not exist"):
        from_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="no question"):
        from_jsonl(tmp_path / "empty.jsonl")


def test_qa_validates_kind_and_freezes_perturbed():
    q = QA(1, -1, "world", "Q?", "A.", "P.", ["B.", "C."])
    assert q.perturbed == ("B.", "C.") and hash(q)
    with pytest.raises(UnlearnkitError):
        QA(1, -1, "other", "Q?", "A.", "P.", ())
    assert json.loads(json.dumps({"q": q.question}))["q"] == "Q?"
