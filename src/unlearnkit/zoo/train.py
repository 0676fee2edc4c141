"""Train (or load from cache) an ensemble of N models of one task in one vectorised pass."""
from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .. import __version__, backends
from ..budget import StepProfile, memory_limit
from ..data import Dataset
from ..engine import EpochStream, Forward, LossFn, Optim, Params, fit, uncounted
from ..engine.compute import current
from ..engine.flops import book
from ..errors import UnlearnkitError, option
from ..models import bpr_loss, build_model, init_params
from ..tasks import Task
from .cache import ZooCache, arm_key, stable_hash, tensor_digest

log = logging.getLogger(__name__)

# An arm's training is checkpointed at the end of an epoch at most this often: an interrupted run loses at
# most a minute, and a 100-model arm does not spend ~10% of its time writing checkpoints.
CHECKPOINT_SECONDS = 60.0

# Seed ranges of the arms; disjoint so that no two arms share a model.
ORIGINAL_SEEDS, ORACLE_SEEDS, RETRAIN_SEEDS = 0, 1_000_000, 2_000_000


def arm_seeds(base: int, n: int, run_seed: int = 0) -> list[int]:
    return [base + 10_000 * run_seed + i for i in range(n)]


def recipe_optim(task: Task) -> Optim:
    r = task.recipe
    return Optim(r.optimizer, r.lr, r.momentum, r.weight_decay, r.schedule)


def template(task: Task, dataset: Dataset) -> Forward:
    return Forward(build_model(task.model, dataset.input_shape, dataset.num_classes,
                               **task.model_kwargs, **dataset.model_kwargs).to("meta"))


def init_models(task: Task, dataset: Dataset, seeds: list[int]) -> Params:
    """Stacked fresh parameters of len(seeds) models of `task` on `dataset` (model i from seeds[i])."""
    return init_params(task.model, dataset.input_shape, dataset.num_classes, seeds, **task.model_kwargs,
                       **dataset.model_kwargs)


def cross_entropy_loss(forward: Forward, grad_penalty: float = 0.0):
    """The zoo's training loss of one model on a "train" batch: the mean cross-entropy ℓ, plus
    `grad_penalty`·‖∇_θ ℓ‖₂ when it is > 0 (the recipe's gradient restriction). The inner gradient is taken
    with torch.func.grad inside the loss, so the engine's backward differentiates through it (double
    backpropagation); the norm runs over all parameters at once."""
    def ce(params, x, y):
        return F.cross_entropy(forward(params, x), y)

    def loss(params, batch, frozen):
        x, y, _ = batch["train"]
        if not grad_penalty:
            return ce(params, x, y)
        g, value = torch.func.grad_and_value(ce)(params, x, y)
        return value + grad_penalty * torch.cat([v.flatten() for v in g.values()]).norm()
    return loss


def task_loss(task: Task, forward: Forward):
    """The objective the zoo trains `task`'s models with, for ONE model on its "train" batch: cross-entropy,
    or BPR for a recommendation task (rows [user, item, negatives], `data.interactions`)."""
    if task.objective == "cross-entropy":
        return cross_entropy_loss(forward, task.recipe.grad_penalty)

    def loss(params, batch, frozen):
        x, _, _ = batch["train"]
        return bpr_loss(forward(params, x))
    return loss


def zoo_family(task: Task, dataset: Dataset, positions: torch.Tensor) -> str:
    """Everything that makes an arm but its seeds: arms of one family differ only in which models they
    hold, and model i depends on its seed alone, so any arm of the family is assembled from others'."""
    return stable_hash({
        "task": task.describe(), "data": dataset.fingerprint, "positions": tensor_digest(positions),
        "torch": torch.__version__, "unlearnkit": __version__, "format": 4, "compute": current().key(),
    })


def zoo_key(task: Task, dataset: Dataset, positions: torch.Tensor, seeds: list[int]) -> str:
    return arm_key(zoo_family(task, dataset, positions), seeds)


@dataclass(frozen=True)
class Arm:
    """A trained ensemble, and what training it cost (the original cost when it came from the cache)."""

    params: Params
    seconds: float
    flops: int
    cached: bool
    earlier_seconds: float = 0.0  # of `seconds` and `flops`, what an interrupted earlier run spent (resumed
    earlier_flops: int = 0        # here): no FLOP counter or clock of this process saw it


