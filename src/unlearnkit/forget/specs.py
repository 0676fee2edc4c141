"""Forget sets from short specs such as `random:100`, `random:0.01`, `class:3`, `class:3:0.5`, `ids:4,8,15`,
`worst:100` (hard to unlearn, forget/worst.py).

Amounts are a count, written without a decimal point (`100`), or a fraction, written with one and in
(0, 1] (`0.01`, `1.0`): the decimal point, not the value, tells them apart (see `parse_amount`).

A forget set is a sorted array of positions in the task's training set, drawn from the run's seed, and
carries the examples' stable ids so that it can be saved with the run and rebuilt exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset, Interactions
from ..errors import UnlearnkitError, option
from .interactions import REC_KINDS
from .parse import COUNT, by_ids, draw_rng, resolve_amount, whole
from .worst import top_k


@dataclass(frozen=True, eq=False)
class ForgetSet:
    spec: str
    seed: int
    positions: np.ndarray  # sorted positions in the training set
    ids: np.ndarray        # the same examples' stable ids

    def __len__(self) -> int:
        return len(self.positions)

    def retain_positions(self, n_train: int) -> np.ndarray:
        keep = np.ones(n_train, dtype=bool)
        keep[self.positions] = False
        return np.flatnonzero(keep)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "seed": self.seed, "size": len(self), "ids": self.ids.tolist()}


def _random(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    if len(args) != 1:
        raise UnlearnkitError("random takes one argument: random:K or random:FRACTION")
    k = resolve_amount(args[0], len(ds.y_train), "random")
    if k > len(ds.y_train):
        raise UnlearnkitError(f"random:{args[0]} asks for {k} examples; the training set has {len(ds.y_train)}")
    return torch.randperm(len(ds.y_train), generator=draw_rng(seed))[:k].numpy()


def _class(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    if len(args) not in (1, 2):
        raise UnlearnkitError("class takes class:C, class:C:K (a count) or class:C:F (a fraction, e.g. 0.5)")
    if not COUNT.fullmatch(args[0].strip()):
        raise UnlearnkitError(f"class: {args[0]!r} is not a class index; write class:C with C a whole number "
                              f"in 0..{ds.num_classes - 1}")
    c = int(args[0])
    if c >= ds.num_classes:
        raise UnlearnkitError(f"class {c} has no training examples: it is out of range, {ds.name} has classes "
                              f"0..{ds.num_classes - 1}")
    members = (ds.y_train == c).nonzero().flatten()
    if len(members) == 0:
        raise UnlearnkitError(f"class {c} has no training examples in {ds.name} "
                              f"(classes present: {sorted(ds.y_train.unique().tolist())})")
    k = resolve_amount(args[1], len(members), f"class {c}") if len(args) == 2 else len(members)
    if k > len(members):
        raise UnlearnkitError(f"class {c} has only {len(members)} training examples, {k} asked")
    return members[torch.randperm(len(members), generator=draw_rng(seed))[:k]].numpy()


def _pc(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """EasyDUB's clustered sets: the examples whose rows of the train×train datamodel matrix project
    highest (top), lowest (bottom) or both on its K-th principal component."""
    if len(args) != 3 or args[1] not in ("top", "bottom", "both"):
        raise UnlearnkitError("pc takes pc:K:top|bottom|both:COUNT, e.g. pc:1:top:100")
    k, count = whole(args[0], "pc", "K"), whole(args[2], "pc")
    if k < 1 or count < 1:
        raise UnlearnkitError("pc: the component K and COUNT must be >= 1")
    if resources is None:
        raise UnlearnkitError("pc forget sets need datamodels: build them through a run (unlearnkit run)")
    proj = resources.principal_projections(k)[:, k - 1].numpy()
    order = np.argsort(-proj, kind="stable")
    if args[1] == "both" and 2 * count > len(order) or count > len(order):
        raise UnlearnkitError(f"pc: {count} examples asked; the training set has {len(order)}")
    pick = {"top": order[:count], "bottom": order[::-1][:count]}
    pick["both"] = np.concatenate([pick["top"], pick["bottom"]])
    return pick[args[1]]


def _near(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """The COUNT nearest training examples (itself included) to example ID in the original model's
    embedding space (its penultimate layer), by Euclidean distance."""
    if len(args) != 2:
        raise UnlearnkitError("near takes near:ID:COUNT, e.g. near:123:100")
    anchor_id, count = whole(args[0], "near", "ID"), whole(args[1], "near")
    anchor = (ds.train_ids == anchor_id).nonzero().flatten()
    if not len(anchor):
        raise UnlearnkitError(f"near: example id {anchor_id} is not in the training set (ids are the dataset's "
                              "stable ids, as forget_set.json lists them)")
    anchor = int(anchor[0])
    if not 1 <= count <= len(ds.y_train):
        raise UnlearnkitError(f"near: COUNT must be in [1, {len(ds.y_train)}]")
    if resources is None:
        raise UnlearnkitError("near forget sets need a trained model: build them through a run (unlearnkit run)")
    emb = resources.embeddings()
    dist = (emb - emb[anchor]).pow(2).sum(1)
    return torch.argsort(dist, stable=True)[:count].numpy()


def _hard_count(kind: str, args: list[str], ds: Dataset, resources) -> int:
    """K of the hard-to-unlearn kinds (`worst:K`, `lowest-loss:K`, ...): a count in [1, n − 1], checked
    before anything is trained."""
    if len(args) != 1:
        raise UnlearnkitError(f"{kind} takes {kind}:K, K a count of examples without a decimal point, e.g. {kind}:100")
    k, n = whole(args[0], kind, "K"), len(ds.y_train)
    if not 1 <= k < n:
        raise UnlearnkitError(f"{kind}:{k} asks for {k} examples; the training set has {n}, so K must be in "
                              f"[1, {n - 1}] (at least one example is retained)")
    if resources is None:
        raise UnlearnkitError(f"{kind} forget sets need trained models: build them through a run (unlearnkit run)")
    return k


def _worst(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """Fan et al.'s worst-case set: the K examples hardest to unlearn, by bi-level search from the run's
    random:K set (forget/worst.py)."""
    k = _hard_count("worst", args, ds, resources)
    return resources.bilevel(k, _random(args, ds, seed, None), hardest=True)


def _easy(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """The reverse of worst:K, the K examples easiest to unlearn."""
    k = _hard_count("easy", args, ds, resources)
    return resources.bilevel(k, _random(args, ds, seed, None), hardest=False)


def _lowest_loss(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """The K examples of lowest mean loss under the run's originals."""
    k = _hard_count("lowest-loss", args, ds, resources)
    return top_k(-resources.original_losses().numpy(), k)


