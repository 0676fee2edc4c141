"""S3T: exact unlearning by sequential slice-wise training, and its deletion capacity against SISA's.

Chowdhury, Choromanski, Sehanobish, Dubey & Chaturvedi, "Towards Scalable Exact Machine Unlearning Using
Parameter-Efficient Fine-Tuning" (ICLR 2025, arXiv 2406.16257; reference code brcsomnath/S3T). Each SISA
shard is cut into L slices trained in sequence: stage j trains the j-th layer block from the top on slices
S_1..S_j with the other blocks fixed (the paper's Figure 2, left), and every stage's model is kept. A
deletion from slice S_j deactivates the stages trained on it or after it: the model after stage j−1 never
saw the point, with no retraining. B orders of the slices are trained per shard (sequence-aware training),
so a shard keeps serving the order whose first deleted slice comes latest (Figure 2, right).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..engine import Params, derived_seed
from ..errors import UnlearnkitError
from ..zoo import ORACLE_SEEDS, arm_seeds, template
from .base import Context, Ensemble, HParams, register
from .sisa import shard_ensemble, sliced_partition

SEQUENCE_TAG = 0x5337
SISA_ORDERS = [(0,)]  # SISA in the paper's comparison: one model per shard, down (retraining) at its first deletion


@dataclass(frozen=True)
class S3TParams(HParams):
    shards: int = 5
    slices: int = 2   # L: one layer block per slice, so at most the model's number of layers
    budget: int = 2   # B: slice orders trained per shard, at most L!

    def _checks(self):
        return [("shards", 1 <= self.shards <= 1000, "must be in [1, 1000]"),
                ("slices", 1 <= self.slices <= 100, "must be in [1, 100]"),
                ("budget", 1 <= self.budget <= self.max_budget, f"must be in [1, {self.max_budget}] (slices! orders, "
                                                                  "at most 1000)")]

    @property
    def max_budget(self) -> int:
        return min(math.factorial(max(1, min(self.slices, 7))), 1000)  # 7! > 1000

    def check_setting(self, task, dataset, forget, seed) -> None:
        stage_parameters(template(task, dataset).module, self.slices)
        n_train = len(dataset.y_train)
        if self.shards * self.slices > n_train // 2:
            raise UnlearnkitError(f"s3t.shards × s3t.slices = {self.shards * self.slices} leaves slices of under 2 "
                                  f"examples in a training set of {n_train}; use fewer shards or slices")
        gone = set(forget.tolist())
        emptied = [(k, s) for k, shard in enumerate(sliced_partition(n_train, self.shards, self.slices, seed))
                   for s, part in enumerate(shard) if set(part.tolist()) <= gone]
        if emptied:
            raise UnlearnkitError(f"the forget set holds every example of S3T (shard, slice) {emptied}: a shard "
                                  "retrained without it would have a stage with nothing to train on; use fewer "
                                  "s3t.shards or s3t.slices")


def layers(module: nn.Module) -> list[list[str]]:
    """The model's layers, input first: the parameters of each module holding a weight matrix or kernel,
    with those of vector-only modules (normalisations) joining the layer before them."""
    groups: list[list[str]] = [[]]
    opener = None  # the module whose matrix opened the current layer
    for name, p in module.named_parameters():
        prefix = name.rpartition(".")[0]
        if p.dim() >= 2 and prefix != opener:
            if opener is not None:
                groups.append([])
            opener = prefix
        groups[-1].append(name)
    return groups


def stage_parameters(module: nn.Module, slices: int) -> list[set[str]]:
    """What stage j of a sequence trains: the j-th of `slices` contiguous layer blocks counted from the
    output (the paper trains top-down: "the i-th layer (from the top) using slices S_1:i"), and the output
    layer at every stage, as the reference code keeps its classifier head trainable at every slice.

    The paper's layers carry LoRA adapters over a frozen pretrained backbone. Our models are trained from
    scratch, with no data-free backbone to adapt, so each block's own weights are its slice's parameters
    and the blocks not trained yet stay at their seeded initialisation (data-free, as a backbone is): the
    isolation that makes deletion exact is the same, without a rank limit on what a slice can learn."""
    top_down = layers(module)[::-1]
    if not 1 <= slices <= len(top_down):
        raise UnlearnkitError(f"s3t.slices={slices} is more than the model's {len(top_down)} layer(s): S3T trains "
                              f"one layer block per slice; use at most s3t.slices={len(top_down)}")
    head = set(top_down[0])
    return [head | {n for i in block for n in top_down[i]} for block in np.array_split(range(len(top_down)), slices)]


def cyclic_orders(slices: int, budget: int) -> list[tuple[int, ...]]:
    """The paper's cyclic-rotation sequence selection: the L rotations of (0, …, L−1) first, so that each
    slice leads one order and a deletion anywhere leaves some order a long prefix; past L orders, each
    order's suffix after its first d slices is rotated in turn (d = 1, 2, …), taken round-robin over the
    orders so far. The first B orders are trained (B = L! gives every permutation)."""
    if not 1 <= budget <= math.factorial(slices):
        raise UnlearnkitError(f"s3t.budget={budget}: {slices} slices have {math.factorial(slices)} orders")
    orders = [tuple(range(s, slices)) + tuple(range(s)) for s in range(slices)]
    depth = 1
    while len(orders) < budget:
        grown = [[o[:depth] + o[depth + r:] + o[depth:depth + r] for r in range(slices - depth)] for o in orders]
        orders = [g[r] for r in range(slices - depth) for g in grown]
        depth += 1
    return orders[:budget]


def surviving_stages(order: tuple[int, ...], hit: set[int]) -> int:
    """Stages of one order still exact after deleting from the slices in `hit`: those before its first
    hit slice (the later ones are deactivated)."""
    return next((j for j, s in enumerate(order) if s in hit), len(order))


def serve(orders: list[tuple[int, ...]], hit: set[int]) -> tuple[int, int]:
    """(order, stages) a shard serves once the slices in `hit` hold deleted points: the order that keeps
    the most trained stages (the first such). stages = 0: every order lost its first stage, so the shard
    has no usable model."""
    kept = [surviving_stages(o, hit) for o in orders]
    best = int(np.argmax(kept))
    return best, kept[best]


def deletion_capacity(orders: list[tuple[int, ...]], shards: int, deletions: Iterable[tuple[int, int]],
                      until: str = "any") -> int | None:
    """Deletions, (shard, slice) one at a time, that a deployment takes until `until` = "any": some shard
    has no usable model, or "all": no shard has (the paper's failure of the system, as its deletion
    simulation counts it); the count includes that deletion. None if `deletions` runs out first.

    Every shard trains the same `orders`; SISA is `SISA_ORDERS` with every deletion in slice 0."""
    if until not in ("any", "all"):
        raise ValueError(f"until must be 'any' or 'all', got {until!r}")
    hit: list[set[int]] = [set() for _ in range(shards)]
    failed: set[int] = set()
    for count, (shard, slice_) in enumerate(deletions, 1):
        hit[shard].add(slice_)
        if shard not in failed and serve(orders, hit[shard])[1] == 0:
            failed.add(shard)
            if until == "any" or len(failed) == shards:
                return count
    return None


def simulated_capacity(orders: list[tuple[int, ...]], shards: int, slices: int, until: str, runs: int,
                       seed: int = 0) -> np.ndarray:
    """`deletion_capacity` of `runs` streams of uniformly random deletions: a random training point lies
    in a uniformly random (shard, slice) when shards and slices are of equal size, as in the paper's
    simulation."""
    rng = np.random.default_rng(seed)

    def stream() -> Iterator[tuple[int, int]]:
        while True:
            yield from zip(rng.integers(shards, size=256).tolist(), rng.integers(slices, size=256).tolist())
    return np.array([deletion_capacity(orders, shards, stream(), until) for _ in range(runs)])


def deletions_of(parts: list[list[np.ndarray]], positions: Iterable[int]) -> list[tuple[int, int]]:
    """The (shard, slice) of each training position, in order, under the partition `parts`."""
    where = {int(p): (k, s) for k, shard in enumerate(parts) for s, part in enumerate(shard) for p in part}
    return [where[int(p)] for p in positions]


def sequence_seeds(model_seeds: list[int], shard: int, order: int) -> list[int]:
    return [derived_seed(s, SEQUENCE_TAG, shard, order) for s in model_seeds]


def train_sequence(ctx: Context, slices: list[np.ndarray], order: tuple[int, ...], stages: list[set[str]],
                   seeds: list[int], label: str) -> list[Params]:
    """The models after each of len(stages) stages of one order: stage j continues stage j−1's models,
    training the parameters `stages[j]` with the task's recipe on slices order[0..j] (cumulative, as the
    paper and its code train); stage 0 starts from fresh models of `seeds`. Each stage is a zoo arm."""
    out: list[Params] = []
    for j, trainable in enumerate(stages):
        positions = np.sort(np.concatenate([slices[s] for s in order[:j + 1]]))
        out.append(ctx.train_stage(positions, seeds, out[-1] if out else None, trainable, f"{label} stage {j}"))
    return out


@register("s3t", S3TParams)
def s3t(ctx: Context, hp: S3TParams) -> Ensemble:
    """S3T: shards of slices trained layer by layer in B orders; a deletion deactivates later stages.

    The shards and slices are SISA's random partition (one per run, shared by the N ensembles); stage j
    of an order trains layer block j from the top on that order's first j+1 slices (`stage_parameters`).
    Unlearning S_F serves, in each shard, the order whose first slice holding a forget point comes
    latest, truncated before that slice (`serve`): exact and free. A shard where every order's first
    slice holds a forget point has no usable model and is retrained: its first order, every stage, on
    the slices without S_F — the only charged work. Aggregation: log of the mean softmax over shards.

    Exact by design, so it is judged against its own oracles (`reference: "s3t-oracles"`): the same
    stages, of the same order, trained from the oracles' seeds on the same slices without S_F. The
    deployed stages are what the system already has (uncharged); stages that no served model uses
    change nothing here and are not trained."""
    parts = sliced_partition(len(ctx.dataset.y_train), hp.shards, hp.slices, ctx.run_seed)
    orders = cyclic_orders(hp.slices, hp.budget)
    stages = stage_parameters(ctx.forward.module, hp.slices)
    kept = [[np.setdiff1d(part, ctx.forget) for part in shard] for shard in parts]
    oracle_models = arm_seeds(ORACLE_SEEDS, ctx.n_models, ctx.run_seed)

    def served_model(k: int, b: int, upto: int, seeds: list[int], label: str) -> Params:
        return train_sequence(ctx, kept[k], orders[b], stages[:upto], sequence_seeds(seeds, k, b),
                              f"{label} shard {k} order {b}")[-1]

    unlearned, oracles = [], []
    for k in range(hp.shards):
        b, upto = serve(orders, {s for s in range(hp.slices) if len(kept[k][s]) < len(parts[k][s])})
        if upto:   # the stages before the first deleted slice: trained on untouched slices, so deployed as they are
            unlearned.append(ctx.uncharged(lambda: served_model(k, b, upto, ctx.seeds, "s3t")))
        else:      # no usable model left: the unlearning retrains the shard
            b, upto = 0, hp.slices
            unlearned.append(served_model(k, b, upto, ctx.seeds, "s3t unlearn"))
        oracles.append(ctx.uncharged(lambda: served_model(k, b, upto, oracle_models, "s3t oracles")))
    return Ensemble(shard_ensemble(ctx.forward, unlearned), shard_ensemble(ctx.forward, oracles),
                    reference="s3t-oracles")
