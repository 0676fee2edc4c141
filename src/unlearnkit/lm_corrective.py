"""Corrective unlearning for language models (`unlearnkit corrective --task tofu-synth-gpt`).

The classifier study (`unlearnkit.corrective`) on the tofu-synth GPT: the forget set M is a set of authors
(or canaries), `authors:0.1` by default, and the unlearner is told only a fraction f of M's items (nested
seeded subsets, as for classifiers; an item is one question–answer pair). The oracles and the noise
floor are retrained without all of M, every method is judged against them on

- M as a whole (TOFU's forget quality, the median over the N oracle/model pairs, and forget ROUGE),
- the identified and unidentified items apart (answer probability and sequence-level KLoM p95),
- retained authors and world facts (model utility, retain KLoM) and held-out items (val KLoM),

with cost, for each f; optionally the relearning attack (`relearning_probe`). It settles, for LMs, the
Gradient Routing review's question (Cloud et al. 2024, arXiv 2410.04332): does ERA's routing remove more
than data filtering, fine-tuning or the usual LM unlearning losses when only part of the forget data is
labelled? Every (fraction, method) pair is a cell: an interrupted study resumes.
"""
from __future__ import annotations

import os
import textwrap

import numpy as np
import torch

from . import __version__
from .forget.manipulate import identified
from .lm.model import causal_lm_loss, mean_token_logprob, token_logprobs
from .lm.task import get_lm_task, load_tofu
from .lm_experiment import LMBench, lm_bench_digest, lm_budget
from .relearn import (
    RELEARN_NOTE,
    format_number,
    format_steps,
    k_relearn,
    relearn_curves,
    relearn_key,
    relearn_work,
    steps_to_half,
)
from .runs import RunConfig, computing, run_jobs
from .zoo import stable_hash

DEFAULT_LM_CORRECTIVE_METHODS = ("none", "filter", "finetune", "graddiff", "llmu", "rmu", "era", "era-control")
RELEARN_TAG = 0x4C4D524C  # "LMRL"


@computing
def corrective_lm(config: RunConfig, fractions, out: str | os.PathLike | None = None, overwrite: bool = False,
                  relearn: int = 0) -> dict:
    """{"run_id", "config", "manipulation", "fractions": [{"fraction", "identified", "rows", "noise_floor"}]}
    (the classifier study's layout): `config.methods` on the originals with a fraction f of the forget set
    `config.forget` identified, for each f of `fractions` (sorted, distinct: `corrective.corrective` calls
    this), against oracles retrained without the whole forget set. Checked (spec, fractions, methods,
    output, budget) before anything trains."""
    from .lm_experiment import lm_jobs
    from .report import check_output, claim_output
    from .report.figures import corrective_curves
    from .report.html import write_study_output
    jobs = lm_jobs(config)
    task = get_lm_task(config.task)
    data = load_tofu(task)
    forget = data.forget_positions(config.forget, config.seed)
    sets = identified(forget, list(fractions), config.seed)
    for positions in sets.values():
        for job in jobs:
            job.hparams.check_setting(task, data, positions, config.seed)
    run_id = stable_hash([config.run_id, "lm-corrective", fractions, relearn])[:16]
    if out is not None:
        check_output(out, run_id, overwrite, "corrective.json")
    cache = config.zoo_cache()
    attack = relearn_work(relearn, config.models, len(jobs), list(sets.values()),
                          len(retained_authors(data, forget)))  # the attack's retained items are authors' QAs
    probe_key = relearn_key(relearn)
    digests = tuple(lm_bench_digest(np.sort(np.asarray(p)), forget, probe_key) for p in sets.values())
    lm_budget(config, data, jobs, cache, list(sets.values()), tuple(attack), digests=digests).check(
        config.max_hours, cache.root if cache else None, "this corrective study")
    if out is not None:
        claim_output(out, run_id)
    results = {"run_id": run_id, "config": {**config.to_dict(), "train_size": len(data.items),
                                            "fractions": list(fractions), "unlearnkit": __version__,
                                            "torch": torch.__version__, "lm_task": task.describe()},
               "manipulation": {"kind": "forget", "spec": config.forget, "size": len(forget),
                                "positions": forget.tolist()},
               "fractions": []}
    for f, positions in sets.items():
        probe = relearning_probe(data, positions, forget, relearn, config.seed) if relearn else None
        bench = LMBench(config, data, cache, identified=positions, probe=probe, probe_key=probe_key)
        rows, _, _, floor = run_jobs(bench, jobs)
        results["fractions"].append({"fraction": f, "identified": len(positions),
                                     "rows": [r for r in rows if r["method"] in config.methods],
                                     "noise_floor": floor})
    if relearn:
        steps_to_half(results)
    if out is not None:
        write_study_output(out, "corrective", results, f"corrective unlearning: {config.forget} identified in part "
                           f"on {config.task}", format_lm_corrective(results), {"corrective": corrective_curves(results)},
                           config.to_dict())
    return results


