"""Deletion capacity of S3T against SISA: simulated (the paper's setting and a task's) and measured on a real
deployment.

Chowdhury et al. (ICLR 2025, arXiv 2406.16257) count deletions of uniformly random training points until the
system fails; their simulation (reference code brcsomnath/S3T) draws each deletion's (shard, slice) at
random, cuts every order of that shard before the slice, and stops when no shard has a model left; SISA
fails when every shard has had a deletion (a shard is down, retraining, from its first one). Both
criteria are printed: `all` (the paper's: no shard left) and `any` (some shard without a model, the
first retraining S3T needs; SISA's is always its first deletion).

Measured: the task's S3T deployment is trained in full (every order, every stage, N models), SISA's
shards beside it; random deletion orders of the real training positions are played through the real
partition (`deletions_of`), and the served ensemble's validation accuracy is read as deletions accumulate
(failed shards drop out of the ensemble, as the reference's inference does). Last, on one deletion order,
the method itself runs at the measured `any` capacity and one deletion before it: it must charge nothing
before (every shard serves a deployed stage) and retrain at it.

    PYTHONPATH=src .venv/bin/python benchmarks/deletion_capacity.py --models 8
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

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
from unlearnkit.methods.sisa import shard_ensemble, shard_seeds, sliced_partition
from unlearnkit.zoo import ORIGINAL_SEEDS, arm_seeds, template


def simulate(shards: int, slices: int, runs: int) -> None:
    print(f"simulated, {shards} shards × {slices} slices, {runs} random deletion streams (mean ± sd):")
    sisa = {u: simulated_capacity(SISA_ORDERS, shards, 1, u, runs) for u in ("any", "all")}
    print(f"  {'':>8} {'any: first shard down':>22} {'all: system down':>18}")
    print(f"  {'SISA':>8} {sisa['any'].mean():>14.1f} ± {sisa['any'].std():<5.1f} {sisa['all'].mean():>10.1f} ± "
          f"{sisa['all'].std():<5.1f}")
    for b in range(1, slices + 1):   # past B = L every slice already leads an order: no shard fails later
        s3t = {u: simulated_capacity(cyclic_orders(slices, b), shards, slices, u, runs, seed=b) for u in ("any", "all")}
        print(f"  {f'S3T B={b}':>8} {s3t['any'].mean():>14.1f} ± {s3t['any'].std():<5.1f} {s3t['all'].mean():>10.1f} "
              f"± {s3t['all'].std():<5.1f}")


def measured(task: str, shards: int, slices: int, budget: int, models: int, repeats: int, cache_dir: str) -> None:
    p = prepare(RunConfig(task=task, forget="random:1", methods=("none",), models=models, cache_dir=cache_dir,
                          bootstrap=0))
    ds, n = p.dataset, len(p.dataset.y_train)
    forward = template(p.task, ds)
    ctx = Context(p.task, ds, forward, {}, np.array([], dtype=np.int64), np.arange(n),
                  arm_seeds(ORIGINAL_SEEDS, models), 0, p.cache)
    parts = sliced_partition(n, shards, slices, 0)
    orders, stages = cyclic_orders(slices, budget), stage_parameters(forward.module, slices)
    start = time.perf_counter()
    chains = [[train_sequence(ctx, parts[k], order, stages, sequence_seeds(ctx.seeds, k, b), f"shard {k} order {b}")
               for b, order in enumerate(orders)] for k in range(shards)]
    sisa = [ctx.train_from_scratch(np.sort(np.concatenate(parts[k])), shard_seeds(ctx.seeds, k), f"sisa shard {k}")
            for k in range(shards)]
    print(f"\nmeasured: {task}, {n} training points, {shards} shards × {slices} slices, B = {budget} "
          f"({orders}), N = {models}; deployment trained in {time.perf_counter() - start:.0f} s")

    def accuracy(params: list) -> float:
        logits = shard_ensemble(forward, params)(ds.x_val)
        return float((logits.argmax(-1) == ds.y_val).float().mean())

    rng = np.random.default_rng(0)
    caps = {(m, u): [] for m in ("s3t", "sisa") for u in ("any", "all")}
    for _ in range(repeats):
        stream = deletions_of(parts, rng.permutation(n))
        for u in ("any", "all"):
            caps["s3t", u].append(deletion_capacity(orders, shards, stream, u))
            caps["sisa", u].append(deletion_capacity(SISA_ORDERS, shards, [(k, 0) for k, _ in stream], u))
    print(f"  {repeats} random deletion orders of the real points (mean ± sd):")
    for m in ("sisa", "s3t"):
        print(f"  {m:>5}: any {np.mean(caps[m, 'any']):6.1f} ± {np.std(caps[m, 'any']):<5.1f}  all "
              f"{np.mean(caps[m, 'all']):6.1f} ± {np.std(caps[m, 'all']):.1f}")

    stream = deletions_of(parts, order := np.random.default_rng(1).permutation(n))
    end = deletion_capacity(orders, shards, stream, "all")
    hit = [set() for _ in range(shards)]
    print(f"  one deletion order, the served ensemble after each deletion that changes it (SISA's full ensemble: "
          f"validation accuracy {accuracy(sisa):.3f}):")
    print(f"  {'deletions':>9} {'shards up':>9} {'stages served per shard':>24} {'val acc':>8}")
    last = None
    for count, (k, s) in enumerate([(None, None)] + stream[:end]):
        if k is not None:
            hit[k].add(s)
        plan = [serve(orders, h) for h in hit]
        if plan == last:
            continue
        last, up = plan, [chains[k][b][stage - 1] for k, (b, stage) in enumerate(plan) if stage]
        print(f"  {count:>9} {len(up):>9} {str([stage for _, stage in plan]):>24} "
              f"{accuracy(up) if up else float('nan'):>8.3f}")

    cap = deletion_capacity(orders, shards, stream, "any")
    hp = make_hparams("s3t", {"shards": shards, "slices": slices, "budget": budget})
    charged = []
    for k in (cap - 1, cap):
        forget = np.sort(order[:k])
        run = Context(p.task, ds, forward, {}, forget, np.setdiff1d(np.arange(n), forget), ctx.seeds, 0, p.cache)
        charged.append(run.charged(get_method("s3t").fn, hp)[1])
    print(f"  the method on this order: {cap - 1} deletions charged {charged[0]['flops']:.3g} FLOPs; {cap} "
          f"deletions (a shard down) charged {charged[1]['flops']:.3g} FLOPs, {charged[1]['seconds']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="simulated deletion streams per setting")
    ap.add_argument("--task", default="digits-mlp")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=500, help="deletion orders played on the real deployment")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    simulate(5, 6, args.runs)   # the paper's simulation: 5 shards, 6 slices
    simulate(args.shards, args.slices, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        measured(args.task, args.shards, args.slices, args.budget, args.models, args.repeats, args.cache_dir or tmp)


if __name__ == "__main__":
    main()
