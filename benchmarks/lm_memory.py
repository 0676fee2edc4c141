"""Memory and time of an LM unlearning method: a live reference model vs reference log-probabilities computed
once, and full fine-tuning vs LoRA adapters (PEFT).

    python benchmarks/lm_memory.py --task tofu-synth-gpt --models 16 --method npo --lora 8

Each variant runs in a fresh process (so one's peak cannot hide another's) on the task's cached originals
(trained first if absent): NPO with the reference model held and run at every step, as OpenUnlearning does
and as unlearnkit did before (`live`), NPO as it is now (`cached`: log π_ref of the forget answers computed
once), and each of those with `--lora R`. It prints the peak memory above what the process held before the
method started — resident memory sampled every 5 ms on the CPU, `torch.cuda.max_memory_allocated` on a GPU
— the trained state (parameters the optimizer updates, with their Adam moments) and the method's seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

VARIANTS = ("live", "cached", "live+lora", "cached+lora")


def one(args) -> dict:
    import numpy as np
    import torch

    from unlearnkit.engine.compute import resolve, use
    from unlearnkit.lm.lora import LoraSpec
    from unlearnkit.lm.model import LMForward
    from unlearnkit.lm.task import get_lm_task, load_tofu
    from unlearnkit.lm.tokenizer import special_ids
    from unlearnkit.lm.train import train_lm_models
    from unlearnkit.methods.base import make_hparams
    from unlearnkit.methods.lm import LM_REGISTRY, LMContext
    from unlearnkit.methods.lm.base import answer_nll, sequence_logprob
    from unlearnkit.methods.lm.npo import npo_loss
    from unlearnkit.zoo import ORIGINAL_SEEDS, ZooCache, arm_seeds

    torch.set_num_threads(args.threads)
    task = get_lm_task(args.task)
    data = load_tofu(task)
    seeds = arm_seeds(ORIGINAL_SEEDS, args.models, 0)
    with use(resolve(args.device, args.precision)) as compute:
        cache = ZooCache(os.environ.get("UNLEARNKIT_CACHE", os.path.expanduser("~/.cache/unlearnkit")))
        everything = torch.arange(len(data.items))
        originals = train_lm_models(data.config, data.tensors, everything, seeds, task.recipe, cache, "originals")
        forget = data.forget_positions("authors:0.1", 0)
        pad, eos = special_ids(data.tok)
        ctx = LMContext(task, data, LMForward(data.config), originals.params, forget,
                        np.setdiff1d(np.arange(len(data.items)), forget), seeds, 0, cache, tokens=data.tensors,
                        items=data.items, tok=data.tok, pad_id=pad, eos_id=eos, lm_config=data.config,
                        recipe=task.recipe, max_len=task.max_len,
                        lora=LoraSpec(args.lora) if "lora" in args.variant else None)
        hp = make_hparams(args.method, {"epochs": str(args.epochs)}, LM_REGISTRY)

        def live_npo(c, hp):  # NPO as it was: the originals held as a frozen reference, run forward every step
            def loss(params, batch, frozen):
                (xf, yf, _), (xr, yr, _) = batch["forget"], batch["retain"]
                logp, _ = sequence_logprob(c.forward(params, xf), yf)
                ref, _ = sequence_logprob(c.forward(frozen["reference"], xf).detach(), yf)
                return hp.gamma * npo_loss(logp, ref, hp.beta) + hp.alpha * answer_nll(c, params, xr, yr)
            return c.fit(loss, c.pair_streams(hp), hp.epochs, hp.optim(), frozen={"reference": c.originals},
                         desc=None)

        fn = live_npo if args.variant.startswith("live") else LM_REGISTRY[args.method].fn
        cuda = compute.device.startswith("cuda")
        peak, done = [0], threading.Event()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            import psutil
            proc = psutil.Process()
            base = proc.memory_info().rss

        def sample():
            while not cuda and not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        start = time.perf_counter()
        fn(ctx, hp)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        extra = (torch.cuda.max_memory_allocated() if cuda else peak[0]) - base
        per_model = sum(v[0].numel() for v in originals.params.values())
        trained = per_model
        if ctx.lora is not None:
            from unlearnkit.lm.lora import LoraForward
            adapted = LoraForward(ctx.forward, ctx.lora)
            trained = adapted.size(adapted.init_adapters([0]))
    return {"variant": args.variant, "device": compute.device, "precision": compute.precision,
            "peak_extra_mib": extra / 2**20, "trained_params_per_model": trained, "params_per_model": per_model,
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tofu-synth-gpt")
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--method", default="npo")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lora", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(one(args)))
        return
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        sys.exit(f"--variants: choose from {', '.join(VARIANTS)}")
    try:
        import peft  # noqa: F401
    except ImportError:  # the GPU machine has no PEFT: the reference comparison alone
        variants = [v for v in variants if "lora" not in v]
    for i, v in enumerate(variants):  # each row as it comes (a device check may stop the script at its limit)
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", v], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if i == 0:
            print(f"{args.method} on {args.task}, N = {args.models}, {args.epochs:g} epochs, {r['device']} "
                  f"{r['precision']}; {r['params_per_model']:,} parameters per model")
            print(f"{'variant':14} {'peak extra MiB':>14} {'trained params/model':>21} {'seconds':>8}")
        print(f"{r['variant']:14} {r['peak_extra_mib']:14.1f} {r['trained_params_per_model']:21,} {r['seconds']:8.1f}",
              flush=True)

if __name__ == "__main__":
    main()
