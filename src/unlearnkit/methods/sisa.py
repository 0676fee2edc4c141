from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..engine import Forward, Params, derived_seed, predict
from ..errors import UnlearnkitError
from ..zoo import ORACLE_SEEDS, arm_seeds
from .base import Context, Ensemble, HParams, ScratchArm, Setting, register

SHARD_TAG = 0x5157


@dataclass(frozen=True)
class SisaParams(HParams):
    shards: int = 5

    def _checks(self):
        return [("shards", 2 <= self.shards <= 1000, "must be in [2, 1000]")]

    def check_setting(self, task, dataset, forget, seed) -> None:
        n_train = len(dataset.y_train)
        if self.shards > n_train // 2:
            raise UnlearnkitError(f"sisa.shards={self.shards} leaves shards of under 2 examples in a training set of "
                                  f"{n_train}; use at most {n_train // 2}")
        gone = set(forget.tolist())
        parts = shard_partition(n_train, self.shards, seed)
        emptied = [k for k, part in enumerate(parts) if set(part.tolist()) <= gone]
        if emptied:
            raise UnlearnkitError(f"the forget set holds every example of SISA shard(s) {emptied}: nothing would be "
                                  "left to retrain them on; use fewer sisa.shards")


def shard_partition(n_train: int, shards: int, seed: int) -> list[np.ndarray]:
    """A uniformly random partition of the training positions into `shards` disjoint, sorted shards."""
    return [part[0] for part in sliced_partition(n_train, shards, 1, seed)]


def sliced_partition(n_train: int, shards: int, slices: int, seed: int) -> list[list[np.ndarray]]:
    """`shard_partition`'s shards, each cut at random into `slices` disjoint, sorted slices (SISA's slicing,
    S3T's slices): [shard][slice] -> positions. The shards are the same whatever the number of slices."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(derived_seed(seed, SHARD_TAG)))
    return [[np.sort(part.numpy()) for part in shard.tensor_split(slices)] for shard in order.tensor_split(shards)]


def shards_without(parts: list[np.ndarray], forget) -> list[np.ndarray]:
    """Each shard's positions without the forget set's (what the affected shards retrain on)."""
    gone = set(np.asarray(forget).tolist())
    return [np.array([i for i in part if i not in gone], dtype=np.int64) for part in parts]


def shard_seeds(model_seeds: list[int], shard: int) -> list[int]:
    return [derived_seed(s, SHARD_TAG, shard) for s in model_seeds]


def sisa_arms(hp: SisaParams, setting: Setting) -> list[ScratchArm]:
    """SISA's `scratch`: the deployed shard models, the affected shards retrained without S_F, and the sharded
    oracles (`sisa` below)."""
    parts = shard_partition(len(setting.data.y_train), hp.shards, setting.run_seed)
    kept = shards_without(parts, setting.forget)
    oracle_models = arm_seeds(ORACLE_SEEDS, len(setting.seeds), setting.run_seed)
    arms = []
    for k, (part, left) in enumerate(zip(parts, kept)):
        arms += [ScratchArm(torch.as_tensor(part), seeds=tuple(shard_seeds(setting.seeds, k))),
                 ScratchArm(torch.as_tensor(left), seeds=tuple(shard_seeds(setting.seeds, k))),
                 ScratchArm(torch.as_tensor(left), seeds=tuple(shard_seeds(oracle_models, k)))]
    return arms  # an unaffected shard's retrained arm is its deployed one: the budget counts it once


@register("sisa", SisaParams, scratch=sisa_arms)
def sisa(ctx: Context, hp: SisaParams) -> Ensemble:
    """SISA: K isolated shard models per ensemble; unlearning retrains only the shards that held S_F.

    Bourtoule et al. 2021, "Machine Unlearning" (IEEE S&P, arXiv 1912.03817), §IV: Sharded, Isolated,
    Sliced, Aggregated training. The training set is split at random into K shards (one partition per
    run, shared by the N ensembles); each ensemble i trains one model per shard from its own seed with
    the task's recipe. Deleting S_F retrains, from scratch and with the same seeds, exactly the shards
    that contain forget points; the others are kept as they are. The result is exact: it *is* the
    sharded recipe trained without S_F. So it is judged against its own oracles, the same sharded
    recipe trained on S_R from the reference oracles' seeds (`reference: "sisa-oracles"`).
    Aggregation is the log of the mean softmax over shards (the code's "softmax" output; the paper's
    default majority vote gives no margin). Slicing (R > 1) is not used: one slice per shard.
    Every shard model comes from the zoo and its cache, so the cost counts what retraining them takes.
    """
    n_train = len(ctx.dataset.y_train)
    parts = shard_partition(n_train, hp.shards, ctx.run_seed)
    oracle_models = arm_seeds(ORACLE_SEEDS, ctx.n_models, ctx.run_seed)

    def train(parts_: list[np.ndarray], seeds: list[int], label: str) -> list:
        return [ctx.train_from_scratch(part, shard_seeds(seeds, k), f"{label} shard {k}")
                for k, part in enumerate(parts_)]

    kept = shards_without(parts, ctx.forget)
    affected = [k for k, part in enumerate(parts) if len(kept[k]) < len(part)]
    originals = ctx.uncharged(lambda: train(parts, ctx.seeds, "sisa"))   # the deployed ensemble
    unlearned = list(originals)
    for k in affected:                                                         # the unlearning itself
        unlearned[k] = ctx.train_from_scratch(kept[k], shard_seeds(ctx.seeds, k), f"sisa unlearn shard {k}")
    oracles = ctx.uncharged(lambda: train(kept, oracle_models, "sisa oracles"))

    return Ensemble(shard_ensemble(ctx.forward, unlearned), shard_ensemble(ctx.forward, oracles),
                    reference="sisa-oracles")


def shard_ensemble(forward: Forward, shard_params: list[Params]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of N ensembles of shard models: the log of the mean softmax over the shards."""
    def logits(x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([predict(forward, p, x).log_softmax(-1) for p in shard_params])
        return log_probs.logsumexp(0) - np.log(len(shard_params))
    return logits