def train_models(task: Task, dataset: Dataset, positions: torch.Tensor, seeds: list[int],
                 cache: ZooCache | None = None, label: str = "models", start: Params | None = None,
                 trainable: Collection[str] | None = None) -> Arm:
    """N = len(seeds) models of `task` trained on training-set `positions` ((n,) shared or (N, n)).

    Model i is initialised and shuffled from seeds[i] alone. With a cache, a finished zoo is loaded
    instead of trained, and an interrupted one resumes from its last whole epoch.
    `start` (N stacked models) and `trainable` (parameter names) make it one stage of a sequential
    recipe (S3T, methods/s3t.py): the recipe continues `start` instead of fresh models, and updates only
    the parameters named in `trainable` (the others stay as they are, bit for bit).
    """
    positions = _checked_positions(positions, len(dataset.y_train))
    if not len(seeds) or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise UnlearnkitError(f"seeds must be a non-empty list of whole numbers (one model each), got {seeds!r}")
    family = zoo_family(task, dataset, positions)
    key = arm_key(family, seeds)
    if start is not None or trainable is not None:  # plain arms keep their keys
        key = stable_hash({"arm": key, "trainable": sorted(trainable) if trainable is not None else None,
                           "start": {k: tensor_digest(v) for k, v in sorted(start.items())} if start else None})
    # models are assembled across arms only where model i depends on seed i alone: a plain arm whose models
    # share one training set (a per-model subset, an S3T stage's start, are tied to their arm)
    family = family if start is None and trainable is None and positions.dim() == 1 else None
    forward = template(task, dataset)
    mask = None if trainable is None else {k: torch.tensor(k in trainable) for k, _ in forward.module.named_parameters()}
    init = (lambda: start) if start is not None else (lambda: init_models(task, dataset, seeds))
    return train_cached(
        key, task_loss(task, forward), init,
        EpochStream(positions, seeds, task.recipe.batch_size), (dataset.x_train, dataset.y_train),
        task.recipe.epochs, recipe_optim(task), cache, label, {"task": task.name, "seeds": seeds}, mask, family)


def _checked_positions(positions, n: int) -> torch.Tensor:
    """Training-set positions ((n,) or (N, n)) as a long tensor: whole numbers in range, some of them."""
    given = torch.as_tensor(positions)
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool or given.dim() not in (1, 2):
        raise UnlearnkitError(f"positions must be whole training-set positions, (n,) or (N, n), got {given.dtype} of "
                              f"shape {tuple(given.shape)}")
    if not given.numel() or given.min() < 0 or given.max() >= n:
        raise UnlearnkitError(f"positions must be some of the training set's {n} positions (0 … {n - 1}), got "
                              + (f"{int(given.min())} … {int(given.max())}" if given.numel() else "none"))
    return given.to(torch.long)


def train_cached(key: str, loss: LossFn, init: Callable[[], Params], stream: EpochStream,
                 data: tuple[torch.Tensor, torch.Tensor], epochs: float, optim: Optim, cache: ZooCache | None,
                 label: str, manifest: dict, update_mask: Params | None = None, family: str | None = None) -> Arm:
    """The zoo's one path from a key to a trained ensemble: load it if cached, else train it with `fit`
    — in one pass, or in chunks of models when one pass would not fit in memory (`--max-memory`) or
    when a Ray backend spreads them — count its FLOPs, and cache it under `key`. `update_mask`: what
    `fit` may update (one 0/1 tensor per parameter, shared by all models). `family` (with key =
    `arm_key(family, seeds)`, for arms whose model i depends on seed i alone, bit for bit): models of the
    family's cached arms are reused by seed, so N = 16 after N = 100 trains nothing and N = 100 after
    N = 16 trains the 84 new models only."""
    n = len(stream.seeds)
    if cache is not None and (hit := _load(cache, key, n, label)) is not None:
        return hit
    if current().is_cuda:  # batched GPU kernels may choose their algorithm by the number of models: models
        family = None     # are reused only where they are the same bit for bit, on the CPU (tests/test_zoo.py)
    init = _once(init)  # the N models are built once, whether measured, chunked or trained
    if cache is not None and family is not None:
        manifest = {**manifest, "family": family}
        if (arm := _assembled(key, family, loss, init, stream, data, epochs, optim, cache, label, manifest,
                              update_mask)) is not None:
            return arm
    size = models_per_chunk(loss, init, stream, data, label)
    if size >= n and backends.current().name == "local":
        arm = _one_pass(key, loss, init, stream, data, epochs, optim, cache, label, manifest, update_mask)
    else:
        arm = _chunked(key, loss, init, stream, data, epochs, optim, cache, label, manifest, size, update_mask)
    if cache is not None and family is not None:
        cache.register(family, key)
    return arm


