"""What the stacked optimizer's update costs per step, in each of its ways, and what compiling it costs.

For the parameters of N models of a task (fashion-mnist-mlp by default), times one SGD-momentum step
(the zoo's recipe) done three ways: compiled into one fused kernel per tensor (`torch.compile`; the
first call's compile time printed apart), op by op over whole tensors, and op by op over cache-sized
slices (the CPU's way). A run with several methods compiles once per new set of shapes, so the
compile time is what decides whether compiling pays on a device.

    .venv/bin/python benchmarks/optimizer_update.py --models 100
    PYTHONPATH=src python3 benchmarks/optimizer_update.py --device cuda --models 100,300
"""
from __future__ import annotations

import argparse
import time

import torch
from zoo_throughput import _sync  # the sibling script (benchmarks/ is on the path when run as a script)

from unlearnkit.data import load_dataset
from unlearnkit.engine.compute import Compute, resolve
from unlearnkit.engine.optim import StackedSGD
from unlearnkit.models import init_params
from unlearnkit.tasks import get_task
from unlearnkit.zoo import arm_seeds


def time_steps(params, compute: Compute, compiled: bool, chunked: bool, steps: int) -> tuple[float, float]:
    """(seconds of the first step, median seconds of the next `steps`) for one way of updating."""
    opt = StackedSGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, cpu=chunked)
    opt.compiled = compiled
    for p in params:
        p.grad = torch.randn_like(p)
    times = []
    for _ in range(steps + 1):
        _sync(compute)
        start = time.perf_counter()
        opt.step()
        _sync(compute)
        times.append(time.perf_counter() - start)
    return times[0], sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fashion-mnist-mlp")
    ap.add_argument("--models", default="100")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    compute = resolve(args.device, "fp32")
    device = compute.device
    task = get_task(args.task)
    ds = load_dataset(task.dataset, train_size=task.train_size)
    print(f"{args.task} on {device}: one SGD-momentum step over N models' parameters (median of {args.steps})")
    print(f"{'N':>5} {'numbers':>11} {'way':>22} {'first step s':>13} {'step ms':>8} {'GB/s':>7}")
    for n in (int(v) for v in args.models.split(",")):
        base = init_params(task.model, ds.input_shape, ds.num_classes, arm_seeds(0, n), **task.model_kwargs)
        numbers = sum(v.numel() for v in base.values())
        for way, compiled, chunked in (("compiled", True, False), ("op by op, whole", False, False),
                                       ("op by op, cache slices", False, True)):
            params = [v.clone().to(device) for v in base.values()]
            first, step = time_steps(params, compute, compiled, chunked, args.steps)
            moved = numbers * 4 * 5  # the fused ideal: p, g, buf read once, p and buf written once
            print(f"{n:>5} {numbers:>11,} {way:>22} {first:>13.2f} {step * 1e3:>8.2f} {moved / step / 1e9:>7.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
