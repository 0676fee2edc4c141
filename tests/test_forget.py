"""Tests for forget-set specs (unlearnkit.forget.build_forget_set)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearnkit.data import Dataset, load_dataset
from unlearnkit.engine import derived_seed
from unlearnkit.errors import UnlearnkitError
from unlearnkit.forget import KINDS, ForgetSet, build_forget_set
from unlearnkit.forget.parse import FORGET_TAG

N_TRAIN = 200
ID_OFFSET = 1000


@pytest.fixture(scope="module")
def ds() -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N_TRAIN) % 10
    y[y == 9] = 8       # class 9 absent, class 8 has 40 examples
    y[:5] = 3           # class 3 gets a few extra: 20 + 4 (position 3 already was class 3) = 24
    return Dataset(
        name="synthetic",
        x_train=torch.randn(N_TRAIN, 4, generator=g), y_train=y,
        train_ids=ID_OFFSET + torch.arange(N_TRAIN),
        x_val=torch.randn(6, 4, generator=g), y_val=torch.arange(6) % 10,
        val_ids=torch.arange(5000, 5006),
        num_classes=10,
    )


def _check_consistent(fs: ForgetSet, ds: Dataset):
    assert isinstance(fs.positions, np.ndarray) and isinstance(fs.ids, np.ndarray)
    assert np.all(np.diff(fs.positions) > 0)  # sorted and unique
    assert fs.positions.min() >= 0 and fs.positions.max() < len(ds.y_train)
    np.testing.assert_array_equal(fs.ids, ds.train_ids.numpy()[fs.positions])
    assert len(fs) == len(fs.positions)


# ---------------------------------------------------------------------------------------------------
# kinds
# ---------------------------------------------------------------------------------------------------

def test_random_count(ds):
    fs = build_forget_set("random:10", ds, seed=0)
    assert len(fs) == 10
    assert len(np.unique(fs.positions)) == 10
    _check_consistent(fs, ds)
    assert fs.spec == "random:10" and fs.seed == 0
    assert fs.to_dict() == {"spec": "random:10", "seed": 0, "size": 10, "ids": fs.ids.tolist()}


def test_random_fraction(ds):
    fs = build_forget_set("random:0.05", ds, seed=1)
    assert len(fs) == 10  # 5% of 200
    _check_consistent(fs, ds)
    assert len(build_forget_set("random:0.5", ds, seed=1)) == 100


def test_class_all(ds):
    fs = build_forget_set("class:3", ds, seed=0)
    expected = np.flatnonzero(ds.y_train.numpy() == 3)
    assert len(expected) == 24
    np.testing.assert_array_equal(fs.positions, expected)
    _check_consistent(fs, ds)


def test_class_fraction_and_count(ds):
    members = set(np.flatnonzero(ds.y_train.numpy() == 3).tolist())
    half = build_forget_set("class:3:0.5", ds, seed=0)
    assert len(half) == 12
    assert set(half.positions.tolist()) <= members
    _check_consistent(half, ds)
    # Class 8 has 40, a quarter is 10; class 0 has 19 (position 0 became class 3): 0.35·19 = 6.65 → 7.
    assert len(build_forget_set("class:8:0.25", ds, seed=0)) == 10
    assert (ds.y_train == 0).sum().item() == 19
    assert len(build_forget_set("class:0:0.35", ds, seed=0)) == 7
    five = build_forget_set("class:3:5", ds, seed=0)
    assert len(five) == 5 and set(five.positions.tolist()) <= members
    # A different seed picks a different half.
    other = build_forget_set("class:3:0.5", ds, seed=1)
    assert not np.array_equal(half.positions, other.positions)


def test_ids_inline(ds):
    fs = build_forget_set("ids:1007,1003", ds, seed=0)
    np.testing.assert_array_equal(fs.positions, [3, 7])
    np.testing.assert_array_equal(fs.ids, [1003, 1007])
    # White space is accepted as well as commas.
    fs2 = build_forget_set("ids:1003, 1007  1010", ds, seed=5)
    np.testing.assert_array_equal(fs2.positions, [3, 7, 10])


def test_ids_from_file(ds, tmp_path):
    path = tmp_path / "forget_ids.txt"
    path.write_text("1199\n1010, 1020\n  1000\n")
    fs = build_forget_set(f"ids:@{path}", ds, seed=0)
    np.testing.assert_array_equal(fs.positions, [0, 10, 20, 199])
    np.testing.assert_array_equal(fs.ids, [1000, 1010, 1020, 1199])


def test_ids_roundtrip_rebuilds_the_same_set(ds, tmp_path):
    fs = build_forget_set("random:17", ds, seed=3)
    path = tmp_path / "saved.txt"
    path.write_text(",".join(str(i) for i in fs.to_dict()["ids"]))
    again = build_forget_set(f"ids:@{path}", ds, seed=99)
    np.testing.assert_array_equal(again.positions, fs.positions)


# ---------------------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["random:10", "random:0.05", "class:3:0.5"])
def test_same_seed_same_set(ds, spec):
    a = build_forget_set(spec, ds, seed=42)
    b = build_forget_set(spec, ds, seed=42)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_different_seed_different_random_set(ds):
    a = build_forget_set("random:10", ds, seed=0)
    b = build_forget_set("random:10", ds, seed=1)
    assert not np.array_equal(a.positions, b.positions)
    # Over several seeds, many distinct positions are drawn (the draw actually depends on the seed).
    drawn = np.concatenate([build_forget_set("random:10", ds, seed=s).positions for s in range(10)])
    assert len(np.unique(drawn)) > 50


def test_retain_positions_is_the_complement(ds):
    fs = build_forget_set("random:25", ds, seed=2)
    retain = fs.retain_positions(N_TRAIN)
    assert len(retain) == N_TRAIN - 25
    assert np.all(np.diff(retain) > 0)
    assert not set(retain.tolist()) & set(fs.positions.tolist())
    np.testing.assert_array_equal(np.union1d(retain, fs.positions), np.arange(N_TRAIN))


def test_digits_forget_set():
    digits = load_dataset("digits")
    fs = build_forget_set("class:7:0.1", digits, seed=0)
    members = np.flatnonzero(digits.y_train.numpy() == 7)
    assert len(fs) == int(round(0.1 * len(members)))
    assert set(fs.positions.tolist()) <= set(members.tolist())
    np.testing.assert_array_equal(fs.ids, digits.train_ids.numpy()[fs.positions])
    # On digits ids differ from positions (the validation examples are interleaved).
    assert not np.array_equal(fs.ids, fs.positions)
    rebuilt = build_forget_set("ids:" + ",".join(map(str, fs.ids.tolist())), digits)
    np.testing.assert_array_equal(rebuilt.positions, fs.positions)


# ---------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, needle", [
    ("random", "malformed"),
    ("foo:3", "malformed"),
    ("", "malformed"),
    ("random:abc", "neither a count nor a fraction"),
    ("random:1.5", "fractions lie in (0, 1]"),
    ("random:-3", "is negative"),
    ("random:1:2", "one argument"),
    ("random:0", "selects no examples"),
    ("random:100000", "the training set has 200"),
    ("random:200", "nothing would be left to retain"),
    ("class:3:25", "only 24"),
    ("class:x", "not a class index"),
    ("class:42", "out of range"),
    ("class:9", "no training examples"),
    ("ids:5", "not in the training set"),
    ("ids:1003,5,7", "not in the training set"),
    ("ids:12a", "expected integers"),
])
def test_bad_specs_raise(ds, spec, needle):
    with pytest.raises(UnlearnkitError) as info:
        build_forget_set(spec, ds, seed=0)
    assert needle in str(info.value)


def test_whole_class_dataset_cannot_be_forgotten():
    y = torch.zeros(10, dtype=torch.long)
    one_class = Dataset("one", torch.zeros(10, 2), y, torch.arange(10), torch.zeros(1, 2),
                        torch.zeros(1, dtype=torch.long), torch.arange(10, 11), 2)
    with pytest.raises(UnlearnkitError, match="nothing would be left to retain"):
        build_forget_set("class:0", one_class)


def test_ids_file_missing(ds, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(UnlearnkitError) as info:
        build_forget_set(f"ids:@{missing}", ds)
    assert "does not exist" in str(info.value)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("spec", ["random:inf", "random:nan", "class:3:inf"])
def test_non_finite_counts_raise_unlearnkit_error(ds, spec):
    with pytest.raises(UnlearnkitError):
        build_forget_set(spec, ds, seed=0)


def _error(spec: str, ds: Dataset) -> str:
    with pytest.raises(UnlearnkitError) as info:
        build_forget_set(spec, ds, seed=0)
    message = str(info.value)
    assert "\n" not in message  # one line, no traceback
    return message


# ---------------------------------------------------------------------------------------------------
# 1. amounts: a count has no decimal point, a fraction has one and lies in (0, 1]
# ---------------------------------------------------------------------------------------------------

def test_class_fraction_one_is_the_whole_class(ds):
    whole = build_forget_set("class:3", ds, seed=0)
    for spec in ("class:3:1.0", "class:3:1.", "class:3:1.00"):
        np.testing.assert_array_equal(build_forget_set(spec, ds, seed=0).positions, whole.positions)
    assert len(build_forget_set("class:3:1", ds, seed=0)) == 1  # no decimal point: a count
    assert len(build_forget_set("class:3:5", ds, seed=0)) == 5
    assert len(build_forget_set("class:3:.25", ds, seed=0)) == 6


def test_random_fraction_draws_as_before(digits):
    """random:F is round(F·n) examples of the seeded permutation, as before, so saved seeds still hold."""
    n = len(digits.y_train)
    for seed in (0, 7):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, FORGET_TAG)))
        expected = np.sort(perm[:int(round(0.01 * n))].numpy())
        np.testing.assert_array_equal(build_forget_set("random:0.01", digits, seed=seed).positions, expected)
        np.testing.assert_array_equal(build_forget_set(f"random:{len(expected)}", digits, seed=seed).positions,
                                      expected)


@pytest.mark.parametrize("spec, needle", [
    ("random:100.0", "write the count without a decimal point (100)"),
    ("class:3:5.0", "write the count without a decimal point (5)"),
    ("random:1.5", "a fraction in (0, 1]"),
    ("random:0", "selects no examples"),
    ("random:0.0", "selects no examples"),
    ("class:3:0", "selects no examples"),
    ("random:-3", "is negative"),
    ("class:3:-0.5", "is negative"),
    ("random:inf", "neither a count nor a fraction"),
    ("random:nan", "neither a count nor a fraction"),
    ("random:1e2", "neither a count nor a fraction"),
    ("class:3:1e-1", "neither a count nor a fraction"),
    ("random:.", "neither a count nor a fraction"),
    ("random:", "neither a count nor a fraction"),
])
def test_amount_grammar_errors(ds, spec, needle):
    message = _error(spec, ds)
    assert needle in message
    assert "count" in message  # and says what to write instead


def test_fraction_rounding_to_nothing_is_refused(ds):
    message = _error("random:0.001", ds)  # 0.001·200 = 0.2
    assert "rounds to 0 examples" in message and "at least 0.005" in message
    assert "rounds to 0" in _error("class:3:0.01", ds)  # 0.01·24


def test_random_fraction_one_leaves_nothing_to_retain(ds):
    assert "nothing would be left to retain" in _error("random:1.0", ds)


# ---------------------------------------------------------------------------------------------------
# 2. id lists: each id once, and at least one
# ---------------------------------------------------------------------------------------------------

def test_ids_duplicates_refused(ds):
    message = _error("ids:1005,1005,1005,1007", ds)
    assert "1 id(s) listed more than once, e.g. [1005]" in message
    many = "ids:" + ",".join(str(1000 + i) for i in range(8) for _ in range(2))
    assert "8 id(s) listed more than once, e.g. [1000, 1001, 1002, 1003, 1004];" in _error(many, ds)


@pytest.mark.parametrize("spec", ["ids:", "ids: , ,"])
def test_ids_empty_refused(ds, spec):
    assert "no ids" in _error(spec, ds)


# ---------------------------------------------------------------------------------------------------
# 3. ids:@FILE: text, a JSON list, or a run's forget_set.json
# ---------------------------------------------------------------------------------------------------

def test_ids_forget_set_json_round_trips(ds, tmp_path):
    fs = build_forget_set("random:17", ds, seed=3)
    path = tmp_path / "forget_set.json"
    path.write_text(json.dumps(fs.to_dict(), indent=1))  # as report.write_results writes it
    np.testing.assert_array_equal(build_forget_set(f"ids:@{path}", ds, seed=99).positions, fs.positions)
    with open(path, "w") as f:
        json.dump({"spec": "class:3", "ids": [1003, 1013]}, f)
    np.testing.assert_array_equal(build_forget_set(f"ids:@{path}", ds).positions, [3, 13])
    path.write_text("[1199, 1000]")
    np.testing.assert_array_equal(build_forget_set(f"ids:@{path}", ds).positions, [0, 199])


@pytest.mark.parametrize("content, needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    (b"1000, \xff\xfe 1001", "not a text file"),
    (b"", "is empty"),
    (b"  \n\n ", "is empty"),
    (b"1000 1001.5", "expected integers"),
    (b"{\"ids\": [1000,", "not valid JSON"),
    (b"{\"spec\": \"random:3\"}", "no \"ids\" list"),
    (b"[1000, 1.5]", "ids must be whole numbers"),
    (b"{\"spec\": \"random:3\", \"size\": 3, \"ids\": [1000, 1001]}", "says size 3 but lists 2 ids"),
    (b"[1000, 1000]", "listed more than once"),
    (b"[]", "no ids"),
])
def test_ids_file_errors(ds, tmp_path, content, needle):
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    message = _error(f"ids:@{path}", ds)
    assert needle in message and str(path) in message


def test_ids_file_not_a_file_or_unreadable(ds, tmp_path, monkeypatch):
    assert "needs a file" in _error("ids:@", ds)
    assert "is a directory" in _error(f"ids:@{tmp_path}", ds)
    path = tmp_path / "ids.txt"
    path.write_text("1000")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(type(path), "read_bytes", denied)
    assert "cannot read" in _error(f"ids:@{path}", ds) and "Permission denied" in _error(f"ids:@{path}", ds)


# ---------------------------------------------------------------------------------------------------
# 4. class indices, and the counts of near: and pc:
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, needle", [
    ("class:x", "not a class index; write class:C with C a whole number in 0..9"),
    ("class:3.0", "not a class index"),
    ("class:-1", "not a class index"),
    ("class:10", "out of range, synthetic has classes 0..9"),
    ("class:9", "no training examples"),
    ("pc:1:top:100.0", "COUNT must be a whole number without a decimal point"),
    ("pc:1:top:0.5", "COUNT must be a whole number without a decimal point"),
    ("pc:1.0:top:5", "K must be a whole number"),
    ("near:1003:5.0", "COUNT must be a whole number without a decimal point"),
    ("near:1003:1e1", "COUNT must be a whole number without a decimal point"),
    ("near:999999:10", "near: example id 999999 is not in the training set"),
    ("near:x:10", "near: ID must be a whole number"),
])
def test_class_and_count_errors(ds, spec, needle):
    assert needle in _error(spec, ds)


def test_kinds_help_states_the_amount_rule():
    assert "decimal point" in KINDS["random"][1] and "(0, 1]" in KINDS["random"][1]
    assert "class:3:1.0" in KINDS["class"][1]
    assert "forget_set.json" in KINDS["ids"][1]
    assert all("decimal point" in KINDS[k][1] for k in ("pc", "near"))