def _assembled(key, family, loss, init, stream, data, epochs, optim, cache, label, manifest, update_mask) -> Arm | None:
    """The arm `key` from the models its family's cached arms hold (by seed), the missing ones trained as
    an arm of their own; stored under `key`. None when no cached arm holds any of its seeds. Each reused
    model costs its arm's seconds and FLOPs per model (spent by an earlier run, as a resumed run's are)."""
    seeds = stream.seeds
    holder = {}
    for other, its_seeds in cache.members(family):
        for j, s in enumerate(its_seeds):
            holder.setdefault(s, (other, j))
    found = [i for i, s in enumerate(seeds) if s in holder]
    if not found:
        return None
    entries = {k: cache.load(k, quiet=True) for k in {holder[seeds[i]][0] for i in found}}
    if any(hit is None for hit in entries.values()):
        return None  # damaged meanwhile: train the arm as if nothing were cached
    rows, seconds, flops = {}, 0.0, 0.0
    for i in found:
        other, j = holder[seeds[i]]
        params, saved = entries[other]
        m = len(next(iter(params.values())))
        rows[i] = {name: v[j] for name, v in params.items()}
        seconds, flops = seconds + saved.get("seconds", 0.0) / m, flops + saved.get("flops", 0) / m
    missing = [i for i in range(len(seeds)) if i not in rows]
    log.info("%s: %d of %d models from cached arms of the same family%s", label, len(found), len(seeds),
             f"; training the other {len(missing)}" if missing else "")
    new = None
    if missing:
        new = train_cached(arm_key(family, [seeds[i] for i in missing]), loss,
                           lambda: {k: v[missing] for k, v in init().items()}, stream.subset(missing), data, epochs,
                           optim, cache, f"{label} ({len(missing)} of {len(seeds)} new)", manifest, update_mask)
        rows.update({i: {name: v[t] for name, v in new.params.items()} for t, i in enumerate(missing)})
    params = {name: torch.stack([rows[i][name] for i in range(len(seeds))]) for name in rows[found[0]]}
    arm = Arm(params, seconds + (new.seconds if new else 0.0), int(flops + (new.flops if new else 0)), new is None,
              seconds + (new.earlier_seconds if new else 0.0), int(flops + (new.earlier_flops if new else 0)))
    cache.save(key, params, _manifest(manifest, label, stream, arm, 0) | {"assembled": True})
    cache.register(family, key)
    if new is not None:  # its models now live in this arm
        cache.remove(arm_key(family, [seeds[i] for i in missing]))
    return arm


def _once(make: Callable[[], Params]) -> Callable[[], Params]:
    """`make`, called at most once (a plain closure, so that Ray can ship it to its tasks)."""
    built: list[Params] = []

    def once() -> Params:
        if not built:
            built.append(make())
        return built[0]
    return once


def models_per_chunk(loss: LossFn, init: Callable[[], Params], stream: EpochStream,
                     data: tuple[torch.Tensor, torch.Tensor], label: str) -> int:
    """How many models of this arm one training pass may hold, from one model's measured step (weights,
    their optimizer copies, a minibatch's activations) and the memory limit of the run's compute."""
    limit = memory_limit()
    if limit is None:
        return len(stream.seeds)
    with uncounted():
        one = {k: v[:1] for k, v in init().items()}
        profile = StepProfile.measure(loss, one, data, stream.batch_size)
    need = profile.model_bytes(stream.batch_size)
    if need > limit:
        raise UnlearnkitError(f"{label}: one model's training step needs about {need / 2 ** 20:,.0f} MiB and the memory "
                              f"limit is {limit / 2 ** 20:,.0f} MiB: raise {option('max_memory')} (or free memory on "
                              f"{current().device})")
    return profile.models_within(limit, stream.batch_size, current().ensemble)


def _one_pass(key, loss, init, stream, data, epochs, optim, cache, label, manifest, update_mask=None) -> Arm:
    """Train (or resume) all of an arm's models in one vectorised pass; training holds the entry's lock:
    a concurrent run asking for the same ensemble waits and loads it."""
    n = len(stream.seeds)
    if cache is None:
        return _train(loss, init, stream, data, epochs, optim, label, update_mask=update_mask)
    with cache.lock(key, label):
        if (hit := _load(cache, key, n, label, quiet=True)) is not None:  # another run finished it meanwhile
            return hit
        resume = cache.load_checkpoint(key)
        if resume:
            log.info("%s: resuming from epoch %d", label, resume[0].epoch)
        arm = _train(loss, init, stream, data, epochs, optim, label, resume,
                     lambda ckpt, spent: cache.save_checkpoint(key, ckpt, spent), update_mask)
        cache.save(key, arm.params, _manifest(manifest, label, stream, arm, resume[0].epoch if resume else 0))
    return arm


