"""`unlearnkit llm trace`: causal tracing (`lm.trace`, Meng et al. 2022) of a task's N originals on its
forget items, and the table it prints (which MLP layers the layer-constrained method `traced` updates)."""
from __future__ import annotations

import torch

from .errors import UnlearnkitError, option
from .lm.model import LMForward
from .lm.task import get_lm_task, load_tofu
from .lm.trace import POSITIONS, TraceResult, causal_trace, check_trace_settings, subject_tokens
from .lm.train import train_lm_models
from .lm_experiment import originals_budget
from .runs import computing
from .zoo import ORIGINAL_SEEDS, arm_seeds


def trace_task(config, samples: int = 10, noise: float = 3.0, window: int = 1, positions: bool = False,
               top: int = 1) -> tuple[TraceResult, dict]:
    """Trace the N originals of `config.task` (trained, or read from the cache) on the forget items of
    `config.forget`; (the trace, {task, forget, items, top_mlp_layers: the `top` MLP layers `traced` would update}).
    Bad settings (a subject not found, `top` beyond the blocks) fail before anything trains."""
    check_trace_settings(samples, noise, window)

    @computing
    def run(config):
        task = get_lm_task(config.task)
        data = load_tofu(task)
        forget = data.forget_positions(config.forget, config.seed)
        if not 1 <= top <= task.n_layer:
            raise UnlearnkitError(f"{option('top')} must be in [1, {task.n_layer}] (the model's blocks), got {top}")
        subjects = subject_tokens(data.tok, [data.items[p] for p in forget], task.max_len)
        seeds = arm_seeds(ORIGINAL_SEEDS, config.models, config.seed)
        cache = config.zoo_cache()
        originals_budget(config, data, cache).check(config.max_hours, cache.root if cache else None, "this trace")
        arm = train_lm_models(data.config, data.tensors, torch.arange(len(data.items)), seeds, task.recipe,
                              cache, "originals")
        rows = torch.as_tensor(forget)
        result = causal_trace(LMForward(data.config), arm.params, data.tensors[0][rows], data.tensors[1][rows],
                              subjects, seeds, samples=samples, noise=noise, window=window, positions=positions)
        return result, {"task": config.task, "forget": config.forget, "items": len(forget),
                        "top_mlp_layers": result.top_layers(top)}

    return run(config)


def format_trace(result: TraceResult, info: dict) -> str:
    """The per-layer table `unlearnkit llm trace` prints."""
    st = result.settings
    n_models, n_items = result.clean.shape
    lines = [f"causal trace: {info['task']}, forget {info['forget']} ({n_items} items), N = {n_models} originals, "
             f"{st['samples']} noise samples at {st['noise']:g}× the subject embeddings' std",
             f"answer probability{' (fact tokens)' if not st['score_subject'] else ''}: clean "
             f"{float(result.clean.mean()):.4f}, subject corrupted {float(result.corrupted.mean()):.4f}",
             "indirect effect P(restored) − P(corrupted) of one state at the last subject token "
             "(mean over models and items):",
             f"{'block':>5}  {'output':>9}  {'MLP':>9}  {'attention':>9}"]
    for row in result.table():
        lines.append(f"{row['layer']:>5}  {row['block']:>+9.4f}  {row['mlp']:>+9.4f}  {row['attn']:>+9.4f}")
    if result.by_position is not None:
        for kind, name in (("block", "output"), ("mlp", "MLP"), ("attn", "attention")):
            lines.append(f"indirect effect of the {name} by token (ROME's categories):")
            lines.append(f"{'block':>5}  " + "  ".join(f"{p:>14}" for p in POSITIONS))
            for row in result.table():
                per = row[f"{kind}_by_position"]
                lines.append(f"{row['layer']:>5}  " + "  ".join(f"{'-':>14}" if per[p] is None else f"{per[p]:>+14.4f}"
                                                                for p in POSITIONS))
    lines.append(f"layers `traced` would update (top {len(info['top_mlp_layers'])} by MLP effect): "
                 f"block{'s' if len(info['top_mlp_layers']) > 1 else ''} {', '.join(map(str, info['top_mlp_layers']))}")
    return "\n".join(lines)
