"""What every unlearning method gets (a Context) and how methods are registered by name.

A method is one function `fn(ctx, hp) -> Params` (or an `Ensemble`, below) plus its frozen hyperparameter
dataclass. It writes its loss for ONE model and hands it to `ctx.fit`, which runs it on all N originals at
once through the shared engine: no method contains a training loop or knows about ensembles.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..budget import check_epochs
from ..data import Dataset
from ..engine import EpochStream, Forward, LossFn, Optim, Params, fit
from ..engine.compute import current
from ..errors import UnlearnkitError
from ..tasks import Task
from ..zoo import RETRAIN_SEEDS, Arm, ZooCache, train_models


@dataclass(frozen=True)
class HParams:
    """Base of every method's hyperparameters. Subclasses list range checks in `_checks` and the ranges
    `unlearnkit tune` searches in `search_space`: name -> ("log" | "float" | "int", low, high)."""

    search_space: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UnlearnkitError(f"{type(self).__name__}.{f.name}={value!r} must be a finite number")
            if f.name == "epochs":
                check_epochs(value, f"{type(self).__name__}.epochs")
        for name, ok, rule in self._checks():
            if not ok:
                raise UnlearnkitError(f"{type(self).__name__}.{name}={getattr(self, name)!r} is out of range: "
                                      f"{rule}")

    def _checks(self) -> list[tuple[str, bool, str]]:
        return []

    def at_budget(self, epochs: float) -> dict:
        """The fields that give these hyperparameters a budget of `epochs` (`--budgets`): the epochs, and
        whatever is bounded by them (override it)."""
        return {"epochs": epochs}

    def check_setting(self, task, dataset, forget: np.ndarray, seed: int) -> None:
        """Raise UnlearnkitError if these hyperparameters cannot work on this task, data and forget set —
        called before any model is trained, so a run never fails after its compute (override it)."""


@dataclass(frozen=True)
class LoopParams(HParams):
    """Budget and optimizer of a method that trains (epochs count passes over its primary stream)."""

    epochs: float = 2.0
    lr: float = 0.01
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4

    search_space: ClassVar[dict[str, tuple]] = {"lr": ("log", 1e-4, 0.1), "epochs": ("float", 0.5, 5.0)}

    def _checks(self):
        return [("epochs", self.epochs > 0, "must be > 0"), ("lr", self.lr > 0, "must be > 0"),
                ("batch_size", self.batch_size >= 1, "must be >= 1"),
                ("optimizer", self.optimizer in ("sgd", "adam"), "must be 'sgd' or 'adam'"),
                ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
                ("weight_decay", self.weight_decay >= 0, "must be >= 0")]

    def optim(self) -> Optim:
        return Optim(self.optimizer, self.lr, self.momentum, self.weight_decay, "constant")


@dataclass
class Context:
    """Everything a method may use: the task, the data, the N original models and the split."""

    task: Task
    dataset: Dataset
    forward: Forward
    originals: Params
    forget: np.ndarray   # positions in the training set
    retain: np.ndarray
    seeds: list[int]     # one per original model: the source of each model's method randomness
    run_seed: int = 0
    cache: ZooCache | None = None
    # Cost of zoo training that a cache hit (or a resumed checkpoint) saved: counted as the method's cost all the same.
    cached_seconds: float = field(default=0.0, init=False)
    cached_flops: int = field(default=0, init=False)
    # Work that is not unlearning (see `uncharged`): subtracted from the method's cost.
    uncharged_seconds: float = field(default=0.0, init=False)
    uncharged_flops: int = field(default=0, init=False)

    @property
    def n_models(self) -> int:
        return len(self.seeds)

    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the whole training set; streams index them by position."""
        return self.dataset.x_train, self.dataset.y_train

    @staticmethod
    def on_device(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`tensors` on the run's device: tables a loss indexes with a batch's positions (which arrive on
        that device), for tables a closure holds rather than `frozen` (which `fit` places itself)."""
        dev = current().device
        return tuple(t.to(dev) for t in tensors)

    def stream(self, name: str, positions, batch_size: int) -> EpochStream:
        """Per-model shuffled batches of `positions`, seeded by model and stream name."""
        return EpochStream(torch.as_tensor(positions), self.seeds, batch_size, tag=zlib.crc32(name.encode()))

    def fit(self, loss: LossFn, streams: dict[str, EpochStream], epochs: float, optim: Optim,
            params: Params | None = None, desc: str = "", **kwargs) -> Params:
        """Run `loss` from the originals (or `params`) for `epochs` of the first stream."""
        primary = next(iter(streams.values()))
        return fit(loss, self.originals if params is None else params, streams, self.train_data,
                   primary.steps(epochs), optim, desc=desc, **kwargs)

    def one_step(self, loss: LossFn, name: str, positions, batch_size: int, optim: Optim, params: Params,
                 carry: dict, **kwargs) -> Params:
        """One optimizer step of `loss` on a batch of a fresh per-model shuffle (stream `name`) of
        `positions`; `carry` keeps the optimizer's state between calls. For methods that alternate
        optimisers or choose among their steps (AC↯DC, ERA's fine-tuning)."""
        stream = self.stream(name, positions, batch_size)
        return self.fit(loss, {name: stream}, 1 / stream.steps_per_epoch, optim, params=params, carry=carry,
                        desc=None, **kwargs)

    @staticmethod
    def keep_better(best: Params | None, best_score: torch.Tensor | None, params: Params,
                    score: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """Per model, the better (higher `score`) of the kept `best` and `params`: for methods that choose
        each model's step on held-out data (AC↯DC, ERA's fine-tuning). `best` None: the first candidate."""
        if best is None:
            return {k: v.clone() for k, v in params.items()}, score
        better = score > best_score
        for k in best:
            best[k][better] = params[k][better]
        return best, torch.where(better, score, best_score)

    def train_from_scratch(self, positions, seeds: list[int], label: str, task: Task | None = None) -> Params:
        """Train fresh models of the task's recipe through the (cached) zoo; or of `task`, a variant of this
        classifier task (IAU's gradient-restricted recipe)."""
        positions = torch.as_tensor(positions)
        return self.counted(self.train_arm(positions, seeds, label) if task is None
                             else train_models(task, self.dataset, positions, seeds, self.cache, label))

    def train_stage(self, positions, seeds: list[int], start: Params | None, trainable: Collection[str],
                    label: str) -> Params:
        """One stage of a sequential recipe (S3T's slice-wise training) through the (cached) zoo: the task's
        recipe on `positions`, continuing `start` (fresh models of `seeds` when None) and updating only the
        parameters named in `trainable`."""
        return self.counted(train_models(self.task, self.dataset, torch.as_tensor(positions), seeds, self.cache,
                                          label, start, trainable))

    def counted(self, arm: Arm) -> Params:
        """`arm`'s models; what a cache hit (or a resumed checkpoint) saved is counted as spent all the same
        (every arm a method trains: through the zoo here, or under its own key, as ERA's)."""
        self.cached_seconds += arm.seconds if arm.cached else arm.earlier_seconds
        self.cached_flops += arm.flops if arm.cached else arm.earlier_flops
        return arm.params

    def train_arm(self, positions: torch.Tensor, seeds: list[int], label: str) -> Arm:
        return train_models(self.task, self.dataset, positions, seeds, self.cache, label)

    def charged(self, fn: MethodFn, hp: HParams) -> tuple[object, dict]:
        """Run method `fn` on this context; return its result and its cost: wall seconds and counted
        FLOPs, plus zoo training that a cache hit saved, minus the work it marked `uncharged`."""
        start = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            result = fn(self, hp)
        return result, {"seconds": time.perf_counter() - start + self.cached_seconds - self.uncharged_seconds,
                        "flops": counter.get_total_flops() + self.cached_flops - self.uncharged_flops}

    def uncharged(self, work: Callable[[], object]):
        """Run `work` that is not part of unlearning — building what the deployed system already has
        (SISA's shard models) or a method's own reference oracles — without charging its cost."""
        cached = self.cached_seconds, self.cached_flops
        start = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            out = work()
        self.uncharged_seconds += time.perf_counter() - start
        self.uncharged_flops += counter.get_total_flops()
        self.cached_seconds, self.cached_flops = cached
        return out


@dataclass(frozen=True)
class Ensemble:
    """A method's result when its N unlearned models are not one stack of parameters (SISA's shard
    ensembles): a function giving their logits (N, examples, classes) on inputs x, and, for a method
    whose exact counterpart is not plain retraining, the logits of the oracles it must be judged by."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    oracle_logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    reference: str = "oracles"


MethodFn = Callable[[Context, HParams], "Params | Ensemble"]


@dataclass(frozen=True)
class Setting:
    """What a run knows of a method's setting before anything trains: enough for the arms it will train
    from scratch (`Method.scratch`). `data` is the run's Dataset (classifiers) or TofuData (LMs); `seeds`
    the originals' seeds."""

    task: object
    data: object
    forget: np.ndarray
    retain: np.ndarray
    seeds: list[int]
    run_seed: int = 0


@dataclass(frozen=True)
class ScratchArm:
    """An arm of N models a method trains from scratch with the task's recipe, for a run's budget
    (`runs.run_budget`, which counts nothing a cache holds): with `key` None, the zoo's arm on `positions`
    of `seeds` (default: `seed_base`'s arm seeds; partly cached families count only their missing
    models), of the run's task or of the zoo `family` given (a variant of the task: IAU's restricted
    recipe); else an arm the method caches under its own `key` (ERA's widened, routed models). Its steps
    cost `scale` times the task model's."""

    positions: torch.Tensor
    seed_base: int = RETRAIN_SEEDS
    key: str | None = None
    scale: float = 1.0
    seeds: tuple[int, ...] | None = None
    family: str | None = None


def retrained_on_retain(hp: HParams, setting: Setting) -> list[ScratchArm]:
    """The `scratch` of filtering: the retrain seeds on S_R (`retrain` itself is the noise floor, a reference
    arm every budget counts, on the oracles' training set)."""
    return [ScratchArm(torch.as_tensor(setting.retain))]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    hparams: type[HParams]
    summary: str
    scratch: Callable[[HParams, Setting], list[ScratchArm]] | None = None  # arms it trains from scratch

    @property
    def ensemble(self) -> bool:
        """Whether the method returns an `Ensemble` (its function is annotated so: SISA, S3T, IAU), whose rows
        a study's probe does not measure."""
        return self.fn.__annotations__.get("return") in (Ensemble, "Ensemble")


REGISTRY: dict[str, Method] = {}      # classifier methods
LM_REGISTRY: dict[str, Method] = {}   # language-model methods (methods/lm/)
REC_REGISTRY: dict[str, Method] = {}  # recommendation methods, BPR objectives (methods/rec/)


def summary(doc: str | None) -> str:
    """A docstring's first sentence, which may wrap: its lines up to the first that ends one."""
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
        if line.rstrip().endswith("."):
            break
    return " ".join(lines)


def register(name: str, hparams: type[HParams] = HParams, registry: dict[str, Method] = REGISTRY,
             scratch: Callable[[HParams, Setting], list[ScratchArm]] | None = None, replace: bool = False):
    """Register `fn` under `name` (in the classifier registry, or the language-model or recommendation
    one); its docstring's first line is the summary `unlearnkit list` shows. `scratch` declares the arms
    the method trains from scratch, for budgets. A name is registered once, unless `replace` (a notebook
    cell run again)."""
    def wrap(fn: MethodFn) -> MethodFn:
        if name in registry and not replace:
            raise ValueError(f"method {name!r} is registered already; register({name!r}, ..., replace=True) "
                             "replaces it")
        registry[name] = Method(name, fn, hparams, summary(fn.__doc__), scratch)
        return fn
    return wrap


def get_method(name: str, registry: dict[str, Method] = REGISTRY) -> Method:
    if name not in registry:
        raise UnlearnkitError(f"unknown method {name!r}; known methods: {', '.join(registry)}")
    return registry[name]


def make_hparams(name: str, overrides: dict[str, str | float | int] | None = None,
                 registry: dict[str, Method] = REGISTRY) -> HParams:
    """The method's hyperparameters with `overrides` applied (strings are cast to the field's type)."""
    cls = get_method(name, registry).hparams
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise UnlearnkitError(f"method {name!r} has no hyperparameter {key!r}; valid: {valid}")
        values[key] = _cast(raw, fields[key].type, f"{name}.{key}")
    try:
        return cls(**values)
    except UnlearnkitError as err:  # name the setting as the user writes it (--set finetune.lr=...)
        raise UnlearnkitError(str(err).replace(f"{cls.__name__}.", f"{name}.", 1)) from None


def _cast(raw, annotation, where: str):
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "str")
    kind = {"int": int, "float": float, "str": str, "bool": _bool}.get(name, str)
    try:
        return kind(raw)
    except ValueError:
        raise UnlearnkitError(f"{where}: cannot read {raw!r} as {kind.__name__}") from None


def _bool(raw) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("1", "true", "yes"):
        return True
    if str(raw).lower() in ("0", "false", "no"):
        return False
    raise ValueError(raw)
