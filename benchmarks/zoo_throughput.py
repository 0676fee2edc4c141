"""How fast the vectorised zoo trains an ensemble, in each precision, against a plain per-model PyTorch
loop, in one run.

Prints models/s (each path extrapolated from the same number of epochs to the task's full recipe), the
zoo's achieved FLOP/s as a fraction of this device's matmul peak *in the same precision* (measured here,
2048² products), and the ratio of each precision to float32 and to the per-model loop.

    .venv/bin/python benchmarks/zoo_throughput.py --models 100 --epochs 1
    .venv/bin/python benchmarks/zoo_throughput.py --device cuda --models 100,300 --precisions fp32,tf32,bf16
    .venv/bin/python benchmarks/zoo_throughput.py --task fashion-mnist-cnn --models 16   # vmap and loop (CPU)

A convolutional task on the CPU is timed both vmapped and model by model (`engine.compute`, `ensemble`),
the way a run trains it; --ensembles chooses.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data import load_dataset
from unlearnkit.engine import EpochStream, fit
from unlearnkit.engine.compute import Compute, bf16_fast, ensemble_for, resolve, tf32, use
from unlearnkit.models import build_model, init_params
from unlearnkit.tasks import get_task
from unlearnkit.zoo import arm_seeds, cross_entropy_loss, recipe_optim, template


def matmul_peak(compute: Compute, n: int = 2048, reps: int = 20) -> float:
    """torch.mm FLOP/s on the device in the precision's product dtype (TF32 on for tf32)."""
    a = torch.randn(n, n, device=compute.device, dtype=compute.dtype)
    b = torch.randn(n, n, device=compute.device, dtype=compute.dtype)
    with tf32(compute):
        for _ in range(3):
            a @ b
        _sync(compute)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(compute)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _sync(compute: Compute) -> None:
    if compute.is_cuda:
        torch.cuda.synchronize(compute.device)


