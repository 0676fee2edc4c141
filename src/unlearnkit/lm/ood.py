"""In- versus out-of-distribution forget sets over unlearning steps (Baluta et al. 2024).

Baluta, Lamblin, Tarlow, Pedregosa & Dziugaite 2024, "Unlearning in- vs. out-of-distribution data in
LLMs under gradient-based methods" (arXiv 2411.04388): for gradient-based unlearning, forgetting
out-of-distribution examples (random-string secrets) takes more steps than forgetting in-distribution
ones (facts like those the model keeps), but costs less utility on the way. `id_vs_ood` unlearns an
in-distribution forget set (whole authors) and an out-of-distribution one of the same size (canaries)
with one method, and records forget quality, model utility and forget probability after each number
of unlearning steps, each judged against its own oracles, so that the finding can be checked.

The curve's points are separate runs of `steps` optimizer steps from the originals: the method's
schedule is constant and its batch streams are deterministic, so a run of s steps is the first s
steps of every longer run (the same trajectory read at several points).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from ..errors import UnlearnkitError
from ..files import atomic_write
from ..methods.base import make_hparams
from ..methods.lm import LM_REGISTRY
from ..report import check_output, claim_output, release_output
from ..runs import Job, RunConfig, computing, default_cache_dir
from ..zoo import ZooCache, stable_hash
from .experiment import LMBench, lm_budget
from .task import get_lm_task, load_tofu

FORGOTTEN = 0.05   # TOFU's reading: forget quality above 0.05 = not told apart from the oracles
MAX_STEPS = 100_000  # unlearning steps on a forget set of a few QAs: far past any curve's interesting part


@computing
def id_vs_ood(config: RunConfig, method: str, authors: int, steps: tuple[int, ...],
              out: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """{kind: {"spec", "curve": [{steps, forget_quality, model_utility, ...}], "steps_to_forget",
    "utility_at_forget"}} for kind in ("in-distribution", "out-of-distribution"). `out` is checked (writable,
    not holding another curve unless `overwrite`) before anything trains."""
    task = get_lm_task(config.task)
    if method not in LM_REGISTRY:
        raise UnlearnkitError(f"unknown language-model method {method!r}; known: {', '.join(LM_REGISTRY)}")
    if not steps or any(not 1 <= s <= MAX_STEPS for s in steps):
        raise UnlearnkitError(f"--steps must be whole numbers in [1, {MAX_STEPS}], got {list(steps)}")
    size = authors * task.qa_per_author
    if not 1 <= authors < task.n_authors:
        raise UnlearnkitError(f"--authors must be in [1, {task.n_authors - 1}], got {authors}")
    if size > task.n_canaries:
        raise UnlearnkitError(f"{authors} authors = {size} QAs, but the task has only {task.n_canaries} canaries "
                              f"to match them with; use at most {task.n_canaries // task.qa_per_author} authors")
    others = sorted({m for m, _, _ in config.hparams if m != method})
    if others:
        raise UnlearnkitError(f"hyperparameters given for {', '.join(others)}, but the method is {method}")
    overrides = {name: value for m, name, value in config.hparams if m == method}
    hp = make_hparams(method, overrides, LM_REGISTRY)
    if not hasattr(hp, "epochs") or method == "finetune":
        raise UnlearnkitError(f"method {method!r} takes no steps on the forget set (the curve's x axis)")
    per_epoch = math.ceil(size / min(hp.batch_size, size))
    run_id = stable_hash([config.run_id, method, authors, sorted(set(steps))])[:16]
    if out is not None:
        check_output(out, run_id, overwrite, "id_vs_ood.json")
    data = load_tofu(task)
    cache_dir = default_cache_dir() if config.cache_dir is None else config.cache_dir
    cache = ZooCache(cache_dir) if cache_dir else None
    specs = {"in-distribution": f"authors:{authors / task.n_authors:g}", "out-of-distribution": f"canaries:{size}"}
    for spec in specs.values():  # the arms both curves train, estimated before any of them is
        lm_budget(dataclasses.replace(config, forget=spec), data, [], cache).check(
            config.max_hours, cache.root if cache else None)
    if out is not None:
        claim_output(out, run_id)
    results = {"run_id": run_id, "config": {**config.to_dict(), "method": method, "authors": authors, "size": size,
                          "steps": list(steps), "hparams": dataclasses.asdict(hp)}}
    for kind, spec in specs.items():
        bench = LMBench(dataclasses.replace(config, forget=spec, methods=(method,), bootstrap=0), data, cache)
        curve = []
        for s in sorted(set(steps)):
            row, _ = bench.run_job(Job(f"{method}@{s}", method, dataclasses.replace(hp, epochs=s / per_epoch), s))
            curve.append({"steps": s, **{k: row.get(k) for k in (
                "forget_quality", "model_utility", "forget_rouge", "mia_auc", "diverged", "seconds")},
                "forget_probability": row["probability"]["forget"] if not row["diverged"] else None})
        done = [p for p in curve if (p["forget_quality"] or 0) >= FORGOTTEN]
        results[kind] = {"spec": spec, "curve": curve,
                         "steps_to_forget": done[0]["steps"] if done else None,
                         "utility_at_forget": done[0]["model_utility"] if done else None}
    if out is not None:
        import json
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out) / "id_vs_ood.json", lambda p: p.write_text(json.dumps(results, indent=2)))
        release_output(out)
    return results


def format_id_vs_ood(results: dict) -> str:
    c = results["config"]
    lines = [f"{c['method']} on {c['task']}: {c['size']} forget items in- vs out-of-distribution, N = {c['models']}",
             f"{'steps':>6}" + "".join(f"{k + ' ' + m:>24}" for k in ("ID", "OOD")
                                       for m in ("forget Q", "utility", "p(forget)"))]
    curves = [results["in-distribution"]["curve"], results["out-of-distribution"]["curve"]]
    for a, b in zip(*curves):
        cells = []
        for p in (a, b):
            for k in ("forget_quality", "model_utility", "forget_probability"):
                v = p[k]
                cells.append(f"{'—' if v is None else format(v, '.3g'):>24}")
        lines.append(f"{a['steps']:>6}" + "".join(cells))
    for kind in ("in-distribution", "out-of-distribution"):
        r = results[kind]
        reached = (f"forget quality ≥ {FORGOTTEN} after {r['steps_to_forget']} steps, utility then "
                   f"{r['utility_at_forget']:.3f}" if r["steps_to_forget"] else
                   f"forget quality never reached {FORGOTTEN} within {max(c['steps'])} steps")
        lines.append(f"{kind} ({r['spec']}): {reached}")
    return "\n".join(lines)