def _memorised(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """The K examples of highest counterfactual memorisation, from the datamodels' subset models."""
    k = _hard_count("memorised", args, ds, resources)
    score, margin_gap = resources.memorisation()
    known = int(score.isfinite().sum())
    if known < k:
        raise UnlearnkitError(f"memorised:{k}: only {known} examples were both in and out of some subset model's "
                              f"training set; raise {option('datamodel_models')}")
    return top_k(score.nan_to_num(-torch.inf).numpy(), k, then=margin_gap.nan_to_num(-torch.inf).numpy())


def _influence(args: list[str], ds: Dataset, seed: int, resources) -> np.ndarray:
    """The K examples of highest self-influence (the datamodels' diagonal)."""
    k = _hard_count("influence", args, ds, resources)
    return top_k(resources.datamodels().self_influence().numpy(), k)


KINDS = {
    "random": (_random, "random:K (K examples) or random:F (a fraction F of the training set); a count K has no "
                        "decimal point (100), a fraction has one and lies in (0, 1] (0.01)"),
    "class": (_class, "class:C (all of class C), class:C:K (K of its examples) or class:C:F (a fraction, with a "
                      "decimal point: class:3:0.5; class:3:1.0 is all of class 3)"),
    "ids": (by_ids, "ids:4,8,15 or ids:@FILE (stable example ids, each once; FILE holds ids separated by commas or "
                  "white space, a JSON list, or a run's forget_set.json)"),
    "pc": (_pc, "pc:K:top|bottom|both:COUNT (extremes on the K-th principal component of the datamodel matrix; "
                "K and COUNT without a decimal point)"),
    "near": (_near, "near:ID:COUNT (the COUNT nearest neighbours of example ID in the model's embedding space; "
                    "COUNT without a decimal point)"),
    "worst": (_worst, "worst:K (the K examples hardest to unlearn: Fan et al. 2024's bi-level search, weights "
                      "w in [0,1]^n summing to K, sign-SGD fine-tuning on the rest below, the forget loss after it "
                      "minimised above, from random:K; K without a decimal point)"),
    "easy": (_easy, "easy:K (the reverse of worst:K: the forget loss after unlearning maximised)"),
    "lowest-loss": (_lowest_loss, "lowest-loss:K (the K examples of lowest mean loss under the originals: typical, "
                                  "hard to unlearn in Fan et al.'s sense)"),
    "memorised": (_memorised, "memorised:K (the K examples of highest counterfactual memorisation, correctness when "
                              "trained on minus when not, from --datamodel-models subset models)"),
    "influence": (_influence, "influence:K (the K examples of highest self-influence, the datamodels' diagonal; "
                              "--datamodels DIR or fitted on the fly)"),
}

USES_DATAMODELS = ("pc", "influence")  # the kinds that read --datamodels (or fit datamodels when none are given)


def build_forget_set(spec: str, dataset: Dataset, seed: int = 0, resources=None) -> ForgetSet:
    """Parse `spec` and draw the forget set from `seed`; every way it can be wrong raises UnlearnkitError.
    Interaction data (a recommendation task) takes its own kinds (`interactions.REC_KINDS`).

    `resources` gives what clustered and hard-to-unlearn specs need, lazily: `principal_projections(k)`
    of the datamodel matrix (pc:), `embeddings()` of the training set (near:), `bilevel(k, start,
    hardest)` (worst:, easy:), `original_losses()` (lowest-loss:), `memorisation()` (memorised:) and
    `datamodels()` (influence:); see experiment.ForgetResources.
    """
    kinds = REC_KINDS if isinstance(dataset, Interactions) else KINDS
    kind, *args = spec.strip().split(":")
    if kind not in kinds or not args:
        raise UnlearnkitError(f"malformed forget spec {spec!r}; expected one of: "
                              + "; ".join(help_ for _, help_ in kinds.values()))
    positions = np.unique(kinds[kind][0](args, dataset, seed, resources))
    n = len(dataset.y_train)
    if len(positions) == 0:
        raise UnlearnkitError(f"forget spec {spec!r} selects no examples")
    if len(positions) >= n:
        raise UnlearnkitError(f"forget spec {spec!r} selects {len(positions)} of {n} training examples: "
                              "nothing would be left to retain")
    return ForgetSet(spec, seed, positions, dataset.train_ids[positions].numpy())