def retained_authors(data, forget: np.ndarray) -> np.ndarray:
    """Positions of the author QAs of the oracles' training set (everything but the forget set M)."""
    corrected = np.setdiff1d(np.arange(len(data.items)), forget)
    return corrected[[data.items[p].kind == "author" for p in corrected]]


def relearning_probe(data, identified_set: np.ndarray, forget: np.ndarray, k: int, seed: int):
    """The relearning attack for LMs (Gradient Routing §5; Siddiqui et al. 2025): from the unlearned models,
    `RELEARN_STEPS` full-batch Adam steps of answer NLL on k identified forget items and, separately, on k
    retained items of the oracles' training set; after each step the mean answer probability on the whole
    forget set M (mean over models). probe(params) -> {"relearn": {set: {"curve", "max", "k"}}}."""
    from .lm.model import LMForward
    from .methods.lm import LMContext
    from .zoo import ORIGINAL_SEEDS, arm_seeds
    rng = np.random.default_rng([seed, RELEARN_TAG])
    authors = retained_authors(data, forget)
    sets = {"forget": np.sort(rng.choice(identified_set, min(k, len(identified_set)), replace=False)),
            "retain": np.sort(rng.choice(authors, min(k, len(authors)), replace=False))}
    forward = LMForward(data.config)
    x_m, y_m = (t[torch.as_tensor(forget)] for t in data.tensors)

    def metric(params) -> float:
        return float(mean_token_logprob(*token_logprobs(forward, params, x_m, y_m)).exp().mean())

    def loss(params, batch, frozen):
        x, y, _ = next(iter(batch.values()))
        return causal_lm_loss(forward(params, x), y)

    def probe(params) -> dict:
        seeds = arm_seeds(ORIGINAL_SEEDS, next(iter(params.values())).shape[0], seed)
        return relearn_curves(params, sets, loss, metric,
                              lambda positions: LMContext(data.task, data, forward, params, identified_set, positions,
                                                          seeds, seed, tokens=data.tensors))
    return probe


def format_lm_corrective(results: dict) -> str:
    """One table per identified fraction (≤ 100 columns): forget quality on M, model utility, answer
    probability and KLoM p95 on the identified and unidentified items, retain and val KLoM, cost."""
    m = results["manipulation"]
    lines = textwrap.wrap(f"{m['spec']} on {results['config']['task']}: {m['size']} forget items, a fraction of them "
                          f"identified; N = {results['config']['models']} models per arm; oracles retrained without "
                          "all of them", 100)
    for block in results["fractions"]:
        lines += ["", f"identified f = {block['fraction']:g} ({block['identified']} of {m['size']} items)"]
        relearn = any("relearn" in r for r in block["rows"])
        header = (f"{'method':<14}{'FQ':>8}{'util':>6}{'P id':>6}{'P unid':>7}{'K95 id':>8}{'unid':>6}{'retain':>7}"
                  f"{'val':>6}{'×retrain':>9}" + (f"{'½ relearn':>10}" if relearn else ""))
        lines += [header, "-" * len(header)]
        floor = block["noise_floor"]
        for r in block["rows"] + ([] if floor in block["rows"] else [{**floor, "label": "noise floor"}]):
            p, k = r.get("probability") or {}, r["klom_p95"]
            ratio = (r.get("cost_vs_retrain") or {}).get("flops")
            lines.append(f"{r['label'][:13]:<14}{format_number(r.get('forget_quality'), '.1e'):>8}"
                         f"{format_number(r.get('model_utility')):>6}{format_number(p.get('identified')):>6}{format_number(p.get('unidentified')):>7}"
                         f"{format_number(k.get('identified')):>8}{format_number(k.get('unidentified')):>6}{format_number(k.get('retain')):>7}"
                         f"{format_number(k.get('val')):>6}{format_number(ratio, '.3f'):>9}"
                         + (f"{format_steps((r.get('relearn') or {}).get('forget')):>10}" if relearn else ""))
    lines += ["", *textwrap.wrap(
        "FQ: TOFU's forget quality on all forget items (KS p-value of truth ratios against the oracles, median "
        "over pairs); util: model utility; P id / P unid: answer probability on the identified / unidentified "
        "forget items; K95: sequence-level KLoM p95 against oracles retrained without the forget set; the floor "
        "row is an independent arm of such oracles."
        + (RELEARN_NOTE.format(k=k_relearn(results), what="the forget answers' probability")
           if k_relearn(results) else ""), 100)]
    return "\n".join(lines)


__all__ = ["DEFAULT_LM_CORRECTIVE_METHODS", "corrective_lm", "format_lm_corrective", "relearning_probe"]
