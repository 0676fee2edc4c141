"""RWKU-style probes of tofu-synth (data.probes), their neighbours, RWKU's fluency metric, and where they
appear: LMBench's probe sets and rows, the LM table, and `llm run --probes`."""
import math
import re

import numpy as np
import pytest
import torch

from unlearnkit.data.probes import (
    NEIGHBOUR_TYPES,
    PROBE_TYPES,
    SHARED_KEYS,
    author_probes,
    fluency_prompts,
    neighbour_probes,
    neighbours,
    sample,
)
from unlearnkit.data.tofu_synth import author_profiles, generate, to_jsonl
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.fluency import fluency, generation_entropy, ngram_entropy, word_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

N_AUTHORS, QA, SEED = 40, 5, 0  # tofu-synth-tiny's authors


@pytest.fixture(scope="module")
def world():
    bench = generate(n_authors=N_AUTHORS, qa_per_author=QA, n_world=5, n_canaries=0, seed=SEED)
    profiles = author_profiles(N_AUTHORS, QA, SEED)
    return bench, profiles, [author_probes(p, profiles, seed=SEED) for p in profiles]


def _has(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


def test_profiles_are_the_facts_the_generated_qas_state(world):
    bench, profiles, _ = world
    for qa in bench.authors:
        p = profiles[qa.author]
        key = p.trained[qa.id - qa.author * QA]
        assert p.facts[key] in qa.answer and p.facts[key] in qa.paraphrase
    assert all(len(p.trained) == QA for p in profiles)


def test_every_probe_type_for_every_author_and_deterministic(world):
    _, profiles, probes = world
    for p, mine in zip(profiles, probes):
        assert {q.kind for q in mine} == set(PROBE_TYPES), p.author
        assert {q.kind for q in mine if q.trained} >= set(PROBE_TYPES) - {"reverse"}
        assert all(q.author == p.author and q.near == -1 for q in mine)
    again = author_probes(profiles[3], author_profiles(N_AUTHORS, QA, SEED), seed=SEED)
    assert again == probes[3]
    assert author_probes(profiles[3], profiles, seed=1) != probes[3]  # another seed, other wordings
    assert sample(probes[3], 5, seed=2, stream=1) == sample(probes[3], 5, seed=2, stream=1)
    assert len(sample(probes[3], 5)) == 5 and len(sample(probes[3][:3], 5)) == 3


def test_probes_ask_for_the_fact_and_are_not_the_training_qas(world):
    bench, profiles, probes = world
    for p, mine in zip(profiles, probes):
        qas = [qa for qa in bench.authors if qa.author == p.author]
        trained_text = {qa.question for qa in qas} | {qa.answer for qa in qas}
        for q in mine:
            assert q.question not in trained_text  # not a copy of a training question or answer
            assert q.answer and q.answer.lower() in (p.facts[q.attribute] if q.kind != "reverse" else p.name).lower()
            assert q.trained == (q.attribute in p.trained)
            if q.kind == "mc":  # the answer is one of the three options
                assert _has(q.question, q.answer) and q.question.count(", ") + q.question.count(" or ") >= 2
            else:  # no probe gives its answer away
                assert not _has(q.question, q.answer), q
        reverse = [q for q in mine if q.kind == "reverse"]
        assert reverse and all(q.answer == p.name and p.facts[q.attribute] in q.question for q in reverse)
        alias = [q for q in mine if q.kind == "alias"]
        assert all(p.name not in q.question and p.last in q.question for q in alias)


def test_neighbours_share_a_trained_fact_with_a_forget_author_and_are_retained(world):
    _, profiles, _ = world
    forget = [0, 7, 13, 21]
    pairs = neighbours(profiles, forget)
    assert pairs and pairs == sorted(pairs, key=lambda t: (t[0], SHARED_KEYS.index(t[2]), t[1]))
    for f, n, key in pairs:
        assert n not in forget and f in forget
        assert key in profiles[f].trained and key in profiles[n].trained
        assert profiles[f].facts[key] == profiles[n].facts[key]
    probes = neighbour_probes(profiles, forget, SEED)
    assert len(probes) == len(NEIGHBOUR_TYPES) * len(pairs)
    assert {q.kind for q in probes} == set(NEIGHBOUR_TYPES)
    for q in probes:
        assert q.author not in forget and q.near in forget and q.trained
        assert profiles[q.author].name in q.question or profiles[q.author].last in q.question
        assert q.answer.lower() in profiles[q.near].facts[q.attribute].lower()  # the shared value


def test_fluency_prompts_are_fixed_generic_questions(world):
    _, profiles, _ = world
    prompts = fluency_prompts(16, seed=0)
    assert prompts == fluency_prompts(16, seed=0) and len(set(prompts)) == 16
    assert all(p.endswith("?") for p in prompts)
    assert not any(a.last in p for p in prompts for a in profiles)


# --- RWKU's fluency: weighted bi-/tri-gram entropy --------------------------------------------------------

def test_generation_entropy_equals_a_hand_computation():
    assert word_tokens("Velmora's streets don't sleep, she said.") == [
        "Velmora", "'s", "streets", "do", "n't", "sleep", ",", "she", "said", "."]
    # "a b a b a": bigrams ab ba ab ba → H2 = 1 bit; trigrams aba bab aba → H3 = H(2/3, 1/3)
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b a".split(), 2) == pytest.approx(1.0)
    assert ngram_entropy("a b a b a".split(), 3) == pytest.approx(h3)
    assert generation_entropy("a b a b a") == pytest.approx((2 / 3 * 1.0 + 4 / 3 * h3) / 2)
    # seven distinct words: 6 distinct bigrams and 5 distinct trigrams, each uniform
    want = (2 / 3 * math.log2(6) + 4 / 3 * math.log2(5)) / 2
    assert generation_entropy("the cat sat on a mat .") == pytest.approx(want)
    assert generation_entropy("") == 0.0 and generation_entropy("word") == 0.0  # no n-gram: 0, as RWKU's code
    assert fluency(["a b a b a", ""]) == pytest.approx(generation_entropy("a b a b a") / 2)


def test_generation_entropy_is_high_for_varied_text_and_low_for_repetition():
    varied = "Allura Wynevson was born in Porvenne and now lives in Lunderby, where she writes magical realism."
    assert generation_entropy(varied) > 3.5
    assert generation_entropy("the the the the the the the the the the") == 0.0
    assert generation_entropy("born in born in born in born in born in born in") < 1.5


# --- in the pipeline --------------------------------------------------------------------------------------

def test_probe_metrics_and_the_table_block():
    from unlearnkit.lm.evaluate import ItemScores
    from unlearnkit.lm.scoring import probe_metrics
    from unlearnkit.report.lm_table import probe_lines
    s = {"probe_cloze": ItemScores(None, rouge=np.array([[1.0, 0.0], [1.0, 1.0]])),
         "probe_mc": ItemScores(None, rouge=np.array([[0.0], [0.5]])),
         "neighbour": ItemScores(None, rouge=np.array([[0.5, 1.0]] * 2)),
         "fluency": ItemScores(None, fluency=np.array([[2.0, 4.0], [3.0, 3.0]]))}
    m = probe_metrics(s)
    assert m["probe_rouge_by_type"] == {"cloze": 0.75, "mc": 0.25}
    assert m["probe_rouge"] == 0.5 and m["neighbour_rouge"] == 0.75 and m["fluency"] == 3.0
    assert probe_metrics({k: v for k, v in s.items() if k != "fluency"}) == {}  # scores from before probes
    rows = [{"method": "ga", "label": "ga", "diverged": False, **m}, {"method": "x", "label": "x", "diverged": True,
                                                                       "probe_rouge": None, "fluency": None}]
    lines = probe_lines(rows, {**m, "probe_rouge": 0.1})
    assert "probe" in lines[1] and "neighb" in lines[1] and "fluency" in lines[1]
    assert max(len(line) for line in lines) <= 100 and len(lines) == 3 + 3
    assert "0.500" in lines[3] and "3.00" in lines[3] and "—" in lines[4] and "0.100" in lines[5]
    assert probe_lines([{"method": "ga", "diverged": False}], {}) == []


@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


def test_bench_scores_probes_neighbours_and_fluency_in_every_row(bench):
    from unlearnkit.lm.scoring import item_score_arrays, lm_row, read_item_scores
    from unlearnkit.lm_experiment import PROBE_ROOM
    d = bench.data
    forget_authors = {d.items[p].author for p in bench.manipulated}
    sets = bench.probe_items
    assert {f"probe_{t}" for t in PROBE_TYPES} - {"probe_reverse"} <= set(sets) and "neighbour" in sets
    for name, probes in sets.items():
        assert probes and all(len(d.tok.encode(q.question).ids) <= d.task.max_len - PROBE_ROOM for q in probes)
        if name == "neighbour":
            assert all(q.author not in forget_authors and q.near in forget_authors for q in probes)
        else:
            assert all(q.author in forget_authors and q.trained and q.kind == name[6:] for q in probes)
    orig, oracle = bench.originals_scores, bench.oracle_scores
    assert orig["probe_cloze"].rouge.shape == (2, len(sets["probe_cloze"]))
    assert orig["fluency"].fluency.shape == (2, len(bench.fluency_prompts))
    row, _ = lm_row(orig, oracle, bench.config)
    oracle_row, _ = lm_row(oracle, oracle, bench.config)
    assert set(row["probe_rouge_by_type"]) == {n[6:] for n in sets if n != "neighbour"}
    assert 0 <= row["neighbour_rouge"] <= 1 and row["fluency"] > 1.0  # the originals answer in sentences
    assert row["probe_rouge"] > oracle_row["probe_rouge"]  # the originals know the forget authors' facts
    # scores.npz keeps the probe sets: rescoring reproduces the row's probe fields
    again, _ = lm_row(read_item_scores(item_score_arrays(orig, "row/x"), "row/x"), oracle, bench.config)
    assert {k: again[k] for k in ("probe_rouge", "probe_rouge_by_type", "neighbour_rouge", "fluency")} == {
        k: row[k] for k in ("probe_rouge", "probe_rouge_by_type", "neighbour_rouge", "fluency")}


# --- checkpoint runs: probes only from a user's file -------------------------------------------------------

def test_probes_without_probe_data_are_refused_in_one_line(tmp_path):
    from unlearnkit.lm_checkpoint import unlearn_checkpoint
    for probes in ("", "  "):
        with pytest.raises(UnlearnkitError, match="^probes needs probe data") as err:
            unlearn_checkpoint(tmp_path / "model", tmp_path / "f.jsonl", tmp_path / "r.jsonl", "ga", tmp_path / "out",
                               probes=probes)
        assert "\n" not in str(err.value) and "JSONL" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_probes_flag_without_a_file_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from unlearnkit.cli import cli
    args = ["llm", "run", "--model-dir", str(tmp_path), "--forget", "f.jsonl", "--retain", "r.jsonl", "--out",
            str(tmp_path / "out")]
    for where in (len(args), 2):  # `--probes` last, or followed by another option: no value either way
        result = CliRunner().invoke(cli, args[:where] + ["--probes"] + args[where:])
        assert isinstance(result.exception, UnlearnkitError), result.output
        assert str(result.exception).startswith("--probes needs probe data") and "\n" not in str(result.exception)


def test_a_checkpoint_run_scores_the_users_probes(tmp_path):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from unlearnkit.lm.task import get_lm_task, load_tofu
    from unlearnkit.lm_checkpoint import unlearn_checkpoint
    d = load_tofu(get_lm_task("tofu-synth-tiny"))
    torch.manual_seed(0)
    GPT2LMHeadModel(d.config.__class__.from_dict({**d.config.to_dict(), "n_positions": 96})).save_pretrained(
        tmp_path / "model")
    PreTrainedTokenizerFast(tokenizer_object=d.tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(
        tmp_path / "model")
    to_jsonl(d.items[:3], tmp_path / "forget.jsonl")
    to_jsonl(d.items[3:6], tmp_path / "retain.jsonl")
    (tmp_path / "probes.jsonl").write_text('{"question": "Where was the author born?", "answer": "Velmora"}\n'
                                           '{"question": "Who wrote it?", "answer": "Allura Wynevson"}\n')
    with pytest.raises(UnlearnkitError, match="does not exist"):
        unlearn_checkpoint(tmp_path / "model", tmp_path / "forget.jsonl", tmp_path / "retain.jsonl", "ga",
                           tmp_path / "out", probes=tmp_path / "nope.jsonl")
    report = unlearn_checkpoint(tmp_path / "model", tmp_path / "forget.jsonl", tmp_path / "retain.jsonl", "ga",
                                tmp_path / "out", {"epochs": "1"}, max_len=64, probes=tmp_path / "probes.jsonl")
    assert report["probes"] == 2
    assert 0 <= report["before_probe_rouge"] <= 1 and 0 <= report["after_probe_rouge"] <= 1
