"""How fast the vectorised LM zoo trains an ensemble of causal LMs, against a plain per-model PyTorch loop, in one run.

Prints training throughput in tokens/s (question + answer tokens, i.e. the non-pad tokens of the training
batches, and also padded tokens/s) for both, their ratio, and each one's achieved FLOP/s as a fraction of
this machine's torch.mm peak measured here. Both paths train N models for the same number of steps on the
same batches (model i's batches come from its seed alone); the loop trains the N models one after another,
each a `transformers.GPT2LMHeadModel` with `torch.optim.Adam`. The zoo's loss applies the vocabulary head
only on each row's answer window (`LMForward.answer_loss`), the loop's on every position, as a plain
Hugging Face loop does: the same loss and gradients, and the FLOP fractions count what each one computes.

    .venv/bin/python benchmarks/lm_throughput.py --models 8 --steps 20
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2LMHeadModel
from zoo_throughput import _sync, matmul_peak  # the sibling script (benchmarks/ is on the path when run as a script)

from unlearnkit.engine import EpochStream, fit
from unlearnkit.engine.compute import Compute, resolve, use
from unlearnkit.lm import special_ids
from unlearnkit.lm.model import LMForward, answer_width, causal_lm_loss, init_lm_params
from unlearnkit.lm.task import get_lm_task, load_tofu
from unlearnkit.lm.train import lm_loss, recipe_optim
from unlearnkit.zoo import arm_seeds

WARMUP_STEPS = 3


def zoo_flops_per_sequence(data, seeds, batch_size: int) -> float:
    """Training FLOPs per (padded) sequence of the vectorised zoo, counted over one `fit` step."""
    x, y = data.tensors
    stream = EpochStream(torch.arange(len(x)), seeds, batch_size)
    init = init_lm_params(data.config, seeds)
    with FlopCounterMode(display=False) as counter:
        fit(lm_loss(LMForward(data.config), answer_width(y)), init, {"train": stream}, (x, y), 1,
            recipe_optim(data.task.recipe))
    return counter.get_total_flops() / (len(seeds) * stream.batch_size)


def loop_flops_per_sequence(data, batch_size: int) -> float:
    """Training FLOPs per (padded) sequence of one GPT2LMHeadModel, counted over one forward + backward."""
    x, y = data.tensors
    model = GPT2LMHeadModel(data.config).eval()
    with FlopCounterMode(display=False) as counter:
        causal_lm_loss(model(x[:batch_size]).logits, y[:batch_size]).backward()
    return counter.get_total_flops() / batch_size


def time_zoo(data, seeds, batch_size: int, steps: int, compute: Compute) -> float:
    """Seconds for `steps` steps of N models in one vectorised `fit` (after a warm-up `fit`) on `compute`."""
    x, y = data.tensors
    loss = lm_loss(LMForward(data.config), answer_width(y))
    stream = EpochStream(torch.arange(len(x)), seeds, batch_size)
    init = init_lm_params(data.config, seeds)
    optim = recipe_optim(data.task.recipe)
    with use(compute):
        fit(loss, init, {"train": stream}, (x, y), WARMUP_STEPS, optim)
        start = time.perf_counter()
        fit(loss, init, {"train": stream}, (x, y), steps, optim)  # returns CPU tensors: synchronised
    return time.perf_counter() - start


def new_model(config, seed: int) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return GPT2LMHeadModel(config).eval()


def train_one(model: GPT2LMHeadModel, lr: float, x, y, batches) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for idx in batches:
        opt.zero_grad()
        causal_lm_loss(model(x[idx]).logits, y[idx]).backward()
        opt.step()


def time_loop(data, seeds, batches: list[torch.Tensor], compute: Compute) -> float:
    """Seconds to train the N models one after another with torch.optim.Adam, model i on row i of each
    step's (N, b) batch indices (the zoo's batches). Model construction is not timed (the zoo's init is
    not either); each model's optimizer setup and every step are. One throwaway model warms up first.
    The loop trains in float32 (TF32 products where the precision is tf32): what plain training code does."""
    dev = compute.device
    x, y = (t.to(dev) for t in data.tensors)
    batches = [b.to(dev) for b in batches]
    lr = data.task.recipe.lr
    with use(compute):
        train_one(new_model(data.config, max(seeds) + 1).to(dev), lr, x, y, [b[0] for b in batches[:WARMUP_STEPS]])
        total = 0.0
        for i, seed in enumerate(seeds):
            model = new_model(data.config, seed).to(dev)
            _sync(compute)
            start = time.perf_counter()
            train_one(model, lr, x, y, [b[i] for b in batches])
            _sync(compute)
            total += time.perf_counter() - start
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="tofu-synth-gpt")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per model (both paths)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per path; the best is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="the zoo's training precision (the loop's is fp32)")
    ap.add_argument("--loop-models", type=int, default=None, help="models timed in the loop (default: all N); "
                    "its tokens/s is per model, so fewer suffice")
    args = ap.parse_args()
    compute = resolve(args.device, args.precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_tofu(get_lm_task(args.task))
    x, _ = data.tensors
    pad, _ = special_ids(data.tok)
    r = data.task.recipe
    seeds = arm_seeds(0, args.models)
    stream = EpochStream(torch.arange(len(x)), seeds, r.batch_size)
    b, seq_len = stream.batch_size, x.shape[1]
    batches = [idx for idx, _ in zip(stream.batches(), range(args.steps))]  # what `fit` will draw, (N, b) each
    sequences = sum(idx.numel() for idx in batches)                          # over all N models
    tokens = sum(int((x[idx] != pad).sum()) for idx in batches)
    padded = sequences * seq_len
    n_params = sum(p.numel() for p in GPT2LMHeadModel(data.config).parameters())

    zoo_fps = zoo_flops_per_sequence(data, seeds[:2], r.batch_size)  # per sequence: the same for any N
    loop_fps = loop_flops_per_sequence(data, b)
    peak = max(matmul_peak(compute) for _ in range(args.repeats))
    zoo_s = min(time_zoo(data, seeds, r.batch_size, args.steps, compute) for _ in range(args.repeats))
    k = args.loop_models or args.models  # the loop's time scales with the models it trains: extrapolate to N
    loop_s = min(time_loop(data, seeds[:k], batches, compute) for _ in range(args.repeats)) * args.models / k

    zoo_flops, loop_flops = zoo_fps * sequences / zoo_s, loop_fps * sequences / loop_s
    print(f"task {args.task}: N={args.models} models, {args.steps} timed steps each, batch {b}, seq len {seq_len}, "
          f"{n_params / 1e6:.3f}M params per model; {len(x)} training sequences, "
          f"{tokens / padded:.0%} of batch tokens non-pad; best of {args.repeats}")
    print(f"training FLOPs per sequence: zoo {zoo_fps / 1e6:.1f} MFLOP, loop {loop_fps / 1e6:.1f} MFLOP "
          f"(FlopCounterMode, one step)")
    print(f"{compute.describe()}; torch.mm peak (2048², {compute.precision}): {peak / 1e9:.1f} GFLOP/s"
          f"{'' if compute.is_cuda else f', {torch.get_num_threads()} threads'}"
          f"{'' if k == args.models else f'; loop timed on {k} models, extrapolated to {args.models}'}")
    print(f"vectorised zoo:  {tokens / zoo_s:,.0f} tokens/s ({padded / zoo_s:,.0f} padded), "
          f"{zoo_s:.2f} s; {zoo_flops / 1e9:.1f} GFLOP/s = {zoo_flops / peak:.0%} of peak")
    print(f"per-model loop:  {tokens / loop_s:,.0f} tokens/s ({padded / loop_s:,.0f} padded), "
          f"{loop_s:.2f} s; {loop_flops / 1e9:.1f} GFLOP/s = {loop_flops / peak:.0%} of peak")
    print(f"zoo speed-up: {loop_s / zoo_s:.2f}×")


if __name__ == "__main__":
    main()
