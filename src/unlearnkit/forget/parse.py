"""Reading the parts of a forget spec: amounts (a count or a fraction), id lists (inline or from a file),
whole numbers, and the seeded generator every drawn set comes from. Shared by the classifier's kinds
(`specs`) and a recommendation task's (`interactions`)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset
from ..engine import derived_seed
from ..errors import UnlearnkitError

FORGET_TAG = 0xF0F


COUNT = re.compile(r"[0-9]+")
_FRACTION = re.compile(r"[0-9]*\.[0-9]*")
AMOUNT_RULE = "a count without a decimal point (100) or a fraction with one, in (0, 1] (0.5; 1.0 is all)"


def parse_amount(arg: str, what: str, unit: str = "examples") -> int | float:
    """A count (`100`: digits only) or a fraction (`0.5`, `1.0`, `.25`: with a decimal point, in (0, 1]).

    The decimal point alone decides, so `1` is one example and `1.0` all of them: reading both as a
    number made `class:3:1.0` one example. Signs, exponents, inf and nan are refused, not guessed at."""
    text = arg.strip()
    if COUNT.fullmatch(text) or (_FRACTION.fullmatch(text) and text != "."):
        value = int(text) if COUNT.fullmatch(text) else float(text)
        if value == 0:
            raise UnlearnkitError(f"{what}: {arg!r} selects no {unit}; write {AMOUNT_RULE}")
        if isinstance(value, float) and value > 1:
            whole, _, decimals = text.partition(".")
            instead = (f"the count without a decimal point ({whole})" if not decimals.strip("0")
                       else "a whole count without a decimal point or a fraction in (0, 1]")
            raise UnlearnkitError(f"{what}: {arg!r} has a decimal point, so it is a fraction, and fractions lie in "
                                  f"(0, 1]; write {instead}")
        return value
    problem = "is negative" if text.startswith("-") else "is neither a count nor a fraction"
    raise UnlearnkitError(f"{what}: {arg!r} {problem}; write {AMOUNT_RULE}")


def resolve_amount(arg: str, population: int, what: str, unit: str = "examples") -> int:
    """`parse_amount` as a number of items: a fraction F gives round(F·population), as it always did so
    that seeded forget sets do not move; one that rounds to nothing is refused rather than emptied."""
    value = parse_amount(arg, what, unit)
    if isinstance(value, int):
        return value
    k = int(round(value * population))
    if k == 0:
        smallest = np.format_float_positional(1 / population, precision=2, fractional=False)
        raise UnlearnkitError(f"{what}: {arg} of {population} {unit} rounds to 0 {unit}; "
                              f"write a fraction of at least {smallest} or a count (e.g. 1)")
    return k


def draw_rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, FORGET_TAG))


def id_list(text: str, where: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UnlearnkitError(f"{where}: expected integers separated by commas or white space") from None


def _read_ids(name: str) -> list[int]:
    """The ids in FILE of `ids:@FILE`: integers separated by commas or white space, a JSON list of them,
    or the forget_set.json a run writes, so that a run's forget set can be passed back as it is."""
    if not name:
        raise UnlearnkitError("ids:@ needs a file, e.g. ids:@runs/x/forget_set.json or ids:@forget_ids.txt")
    path, where = Path(name), f"ids: {name}"
    if path.is_dir():
        raise UnlearnkitError(f"{where} is a directory; give a file of ids, e.g. ids:@{path / 'forget_set.json'}")
    if not path.exists():
        raise UnlearnkitError(f"ids: file {path} does not exist")
    if not path.is_file():
        raise UnlearnkitError(f"{where} is not a regular file; give a text or JSON file of ids")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UnlearnkitError(f"ids: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise UnlearnkitError(f"{where} is not a text file (binary or not UTF-8); give ids separated by commas "
                              "or white space, or a run's forget_set.json")
    if not text.strip():
        raise UnlearnkitError(f"{where} is empty; write ids separated by commas or white space in it")
    if text.lstrip()[0] not in "[{":
        return id_list(text, where)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnlearnkitError(f"{where} is not valid JSON ({e.msg}, line {e.lineno})") from None
    ids = obj.get("ids") if isinstance(obj, dict) else obj
    if not isinstance(ids, list):
        raise UnlearnkitError(f"{where} has no \"ids\" list; expected a run's forget_set.json or a JSON list of ids")
    bad = [v for v in ids if type(v) is not int]
    if bad:
        raise UnlearnkitError(f"{where}: ids must be whole numbers, got {bad[0]!r}")
    if isinstance(obj, dict) and obj.get("size", len(ids)) != len(ids):
        raise UnlearnkitError(f"{where} says size {obj['size']} but lists {len(ids)} ids; was it edited?")
    return ids


def by_ids(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """Positions of the listed ids; each id once, since a repeated id is a typo or a mangled file."""
    text = ":".join(args).strip()
    ids = _read_ids(text[1:].strip()) if text.startswith("@") else id_list(text, "ids")
    where = f"ids: {text[1:].strip()}" if text.startswith("@") else "ids"
    if not ids:
        raise UnlearnkitError(f"{where}: no ids given; write ids:4,8,15 or ids:@FILE")
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise UnlearnkitError(f"{where}: {len(repeated)} id(s) listed more than once, e.g. {repeated[:5]}; "
                              "list each id once")
    lookup = {int(v): i for i, v in enumerate(ds.train_ids.tolist())}
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise UnlearnkitError(f"{where}: {len(missing)} id(s) are not in the training set, e.g. {missing[:5]}")
    return np.array([lookup[i] for i in ids], dtype=np.int64)


def whole(text: str, what: str, name: str = "COUNT") -> int:
    """Whole numbers in specs (counts, indices) are digits without a decimal point, as `random:K` is."""
    if not COUNT.fullmatch(text.strip()):
        raise UnlearnkitError(f"{what}: {name} must be a whole number without a decimal point (e.g. 100), "
                              f"got {text!r}")
    return int(text)