def _chunked(key, loss, init, stream, data, epochs, optim, cache, label, manifest, size: int,
             update_mask=None) -> Arm:
    """Train an arm chunk by chunk (each chunk is a whole zoo entry of its own, so an interrupted arm
    resumes from its finished chunks and the running chunk's last epoch), then store it as one entry.
    Model i depends on its seed alone: on a CPU the arm equals one pass's, bit for bit; on a CUDA GPU only
    in distribution (batched kernels chosen by the number of models round differently, and the difference
    grows over training: benchmarks/gpu_consistency.py)."""
    n = len(stream.seeds)
    parts = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    keys = [stable_hash({"arm": key, "models": [p[0], p[-1] + 1]}) for p in parts]
    labels = [f"{label} [{p[0]}:{p[-1] + 1}]" for p in parts]
    arms: dict[int, Arm] = {}
    for j in range(len(parts)):
        if cache is not None and (hit := _load(cache, keys[j], len(parts[j]), labels[j], quiet=True)) is not None:
            arms[j] = hit
    todo = [j for j in range(len(parts)) if j not in arms]

    def piece(j: int):
        return (lambda: {k: v[parts[j]] for k, v in init().items()}), stream.subset(parts[j])

    backend = backends.current()
    if backend.name == "local":  # each chunk through the one-pass path: its lock, checkpoints and cache entry
        for j in todo:
            part_init, part_stream = piece(j)
            arms[j] = _one_pass(keys[j], loss, part_init, part_stream, data, epochs, optim, cache, labels[j], manifest,
                                update_mask)
    else:
        def remote(j: int) -> Arm:
            part_init, part_stream = piece(j)
            return _train(loss, part_init, part_stream, data, epochs, optim, labels[j], update_mask=update_mask)
        for j, arm in backend.map(remote, todo, current()):
            book(arm.flops, "trained by Ray tasks")  # the driver's counters did not see it
            arms[j] = arm
            if cache is not None:  # only the driver writes the cache, one whole chunk at a time
                cache.save(keys[j], arm.params, _manifest(manifest, labels[j], piece(j)[1], arm, 0))
    ordered = [arms[j] for j in range(len(parts))]
    params = {k: torch.cat([a.params[k] for a in ordered]) for k in ordered[0].params}
    arm = Arm(params, sum(a.seconds for a in ordered), sum(a.flops for a in ordered),
              all(a.cached for a in ordered), sum(a.seconds if a.cached else a.earlier_seconds for a in ordered),
              sum(a.flops if a.cached else a.earlier_flops for a in ordered))
    if cache is not None:
        cache.save(key, params, _manifest(manifest, label, stream, arm, 0) | {"chunks": len(parts)})
        for k in keys:
            cache.remove(k)
    return arm


def _manifest(manifest: dict, label: str, stream: EpochStream, arm: Arm, resumed_from: int) -> dict:
    return {**manifest, "label": label, "seeds": list(stream.seeds), "n_train": stream.indices.shape[-1],
            "seconds": arm.seconds,
            "flops": arm.flops, "resumed_from_epoch": resumed_from, "compute": current().key(),
            "torch": torch.__version__, "unlearnkit": __version__}


def _load(cache: ZooCache, key: str, n: int, label: str, quiet: bool = False) -> Arm | None:
    if (hit := cache.load(key, n, quiet)) is None:
        return None
    params, saved = hit
    log.info("%s: loaded %d cached models (%s)", label, next(iter(params.values())).shape[0], cache.dir(key))
    return Arm(params, float(saved.get("seconds", 0.0)), int(saved.get("flops", 0)), cached=True)


def _train(loss, init, stream, data, epochs, optim, label, resume=None, checkpoint=None, update_mask=None) -> Arm:
    """Train (or finish training) an ensemble; its cost includes what the checkpoint had already spent."""
    ckpt, before = resume or (None, {"seconds": 0.0, "flops": 0})
    start = time.perf_counter()
    with uncounted():  # building the models is not training them (and a resumed run builds them too)
        initial = init()
    with FlopCounterMode(display=False) as counter:
        def spent() -> dict:
            return {"seconds": before["seconds"] + time.perf_counter() - start,
                    "flops": before["flops"] + int(counter.get_total_flops())}
        params = fit(loss, initial, {"train": stream}, data, steps=stream.steps(epochs), optim=optim, resume=ckpt,
                     update_mask=update_mask,
                     on_epoch=(lambda c: checkpoint(c, spent())) if checkpoint else None,
                     checkpoint_every=CHECKPOINT_SECONDS,
                     desc=f"train {label} ×{len(stream.seeds)}")
    total = spent()
    return Arm(params, total["seconds"], total["flops"], False, before["seconds"], before["flops"])
