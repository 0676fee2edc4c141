"""S3T (Chowdhury et al., ICLR 2025): its stages, its sequence selection, its deletion capacity against
SISA's, exactness against its own oracles, and refusing more slices than the model has layers."""
import itertools
import math

import numpy as np
import pytest
import torch

from unlearnkit.engine import predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, prepare
from unlearnkit.methods import Context, get_method, make_hparams
from unlearnkit.methods.s3t import (
    SISA_ORDERS,
    cyclic_orders,
    deletion_capacity,
    deletions_of,
    sequence_seeds,
    serve,
    simulated_capacity,
    stage_parameters,
    train_sequence,
)
from unlearnkit.methods.sisa import shard_ensemble, shard_partition, sliced_partition
from unlearnkit.metrics import klom
from unlearnkit.models import build_model, init_params
from unlearnkit.scoring import ArmScores
from unlearnkit.tasks import get_task
from unlearnkit.zoo import ORACLE_SEEDS, ORIGINAL_SEEDS, RETRAIN_SEEDS, ZooCache, arm_seeds, template, train_models


def test_deletion_capacity_on_a_hand_computed_case():
    """2 shards × 2 slices, orders (0, 1) and (1, 0) in each. Deleting from shard 0 slice 0 kills order
    (0, 1) and cuts (1, 0) to its first stage; shard 1 slice 1 the same there; shard 0 slice 1 then kills
    shard 0's last order: the third deletion leaves a shard without a model. Shard 1 dies at the fifth."""
    orders = [(0, 1), (1, 0)]
    stream = [(0, 0), (1, 1), (0, 1), (0, 0), (1, 0), (1, 1)]
    assert serve(orders, {0}) == (1, 1) and serve(orders, {1}) == (0, 1) and serve(orders, set()) == (0, 2)
    assert deletion_capacity(orders, 2, stream, "any") == 3
    assert deletion_capacity(orders, 2, stream, "all") == 5
    assert deletion_capacity(orders[:1], 2, stream, "any") == 1   # B = 1: the first deletion in slice 0 kills it
    assert deletion_capacity(orders, 2, stream[:2], "any") is None  # the stream ran out first
    # SISA in the paper's comparison: a shard is down at its first deletion, whatever the slice
    sisa = [(shard, 0) for shard, _ in stream]
    assert deletion_capacity(SISA_ORDERS, 2, sisa, "any") == 1
    assert deletion_capacity(SISA_ORDERS, 2, sisa, "all") == 2


def test_simulated_capacity_matches_coupon_collector_formulas():
    """With uniformly random deletions the system fails (`all`) when every shard's deadly slices have been
    drawn: SISA after m·H_m deletions (any point of a shard), S3T with one order after m·L·H_m (its first
    slice: 1 draw in m·L). The first shard fails (`any`) after L deletions for one order, 1 for SISA."""
    m, L, runs = 3, 4, 3000
    h = sum(1 / k for k in range(1, m + 1))
    assert simulated_capacity(SISA_ORDERS, m, 1, "all", runs).mean() == pytest.approx(m * h, rel=0.05)
    assert simulated_capacity(cyclic_orders(L, 1), m, L, "all", runs).mean() == pytest.approx(m * L * h, rel=0.05)
    assert simulated_capacity(cyclic_orders(L, 1), m, L, "any", runs).mean() == pytest.approx(L, rel=0.05)
    assert (simulated_capacity(SISA_ORDERS, m, 1, "any", 50) == 1).all()


def test_more_orders_never_absorb_fewer_deletions():
    """The B orders are a prefix of the B+1 orders, so on any deletion stream capacity grows with B."""
    rng, gains = np.random.default_rng(0), []
    for _ in range(30):
        stream = list(zip(rng.integers(4, size=400).tolist(), rng.integers(4, size=400).tolist()))
        caps = [deletion_capacity(cyclic_orders(4, b), 4, stream, "all") for b in range(1, 25)]
        assert all(a <= b for a, b in zip(caps, caps[1:]))
        gains.append(caps[-1] - caps[0])
    assert np.mean(gains) > 10