def train_flops_per_example(model: nn.Module, input_shape) -> float:
    """Forward MACs of every Linear/Conv layer ×2 (FLOPs) ×3 (forward + two backward products)."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        w = mod.weight
        per_output = w[0].numel()  # in_features, or in_channels/groups × kernel size
        macs += out[0].numel() * per_output

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return 6.0 * macs


def time_zoo(task, ds, seeds, epochs: float, compute: Compute) -> tuple[float, int]:
    """Seconds for `epochs` of N models in one vectorised pass (after a warm-up), and the steps taken."""
    forward = template(task, ds)
    loss = cross_entropy_loss(forward)
    stream = EpochStream(torch.arange(len(ds.y_train)), seeds, task.recipe.batch_size)
    init = init_params(task.model, ds.input_shape, ds.num_classes, seeds, **task.model_kwargs)
    with use(compute):
        fit(loss, init, {"train": stream}, (ds.x_train, ds.y_train), 5, recipe_optim(task))
        steps = stream.steps(epochs)
        start = time.perf_counter()
        fit(loss, init, {"train": stream}, (ds.x_train, ds.y_train), steps, recipe_optim(task))
    return time.perf_counter() - start, steps


def time_loop(task, ds, seed: int, steps: int, dataloader: bool, compute: Compute) -> float:
    """Seconds for `steps` of one nn.Module with torch.optim in float32 on the device: batches by tensor
    indexing (the fastest a per-model loop gets) or from a shuffling torch DataLoader (what most
    training code does)."""
    r = task.recipe
    model = build_model(task.model, ds.input_shape, ds.num_classes, **task.model_kwargs).to(compute.device)
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, nesterov=True, weight_decay=r.weight_decay)
    x_all, y_all = ds.x_train.to(compute.device), ds.y_train.to(compute.device)
    if dataloader:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train, ds.y_train),
                                             batch_size=r.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        batches = ((x.to(compute.device), y.to(compute.device)) for _ in range(10 ** 6) for x, y in loader)
    else:
        idx_stream = EpochStream(torch.arange(len(ds.y_train)), [seed], r.batch_size).batches()
        batches = ((x_all[i[0].to(compute.device)], y_all[i[0].to(compute.device)]) for i in idx_stream)
    for step in range(steps + 3):
        if step == 3:  # warm-up done
            _sync(compute)
            start = time.perf_counter()
        x, y = next(batches)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    _sync(compute)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fashion-mnist-mlp")
    ap.add_argument("--models", default="100", help="comma-separated N (ensemble sizes) to time")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated; default fp32 and bf16 (and tf32 on CUDA) where the device has them")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs timed per model (all paths)")
    ap.add_argument("--loop-models", type=int, default=3, help="models timed in each per-model loop")
    ap.add_argument("--repeats", type=int, default=2, help="timings per path; the best is reported")
    ap.add_argument("--ensembles", default=None,
                    help="comma-separated vmap,loop; default vmap, and loop where a run would use it")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = resolve(args.device, "fp32").device
    precisions = (args.precisions.split(",") if args.precisions else
                  ["fp32"] + (["tf32"] if device.startswith("cuda") else []) + (["bf16"] if bf16_fast(device) else []))
    computes = {p: resolve(device, p) for p in precisions}
    task = get_task(args.task)
    ensembles = (args.ensembles.split(",") if args.ensembles else
                 list(dict.fromkeys(["vmap", ensemble_for(task.model, device)])))
    ds = load_dataset(task.dataset, train_size=task.train_size)
    r = task.recipe
    flops_ex = train_flops_per_example(build_model(task.model, ds.input_shape, ds.num_classes, **task.model_kwargs),
                                       ds.input_shape)
    full = r.epochs / args.epochs  # extrapolate every path to the task's full recipe
    name = Compute(device).describe().rsplit(",", 1)[0]
    print(f"task {args.task} on {name}: {len(ds.y_train)} examples, {r.epochs} epochs, batch {r.batch_size}; "
          f"{flops_ex / 1e6:.3f} MFLOP per training example; best of {args.repeats}; {torch.get_num_threads()} "
          "CPU threads")
    peaks = {p: max(matmul_peak(c) for _ in range(args.repeats)) for p, c in computes.items()}
    steps = EpochStream(torch.arange(len(ds.y_train)), [0], r.batch_size).steps(args.epochs)
    fp32 = computes.get("fp32", resolve(device, "fp32"))
    loops = {kind: min(sum(time_loop(task, ds, i, steps, kind == "DataLoader", fp32) for i in range(args.loop_models))
                       / args.loop_models for _ in range(args.repeats)) for kind in ("indexing", "DataLoader")}
    loop_rate = {kind: 1 / (s * full) for kind, s in loops.items()}
    for kind, seconds in loops.items():
        print(f"  per-model loop, fp32 ({kind}): {loop_rate[kind]:.3f} models/s, "
              f"{flops_ex * steps * r.batch_size / seconds / 1e9:.1f} GFLOP/s")
    print(f"  {'N':>5} {'ensemble':>8} {'precision':>9} {'peak GFLOP/s':>13} {'models/s':>9} {'GFLOP/s':>8} "
          f"{'of peak':>8} {'vs fp32':>8} {'vs loop':>8}")
    for n in (int(v) for v in args.models.split(",")):
        seeds = arm_seeds(0, n)
        for e in ensembles:
            rates = {}
            for p, c in computes.items():
                c = dataclasses.replace(c, ensemble=e)
                zoo_s, steps = min(time_zoo(task, ds, seeds, args.epochs, c) for _ in range(args.repeats))
                rates[p] = n / (zoo_s * full)
                achieved = flops_ex * steps * r.batch_size * n / zoo_s
                print(f"  {n:>5} {e:>8} {p:>9} {peaks[p] / 1e9:>13.0f} {rates[p]:>9.3f} {achieved / 1e9:>8.1f} "
                      f"{achieved / peaks[p]:>8.0%} {rates[p] / rates.get('fp32', rates[p]):>7.2f}× "
                      f"{rates[p] / loop_rate['indexing']:>7.1f}×", flush=True)


if __name__ == "__main__":
    main()
