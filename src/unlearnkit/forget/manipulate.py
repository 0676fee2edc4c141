"""Manipulated training sets: the setting of corrective unlearning (Goel et al., TMLR 2024, "Corrective
Machine Unlearning", reference code drimpossible/corrective-unlearning-bench).

The training data was tampered with: the originals train on the manipulated set D', the oracles on the
fully corrected data (every manipulated example removed), and the unlearner is told only an identified
part S_F of the manipulated set M. Three manipulations, as the reference defines them:

- `poison:K[:target=T][:patch=P]` — K random training images get a P×P trigger in the bottom-right corner
  set to the training set's maximum (per channel; per feature for flat inputs laid out as a square) and
  label T (the reference's defaults P = 3, T = 0). A triggered validation image classified as T (when T is
  not its class) is an attack success.
- `swap:A:B:K` — interclass confusion: K/2 examples of class A labelled B and K/2 of B labelled A (the
  reference takes the first K/2 of each class; here a seeded sample). Fashion-MNIST's natural pair is
  T-shirt/Shirt, 0 and 6.
- `noise:K` — K random examples get a uniformly random *other* label.

`identified(m, fractions, seed)` gives nested identified subsets (the f = 0.1 set inside the f = 0.25 one),
so that a curve over f differs only in how much is known.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset
from ..engine import derived_seed
from ..errors import UnlearnkitError, option
from .parse import parse_amount

MANIPULATE_TAG = 0x4D414E50  # "MANP": the manipulation's own random stream
KINDS = ("poison", "swap", "noise")
SPEC_HELP = "poison:K[:target=T][:patch=P], swap:A:B:K or noise:K"


@dataclass(frozen=True)
class Manipulation:
    """A manipulated training set: the dataset the originals train on, the manipulated positions M, what
    was done, and (for poison) how to trigger any input."""

    spec: str
    kind: str
    dataset: Dataset            # D': the training set after the manipulation (validation set untouched)
    positions: np.ndarray       # M, sorted positions in the training set
    target: int | None = None   # poison: the label the trigger teaches
    patch: int | None = None    # poison: the trigger's side, in pixels
    patch_value: torch.Tensor | None = None  # poison: the trigger's value per channel (or feature)
    classes: tuple[int, int] | None = None   # swap: the two classes

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with the poison's trigger stamped on (a copy)."""
        if self.kind != "poison":
            raise UnlearnkitError(f"{self.kind} has no trigger")
        return stamp(x, self.patch, self.patch_value)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "size": len(self.positions), "target": self.target,
                "patch": self.patch, "classes": list(self.classes) if self.classes else None,
                "ids": self.dataset.train_ids[torch.as_tensor(self.positions)].tolist()}