def test_cyclic_orders_cover_the_positions():
    """B = L: the L rotations, each slice first (and in every position) exactly once; B = L!: every order."""
    rotations = cyclic_orders(4, 4)
    for position in range(4):
        assert sorted(o[position] for o in rotations) == [0, 1, 2, 3]
    assert sorted(cyclic_orders(4, 24)) == sorted(itertools.permutations(range(4)))
    assert cyclic_orders(4, 10) == cyclic_orders(4, 24)[:10]
    with pytest.raises(UnlearnkitError, match="orders"):
        cyclic_orders(3, math.factorial(3) + 1)


def test_stages_train_one_layer_block_each_top_down_with_the_head():
    module = build_model("mlp", (8,), 3, width=4, depth=3)   # layers 1, 3, 5, 7 (7 is the output layer)
    stages = stage_parameters(module, 4)
    assert stages[0] == {"7.weight", "7.bias"}
    assert stages[1] == {"5.weight", "5.bias", "7.weight", "7.bias"}
    assert stages[3] == {"1.weight", "1.bias", "7.weight", "7.bias"}
    two = stage_parameters(module, 2)   # two layers per block, contiguous, from the top
    assert two[0] == {"5.weight", "5.bias", "7.weight", "7.bias"} and two[1] - two[0] == {"1.weight", "1.bias",
                                                                                           "3.weight", "3.bias"}


def test_more_slices_than_layers_is_refused_before_training(tmp_path):
    """digits-mlp has two layers: three slices would leave a slice without a layer of its own."""
    config = RunConfig(task="digits-mlp", forget="random:10", methods=("s3t",), models=2, cache_dir=str(tmp_path),
                       bootstrap=0, hparams=(("s3t", "slices", "3"),))
    with pytest.raises(UnlearnkitError, match=r"s3t.slices=3 is more than the model's 2 layer"):
        prepare(config)
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())
    with pytest.raises(UnlearnkitError, match="s3t.budget"):
        make_hparams("s3t", {"slices": "2", "budget": "3"})   # 2 slices have 2 orders


def test_partition_slices_refine_sisas_shards():
    parts = sliced_partition(200, 4, 3, seed=7)
    for shard, sisa_shard in zip(parts, shard_partition(200, 4, seed=7)):
        np.testing.assert_array_equal(np.sort(np.concatenate(shard)), sisa_shard)
    assert deletions_of(parts, [parts[2][1][0], parts[0][2][3]]) == [(2, 1), (0, 2)]


def test_s3t_sits_at_the_noise_floor_against_its_own_oracles(tmp_path):
    """Exact by design: the served models never saw S_F, so against the same stages trained from the
    oracles' seeds its KLoM is that of two independent arms of plain retraining (the noise floor); the
    deployed system before the deletions (every shard's full first order) is far from them on S_F.
    The forget set hits both slices of shard 0 (retrained: the charged work), slice 1 of shard 1 (served:
    order (0, 1) cut to its first stage) and slice 0 of shard 2 (order (1, 0) cut)."""
    p = prepare(RunConfig(task="digits-mlp", forget="random:1", methods=("none",), models=16,
                          cache_dir=str(tmp_path), bootstrap=0))
    ds, task, n = p.dataset, p.task, len(p.dataset.y_train)
    parts = sliced_partition(n, 3, 2, 0)
    forget = np.sort(np.concatenate([parts[0][0][:3], parts[0][1][:3], parts[1][1][:3], parts[2][0][:3]]))
    retain = np.setdiff1d(np.arange(n), forget)
    forward = template(task, ds)
    ctx = Context(task, ds, forward, {}, forget, retain, arm_seeds(ORIGINAL_SEEDS, 16), 0, None)
    hp = make_hparams("s3t", {"shards": 3})
    result, cost = ctx.charged(get_method("s3t").fn, hp)
    orders, stages = cyclic_orders(2, 2), stage_parameters(forward.module, 2)
    assert [serve(orders, {s for s in range(2) if np.isin(parts[k][s], forget).any()}) for k in range(3)] == [
        (0, 0), (0, 1), (1, 1)]
    deployed = shard_ensemble(forward, [train_sequence(ctx, parts[k], orders[0], stages, sequence_seeds(ctx.seeds, k, 0),
                                                       "deployed")[-1] for k in range(3)])
    oracles = train_models(task, ds, torch.as_tensor(retain), arm_seeds(ORACLE_SEEDS, 16), None, "oracles")
    retrained = train_models(task, ds, torch.as_tensor(retain), arm_seeds(RETRAIN_SEEDS, 16), None, "retrain")
    x = torch.cat([ds.x_train[forget], ds.x_val])
    y = torch.cat([ds.y_train[forget], ds.y_val])

    def margins(logits):
        return ArmScores.from_logits(logits, y).margin

    def kl(unlearned, oracle):   # the low-variance estimator: the histogram nears its cap at small N
        return klom(margins(unlearned), margins(oracle), estimator="gauss")

    floor = kl(predict(forward, retrained.params, x), predict(forward, oracles.params, x))
    reference = result.oracle_logits(x)
    s3t, before = kl(result.logits(x), reference), kl(deployed(x), reference)
    f = slice(0, len(forget))
    print(f"KLoM mean forget / val: s3t {s3t[f].mean():.2f} / {s3t[len(forget):].mean():.2f}, floor "
          f"{floor[f].mean():.2f} / {floor[len(forget):].mean():.2f}, deployed {before[f].mean():.2f}")
    assert s3t[f].mean() <= 1.3 * floor[f].mean() and s3t.mean() <= 1.3 * floor.mean()
    assert before[f].mean() > 3 * floor[f].mean()
    assert result.reference == "s3t-oracles"
    assert cost["flops"] > 0 and ctx.uncharged_flops > 0   # shard 0's retraining is charged, the rest is not


