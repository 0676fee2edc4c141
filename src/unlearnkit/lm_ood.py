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

Beside TOFU's forget quality each point records a generative unlearning-quality metric from the forget
items' sequence scores (mean answer token log-prob) under the N unlearned models and the N oracles:
the per-item ε of the NeurIPS 2023 unlearning challenge and its forget score F (higher is better, 1
ideal), with F's permutation null (what an exact unlearner would score with these N) — Baluta et al.
formalise such a metric, but their equations could not be read; see `unlearnkit.metrics.generative`.
Per forget item it also records memorisation (originals' mean score − oracles'), difficulty (oracles'
mean NLL) and the first step count at which the unlearned models' median score falls to the oracles'
highest, and the Spearman correlations of that step count with memorisation and with difficulty.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .cells import run_cells
from .errors import UnlearnkitError, option
from .lm.task import get_lm_task, load_tofu
from .lm_experiment import LMBench, lm_budget
from .methods.base import make_hparams
from .methods.lm import LM_REGISTRY
from .metrics import generative as G
from .metrics.mia import neurips23_epsilons, neurips23_forget_score
from .report import check_output, claim_output
from .report.figures import id_vs_ood_curves
from .report.html import write_study_output
from .runs import Job, RunConfig, computing, job_key, method_overrides
from .zoo import stable_hash

FORGOTTEN = 0.05   # TOFU's reading: forget quality above 0.05 = not told apart from the oracles
MAX_STEPS = 100_000  # unlearning steps on a forget set of a few QAs: far past any curve's interesting part