def _square(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an input: images as they are, flat vectors as one square channel."""
    if len(shape) == 3:
        return shape
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return 1, side, side
    raise UnlearnkitError(f"poison needs image inputs (or flat ones that form a square) to place a trigger; "
                          f"this dataset's inputs have shape {tuple(shape)}")


def stamp(x: torch.Tensor, patch: int, value: torch.Tensor) -> torch.Tensor:
    """A copy of `x` (n, *shape) with its bottom-right patch×patch corner set to `value` (per channel)."""
    c, h, w = _square(tuple(x.shape[1:]))
    out = x.reshape(len(x), c, h, w).clone()
    out[:, :, h - patch:, w - patch:] = value.reshape(1, c, patch, patch) if value.numel() > c else \
        value.reshape(1, c, 1, 1)
    return out.reshape(x.shape)


def _options(args: list[str], allowed: dict[str, int], what: str) -> dict[str, int]:
    out = dict(allowed)
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or key not in allowed or not re.fullmatch(r"[0-9]+", value.strip()):
            raise UnlearnkitError(f"{what}: {a!r} is not an option; write {', '.join(f'{k}=N' for k in allowed)}")
        out[key] = int(value)
    return out


def _class_index(text: str, ds: Dataset, what: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UnlearnkitError(f"{what}: {text!r} is not a class index (0..{ds.num_classes - 1})")
    c = int(text)
    if c >= ds.num_classes:
        raise UnlearnkitError(f"{what}: class {c} is out of range; {ds.name} has classes 0..{ds.num_classes - 1}")
    return c


def _count(text: str, what: str, population: int) -> int:
    k = parse_amount(text, what)
    k = int(round(k * population)) if isinstance(k, float) else k
    if k < 1:
        raise UnlearnkitError(f"{what}: {text} selects no examples")
    if k > population:
        raise UnlearnkitError(f"{what} asks for {k} examples, but only {population} can be manipulated")
    return k


def manipulate(spec: str, ds: Dataset, seed: int) -> Manipulation:
    """Apply manipulation `spec` to the training set of `ds` (seeded); refuse impossible specs with one line."""
    kind, *args = [a.strip() for a in str(spec).split(":")]
    rng = torch.Generator().manual_seed(derived_seed(seed, MANIPULATE_TAG))
    n = len(ds.y_train)
    x, y = ds.x_train.clone(), ds.y_train.clone()
    if kind == "poison":
        if not args:
            raise UnlearnkitError(f"poison needs a count: {SPEC_HELP}")
        k = _count(args[0], "poison", n)
        opts = _options(args[1:], {"target": 0, "patch": 3}, "poison")
        target = _class_index(str(opts["target"]), ds, "poison target")
        c, h, w = _square(tuple(ds.x_train.shape[1:]))
        if not 1 <= opts["patch"] <= min(h, w):
            raise UnlearnkitError(f"poison: patch={opts['patch']} must be in [1, {min(h, w)}] for {h}×{w} inputs")
        m = torch.randperm(n, generator=rng)[:k]
        flat = ds.x_train.reshape(n, c, h * w)
        value = flat.amax(dim=(0, 2)) if len(ds.x_train.shape) == 4 else \
            ds.x_train.reshape(n, c, h, w)[:, :, h - opts["patch"]:, w - opts["patch"]:].amax(0)
        x[m] = stamp(ds.x_train[m], opts["patch"], value)
        y[m] = target
        out = dict(target=target, patch=opts["patch"], patch_value=value)
    elif kind == "swap":
        if len(args) != 3:
            raise UnlearnkitError(f"swap takes swap:A:B:K (classes A and B, K examples in all); got {spec!r}")
        a, b = (_class_index(v, ds, "swap") for v in args[:2])
        if a == b:
            raise UnlearnkitError(f"swap: the two classes must differ, got {a} and {b}")
        k = _count(args[2], "swap", n)
        half = k // 2
        if half < 1:
            raise UnlearnkitError(f"swap:{a}:{b}:{k} swaps K/2 of each class: K must be at least 2")
        picks = []
        for c_from in (a, b):
            members = (ds.y_train == c_from).nonzero().flatten()
            if half > len(members):
                raise UnlearnkitError(f"swap: class {c_from} has {len(members)} training examples, {half} asked "
                                      f"(K/2 of {k})")
            picks.append(members[torch.randperm(len(members), generator=rng)[:half]])
        y[picks[0]], y[picks[1]] = b, a
        m = torch.cat(picks)
        out = dict(classes=(a, b))
    elif kind == "noise":
        if len(args) != 1:
            raise UnlearnkitError(f"noise takes noise:K (K examples get a random other label); got {spec!r}")
        k = _count(args[0], "noise", n)
        m = torch.randperm(n, generator=rng)[:k]
        shift = torch.randint(1, ds.num_classes, (k,), generator=rng)
        y[m] = (ds.y_train[m] + shift) % ds.num_classes  # uniform over the other classes
        out = {}
    else:
        raise UnlearnkitError(f"unknown manipulation {kind!r}; write {SPEC_HELP}")
    manipulated = Dataset(ds.name, x, y, ds.train_ids, ds.x_val, ds.y_val, ds.val_ids, ds.num_classes)
    return Manipulation(spec, kind, manipulated, np.sort(m.numpy()), **out)


def identified(m: np.ndarray, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """For each fraction f in (0, 1], the identified subset S_F ⊂ M of round(f·|M|) examples (at least
    one): prefixes of one seeded permutation of M, so that smaller fractions are inside larger ones."""
    for f in fractions:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise UnlearnkitError(f"{option('fractions', flag='--identified')}: identified fractions must lie in (0, 1], "
                                  f"got {f}")
    order = np.random.default_rng([seed, MANIPULATE_TAG]).permutation(np.sort(m))
    return {f: np.sort(order[:max(1, int(round(f * len(m))))]) for f in fractions}


__all__ = ["KINDS", "Manipulation", "identified", "manipulate", "stamp"]
