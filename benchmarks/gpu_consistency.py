"""The device checks that are not speed: does the GPU path compute the same science?

On a machine with a CUDA GPU, trains one arm of a task three ways and compares the models' margins on the
validation set (float32 predictions, the numbers every metric is computed from):

1. CPU float32 against CUDA float32 (TF32 off): different kernels sum in different orders, so the weights
   drift apart over training; what matters is that the difference is far below the spread between two
   models of the arm (the noise floor's scale).
2. CUDA one pass against CUDA in memory-limited chunks (`--max-memory` small enough for a few models per
   chunk): model i depends on its seed alone, so the arms match in distribution; bit for bit only where
   the kernels sum alike for a batch of models of either size. On an H200 they do not (cuBLAS picks its
   kernel by batch size): 16 models, fp32, mean |Δ margin| 0.21 = 0.33 of the between-model spread after
   15 epochs, as CPU against CUDA (0.42): rounding differences grow over training. The first row, the same
   pass twice, shows what the device's own run-to-run differences are.
3. CUDA bf16 against CUDA float32: mixed precision must stay within the same between-model scale.

    PYTHONPATH=src python3 benchmarks/gpu_consistency.py --task fashion-mnist-mlp --models 16
"""
from __future__ import annotations

import argparse
import time

import torch

from unlearnkit.data import load_dataset
from unlearnkit.engine import predict
from unlearnkit.engine.compute import Compute, resolve, use
from unlearnkit.metrics.margins import margins
from unlearnkit.tasks import get_task
from unlearnkit.zoo import arm_seeds, template, train_models


def arm_margins(task, ds, seeds, compute: Compute) -> tuple[torch.Tensor, float, int]:
    """Validation margins (N × examples) of an arm trained on `compute`, its seconds and peak CUDA bytes."""
    if compute.is_cuda:
        torch.zeros(1, device=compute.device)  # the allocator exists only after a first allocation
        torch.cuda.reset_peak_memory_stats(torch.device(compute.device))
    start = time.perf_counter()
    with use(compute):
        arm = train_models(task, ds, torch.arange(len(ds.y_train)), seeds)
        logits = predict(template(task, ds), arm.params, ds.x_val)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(torch.device(compute.device)) if compute.is_cuda else 0
    return margins(logits, ds.y_val), seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fashion-mnist-mlp")
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU (cpu: a dry run here)")
    ap.add_argument("--chunk-models", type=int, default=5, help="models per chunk in the memory-limited pass")
    args = ap.parse_args()
    task = get_task(args.task)
    ds = load_dataset(task.dataset, train_size=task.train_size)
    seeds = arm_seeds(0, args.models)
    cuda = resolve(args.device, "fp32")
    ref, ref_s, ref_peak = arm_margins(task, ds, seeds, cuda)
    spread = (ref - ref.mean(0)).std().item()  # between-model scale of a margin
    print(f"{args.task}, N = {args.models}, {cuda.describe()}: one pass {ref_s:.1f} s, peak "
          f"{ref_peak / 2 ** 20:,.0f} MiB; between-model std of a validation margin {spread:.3f}")
    per_model = ref_peak / args.models if cuda.is_cuda else 2 ** 20  # a dry run on the CPU: any small limit
    chunked = Compute(cuda.device, "fp32", max_memory=int(per_model * args.chunk_models))
    rows = [("CUDA fp32 one pass, again (run-to-run)", cuda), ("CPU fp32", Compute("cpu", "fp32")),
            (f"CUDA fp32 in chunks (--max-memory {chunked.max_memory:,} B)", chunked),
            ("CUDA bf16", resolve(args.device, "bf16"))]
    print(f"{'against CUDA fp32 one pass':<58} {'max |Δ margin|':>15} {'mean |Δ|':>9} {'÷ spread':>9} "
          f"{'bitwise':>8} {'seconds':>8}")
    for name, compute in rows:
        other, seconds, _ = arm_margins(task, ds, seeds, compute)
        diff = (other - ref).abs()
        print(f"{name:<58} {diff.max().item():>15.2e} {diff.mean().item():>9.2e} "
              f"{diff.mean().item() / spread:>9.2e} {str(torch.equal(other, ref)):>8} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