def test_a_stage_trains_only_its_parameters_and_is_cached_apart(tmp_path, digits):
    """zoo.train_models with `trainable`/`start`: the other parameters stay bit for bit; a stage is cached
    under its own key (start and trainable set), apart from the plain arm of the same data and seeds."""
    task, positions, seeds, cache = get_task("digits-mlp"), torch.arange(40), [1, 2], ZooCache(tmp_path)
    init = init_params(task.model, digits.input_shape, digits.num_classes, seeds, **task.model_kwargs)
    first = train_models(task, digits, positions, seeds, cache, "stage 0", trainable={"3.weight", "3.bias"}).params
    assert torch.equal(first["1.weight"], init["1.weight"]) and not torch.equal(first["3.weight"], init["3.weight"])
    second = train_models(task, digits, positions, seeds, cache, "stage 1", first, {"1.weight", "1.bias"})
    assert torch.equal(second.params["3.bias"], first["3.bias"]) and not torch.equal(second.params["1.bias"],
                                                                                       first["1.bias"])
    assert train_models(task, digits, positions, seeds, cache, "again", first, {"1.weight", "1.bias"}).cached
    assert not train_models(task, digits, positions, seeds, cache, "plain").cached


def test_measured_capacity_is_where_the_real_method_starts_retraining(tmp_path):
    """On the real partition and a random deletion order, `deletion_capacity` says how many deletions
    the deployment serves before some shard has no model: the method itself charges nothing for one
    deletion fewer (every shard serves a deployed stage) and retrains a shard at that count."""
    p = prepare(RunConfig(task="digits-mlp", forget="random:1", methods=("none",), models=2,
                          cache_dir=str(tmp_path), bootstrap=0))
    ds, n = p.dataset, len(p.dataset.y_train)
    hp = make_hparams("s3t", {"shards": 2})
    order = np.random.default_rng(3).permutation(n)
    parts = sliced_partition(n, 2, 2, 0)
    capacity = deletion_capacity(cyclic_orders(2, 2), 2, deletions_of(parts, order), "any")
    assert capacity is not None and capacity >= 2
    charged = []
    for k in (capacity - 1, capacity):
        forget = np.sort(order[:k])
        ctx = Context(p.task, ds, template(p.task, ds), {}, forget, np.setdiff1d(np.arange(n), forget),
                      arm_seeds(ORIGINAL_SEEDS, 2), 0, p.cache)
        charged.append(ctx.charged(get_method("s3t").fn, hp)[1]["flops"])
    assert charged[0] == 0 and charged[1] > 0