@computing
def id_vs_ood(config: RunConfig, method: str, authors: int, steps: tuple[int, ...],
              out: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """{kind: {"spec", "curve": [{steps, forget_quality, model_utility, ..., epsilon_forget_score,
    epsilon_forget_score_null, epsilon_median, epsilon_per_item}], "steps_to_forget", "utility_at_forget",
    "original" (the same metrics at 0 steps), "examples": {ids, memorisation, difficulty, steps_to_oracle},
    "speed": {items, reached, median_steps_reached, spearman_memorisation, spearman_difficulty}}} for kind in
    ("in-distribution", "out-of-distribution"). `out` is checked (writable, not holding another curve unless
    `overwrite`) before anything trains."""
    task = get_lm_task(config.task)
    if method not in LM_REGISTRY:
        raise UnlearnkitError(f"unknown language-model method {method!r}; known: {', '.join(LM_REGISTRY)}")
    if not steps or any(not 1 <= s <= MAX_STEPS for s in steps):
        raise UnlearnkitError(f"{option('steps')} must be whole numbers in [1, {MAX_STEPS}], got {list(steps)}")
    if len(set(steps)) < len(steps):
        raise UnlearnkitError(f"{option('steps')} lists a step count more than once: {list(steps)}")
    steps = sorted(steps)
    size = authors * task.qa_per_author
    if not 1 <= authors < task.n_authors:
        raise UnlearnkitError(f"{option('authors')} must be in [1, {task.n_authors - 1}], got {authors}")
    if size > task.n_canaries:
        raise UnlearnkitError(f"{authors} authors = {size} QAs, but the task has only {task.n_canaries} canaries "
                              f"to match them with; use at most {task.n_canaries // task.qa_per_author} authors")
    hp = make_hparams(method, method_overrides(config.hparams, method), LM_REGISTRY)
    if not hasattr(hp, "epochs") or method == "finetune":
        raise UnlearnkitError(f"method {method!r} takes no steps on the forget set (the curve's x axis)")
    per_epoch = math.ceil(size / min(hp.batch_size, size))
    run_id = stable_hash([config.run_id, method, authors, steps])[:16]
    if out is not None:
        check_output(out, run_id, overwrite, "id_vs_ood.json")
    data = load_tofu(task)
    cache = config.zoo_cache()
    specs = {"in-distribution": f"authors:{authors / task.n_authors:g}", "out-of-distribution": f"canaries:{size}"}
    for spec in specs.values():  # the arms both curves train, estimated before any of them is
        lm_budget(dataclasses.replace(config, forget=spec), data, [], cache, reference=False).check(
            config.max_hours, cache.root if cache else None)
    if out is not None:
        claim_output(out, run_id)
    results = {"run_id": run_id, "config": {**config.to_dict(), "method": method, "authors": authors, "size": size,
                          "steps": list(steps), "hparams": dataclasses.asdict(hp)}}
    for kind, spec in specs.items():
        bench = LMBench(dataclasses.replace(config, forget=spec, methods=(method,), bootstrap=0), data, cache,
                        reference=False)  # the curves read no MIA: no retrain arm for the Reference attack
        oracle = bench.oracle_scores["forget"].seq
        original = bench.originals_scores["forget"].seq
        read = [(0, original)]  # (steps, forget-item scores of the N models after that many steps)
        jobs = [Job(f"{method}@{s}", method, dataclasses.replace(hp, epochs=s / per_epoch), s)
                for s in steps]  # the points are cells: an interrupted curve resumes
        curve = []
        for job, (row, extra) in zip(jobs, run_cells(bench.cells, [(job_key(bench, j), j) for j in jobs],
                                                      bench.run_job)):
            seq = None if extra is None else extra["scores"][f"row/{job.label}/forget/seq"]
            curve.append({"steps": job.budget, **{k: row.get(k) for k in (
                "forget_quality", "model_utility", "forget_rouge", "mia_auc", "diverged", "seconds")},
                "forget_probability": row["probability"]["forget"] if not row["diverged"] else None,
                **generative_quality(seq, oracle)})
            if seq is not None:
                read.append((job.budget, seq))
        done = [p for p in curve if (p["forget_quality"] or 0) >= FORGOTTEN]
        results[kind] = {"spec": spec, "curve": curve,
                         "steps_to_forget": done[0]["steps"] if done else None,
                         "utility_at_forget": done[0]["model_utility"] if done else None,
                         "original": {"forget_probability": float(np.exp(original).mean()),
                                      **generative_quality(original, oracle)},
                         **forgetting_speed(read, original, oracle,
                                            [data.items[p].id for p in bench.forget])}
    if out is not None:
        write_study_output(out, "id_vs_ood", results, f"in- vs out-of-distribution unlearning: {method} on "
                           f"{config.task}", format_id_vs_ood(results), {"id_vs_ood": id_vs_ood_curves(results)},
                           {**config.to_dict(), "methods": [method]})
    return results


def generative_quality(seq: np.ndarray | None, oracle: np.ndarray) -> dict:
    """The challenge's per-item ε between the models' forget-item scores `seq` and the oracles', its
    forget score F (None below 3 models) and F's permutation null; all None for a diverged point."""
    if seq is None:
        return {"epsilon_forget_score": None, "epsilon_forget_score_null": None, "epsilon_median": None,
                "epsilon_per_item": None}
    eps = neurips23_epsilons(seq, oracle)
    enough = seq.shape[0] >= 3
    return {"epsilon_forget_score": neurips23_forget_score(eps, seq.shape[0]) if enough else None,
            "epsilon_forget_score_null": G.forget_score_null(seq, oracle) if enough else None,
            "epsilon_median": float(np.median(eps)), "epsilon_per_item": eps.tolist()}


def forgetting_speed(read: list[tuple[int, np.ndarray]], original: np.ndarray, oracle: np.ndarray,
                     ids: list) -> dict:
    """Per forget item: memorisation, difficulty and the step count at which it reached the oracles
    (`metrics.generative.steps_to_oracle`; 0 = the originals were already there, None = not within the
    run), and how that step count correlates with the first two (Spearman; unreached items tie last)."""
    mem, dif = G.memorisation(original, oracle), G.difficulty(oracle)
    need = G.steps_to_oracle([s for s, _ in read], np.stack([q for _, q in read]), oracle)
    corr = G.speed_correlations(need, memorisation=mem, difficulty=dif)
    return {"examples": {"ids": list(ids), "memorisation": mem.tolist(), "difficulty": dif.tolist(),
                         "steps_to_oracle": [None if np.isnan(t) else int(t) for t in need]},
            "speed": {"items": int(need.size), "reached": int(np.isfinite(need).sum()),
                      "median_steps_reached": float(np.median(need[np.isfinite(need)])) if np.isfinite(need).any()
                      else None,
                      "spearman_memorisation": corr["memorisation"], "spearman_difficulty": corr["difficulty"]}}


def _num(v, fmt: str = ".3g") -> str:
    return "—" if v is None else format(v, fmt)


def _rho(c: dict) -> str:
    return f"ρ = {_num(c['rho'], '+.2f')} (p {_num(c['p'], '.2g')})"


def _score_cell(p: dict) -> str:
    """F with its permutation null in parentheses."""
    f = p.get("epsilon_forget_score")
    return "—" if f is None else f"{f:.2f} ({p.get('epsilon_forget_score_null', 0):.2f})"


def format_id_vs_ood(results: dict) -> str:
    c = results["config"]
    cols = (("forget Q", 10), ("utility", 9), ("p(forget)", 10), ("F (null)", 13))
    lines = [f"{c['method']} on {c['task']}: {c['size']} forget items in- vs out-of-distribution, N = {c['models']}",
             f"{'':>6}" + "".join(f"{k:^{sum(w for _, w in cols)}}" for k in ("in-distribution",
                                                                             "out-of-distribution")),
             f"{'steps':>6}" + "".join(f"{m:>{w}}" for _ in range(2) for m, w in cols)]
    kinds = [results["in-distribution"], results["out-of-distribution"]]

    def cells(p: dict) -> str:
        return "".join(f"{v:>{w}}" for v, (_, w) in zip(
            (_num(p.get("forget_quality")), _num(p.get("model_utility")), _num(p.get("forget_probability")),
             _score_cell(p)), cols))
    if all("original" in r for r in kinds):
        lines.append(f"{0:>6}" + "".join(cells(r["original"]) for r in kinds))
    for points in zip(*(r["curve"] for r in kinds)):
        lines.append(f"{points[0]['steps']:>6}" + "".join(cells(p) for p in points))
    for kind, r in zip(("in-distribution", "out-of-distribution"), kinds):
        reached = (f"forget quality ≥ {FORGOTTEN} after {r['steps_to_forget']} steps, utility then "
                   f"{r['utility_at_forget']:.3f}" if r["steps_to_forget"] else
                   f"forget quality never reached {FORGOTTEN} within {max(c['steps'])} steps")
        lines.append(f"{kind} ({r['spec']}): {reached}")
        if "speed" in r:
            e, sp = r["examples"], r["speed"]
            lines.append(f"  per item: memorisation {np.mean(e['memorisation']):.3g} nats/token on average, "
                         f"difficulty (oracles' NLL) {np.mean(e['difficulty']):.3g}; {sp['reached']}/{sp['items']} "
                         f"reached the oracles' range (median {_num(sp['median_steps_reached'], 'g')} steps); steps "
                         f"needed vs memorisation {_rho(sp['spearman_memorisation'])}, vs difficulty "
                         f"{_rho(sp['spearman_difficulty'])}")
    lines.append("F: the NeurIPS 2023 unlearning challenge's forget score from per-item ε between the unlearned and "
                 "the oracle models' answer log-probs (1 ideal; in parentheses what an exact unlearner would score "
                 "with these N; — below N = 3); steps 0 = the originals.")
    return "\n".join(lines)
