"""Corrective unlearning across identified fractions (`unlearnkit corrective`).

Goel, Prabhu, Torr, Kumaraguru & Sanyal, "Corrective Machine Unlearning" (TMLR 2024): the training data was
manipulated (`forget.manipulate`: a poison trigger, an interclass swap, random labels), the originals
were trained on it, and the unlearner is told only a fraction f of the manipulated set M. The gold
standard is models retrained on the *fully corrected* data D ∖ M: the oracles and the noise floor (an
independent arm of them) train there, and every method is judged against them on

- the identified examples S_F and the unidentified rest M ∖ S_F (KLoM p95 against the corrected oracles),
- the clean retained data D ∖ M and the validation set (KLoM p95, accuracy),
- the manipulation's own effect on validation images: for poison the attack success rate (triggered
  images of other classes classified as the target) and the triggered images' accuracy against their true
  labels; for a swap the accuracy on the two classes and the swap rate (each predicted as the other),

with cost, for each f. The identified sets are nested (f = 0.1 inside f = 0.25 …), and every (fraction,
method) pair is a cell (`cells.run_cells`): an interrupted study resumes, a rerun with one more method or
fraction computes only that.

The question it settles is the Gradient Routing review's: which methods remove a manipulation when only
part of it is known (Cloud et al. 2024 compare ERA with data filtering; Goel et al. find that exact
retraining on what is known needs most of M identified, and that SSD removes poison with ~10% identified
but fails on interclass confusion).
"""
from __future__ import annotations

import dataclasses
import numbers
import os
import textwrap

import numpy as np
import torch

from . import __version__
from .data import load_dataset
from .errors import UnlearnkitError, option
from .experiment import Bench, Prepared, bench_digest, budget
from .forget import ForgetSet
from .forget.manipulate import Manipulation, identified, manipulate
from .methods import REGISTRY
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
from .report.table import WIDTH, small_n_warning
from .runs import RunConfig, build_jobs, classifier_task, computing, run_jobs
from .zoo import ORIGINAL_SEEDS, arm_seeds, stable_hash, template

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
DEFAULT_METHODS = ("none", "filter", "finetune", "neggrad+", "acdc", "nablatau", "llmu", "ssd", "potion",
                   "potion-lf", "potion+finetune", "era", "era-control")


@computing
def corrective(config: RunConfig, manipulation: str, fractions=DEFAULT_FRACTIONS, out: str | os.PathLike | None = None,
               overwrite: bool = False, relearn: int = 0) -> dict:
    """{"run_id", "config", "manipulation", "fractions": [{"fraction", "identified", "rows", "noise_floor"}]}:
    every method of `config.methods` against oracles retrained on the corrected data, for each identified
    fraction; with `relearn` = k, every row also gets the relearning attack (`relearning_probe`).
    Everything is checked (spec, fractions, methods, output, budget) before anything trains."""
    if not 0 <= relearn <= 100_000:
        raise UnlearnkitError(f"{option('relearn')} must be a number of examples in [1, 100000] (0: off), got "
                              f"{relearn}")
    if isinstance(fractions, str) or not all(isinstance(f, numbers.Real) for f in fractions):
        raise UnlearnkitError(f"{option('fractions', flag='--identified')} must be a sequence of "
                              f"fractions in (0, 1], e.g. (0.5, 1.0), got {fractions!r}")
    fractions = [float(f) for f in fractions]
    if len(set(fractions)) < len(fractions):
        raise UnlearnkitError(f"{option('fractions', flag='--identified')} lists a fraction more than once: "
                              f"{fractions}")
    fractions = tuple(sorted(fractions))
    if not fractions:
        raise UnlearnkitError(f"{option('fractions', flag='--identified')} needs at least one fraction in (0, 1]")
    from .lm.task import LM_TASKS
    if config.task in LM_TASKS:  # the forget set is `manipulation`, a language-model forget spec
        from .lm_corrective import corrective_lm
        return corrective_lm(dataclasses.replace(config, forget=manipulation), fractions, out, overwrite, relearn)
    from .report import check_output, claim_output
    from .report.figures import corrective_curves
    from .report.html import write_study_output
    task = classifier_task(config.task)
    if task.objective != "cross-entropy":
        raise UnlearnkitError(f"corrective unlearning manipulates a classifier's training labels and inputs; "
                              f"{config.task} is a {task.objective} task (use `unlearnkit run`)")
    jobs = build_jobs(config, REGISTRY)
    size = task.train_size if config.train_size is None else config.train_size
    clean = load_dataset(task.dataset, config.data_dir, size, config.seed)
    manip = manipulate(manipulation, clean, config.seed)
    sets = identified(manip.positions, list(fractions), config.seed)
    corrected = np.setdiff1d(np.arange(len(clean.y_train)), manip.positions)
    run_id = stable_hash([config.run_id, manipulation, fractions, relearn])[:16]
    if out is not None:
        check_output(out, run_id, overwrite, "corrective.json")
    cache = config.zoo_cache()
    blocks, extra = evaluation_blocks(manip, clean)
    prepared = {f: Prepared(config, task, manip.dataset, _forget_set(manip, f, s, config.seed), jobs, cache)
                for f, s in sets.items()}
    for p in prepared.values():
        for job in jobs:
            job.hparams.check_setting(task, manip.dataset, p.forget.positions, config.seed)
    probed = sum(1 for job in jobs if not REGISTRY[job.method].ensemble)  # rows the attack runs on
    attack = relearn_work(relearn, config.models, probed, list(sets.values()), len(corrected))
    probe_key = relearn_key(relearn)
    digests = tuple(bench_digest(manip.dataset, prepared[f].forget.positions, corrected, blocks, probe_key)
                    for f in fractions)  # as each fraction's Bench keys its jobs: a kept cell trains nothing
    budget(prepared[fractions[0]], corrected, tuple(prepared[f] for f in fractions[1:]), tuple(attack),
           digests=digests).check(config.max_hours, cache.root if cache else None, "this corrective study")
    if out is not None:
        claim_output(out, run_id)
    results = {"run_id": run_id, "config": {**config.to_dict(), "train_size": len(clean.y_train),
                                            "fractions": list(fractions), "unlearnkit": __version__,
                                            "torch": torch.__version__},
               "manipulation": {k: v for k, v in manip.to_dict().items() if k != "ids"}, "fractions": []}
    n_train, n_val = len(clean.y_train), len(clean.y_val)
    for f, p in prepared.items():
        splits = {"forget": p.forget.positions, "unidentified": np.setdiff1d(manip.positions, p.forget.positions),
                  "retain": corrected, "val": np.arange(n_train, n_train + n_val)}
        splits = {k: v for k, v in splits.items() if len(v)} | extra(n_train + n_val)
        probe = (relearning_probe(task, manip.dataset, template(task, clean), manip, blocks, p.forget.positions,
                                  corrected, relearn, arm_seeds(ORIGINAL_SEEDS, config.models, config.seed),
                                  config.seed) if relearn else None)
        bench = Bench(p, oracle_positions=corrected, blocks=blocks, splits=splits, probe=probe, probe_key=probe_key)
        rows, _, _, floor = run_jobs(bench, jobs)
        results["fractions"].append({"fraction": f, "identified": len(p.forget),
                                     "rows": [r for r in rows if r["method"] in config.methods],
                                     "noise_floor": floor})
    if relearn:
        steps_to_half(results)
    if out is not None:
        write_study_output(out, "corrective", results, f"corrective unlearning: {manipulation} on {config.task}",
                           format_corrective(results), {"corrective": corrective_curves(results)},
                           {**config.to_dict(), "forget": manipulation})
    return results


RELEARN_EVAL = 1000   # examples the recovered metric is measured on, per step
RELEARN_TAG = 0x524C524E  # "RLRN"


def relearning_probe(task, dataset, forward, manip: Manipulation, blocks: list, identified_set: np.ndarray,
                     corrected: np.ndarray, k: int, seeds: list[int], seed: int):
    """The relearning attack (Gradient Routing §5; Siddiqui et al. 2025): from the unlearned models,
    `RELEARN_STEPS` full-batch Adam steps on k identified manipulated examples (their manipulated labels)
    and, separately, on k clean retained examples; after each step the manipulation's metric (poison:
    attack success rate; swap: swap rate; noise: accuracy on the manipulated labels), mean over models.
    Returns probe(params) -> {"relearn": {set: {"curve", "max", "steps_to_half"}}} where steps_to_half is
    the first step reaching half the originals' value (None: never): a method that hides the manipulation
    recovers it in a few steps, one that removed it does not (the corrected oracles are the reference)."""
    from .engine import predict
    from .methods import Context
    from .metrics import accuracy
    rng = np.random.default_rng([seed, RELEARN_TAG])
    if manip.kind == "noise":
        x_eval, y_eval = dataset.x_train[torch.as_tensor(manip.positions)], dataset.y_train[torch.as_tensor(manip.positions)]
    else:
        x_eval, y_eval = blocks[1]  # the attack block (poison) or the swapped block (swap)
    pick = torch.as_tensor(np.sort(rng.choice(len(y_eval), min(RELEARN_EVAL, len(y_eval)), replace=False)))
    x_eval, y_eval = x_eval[pick], y_eval[pick]
    sets = {"forget": np.sort(rng.choice(identified_set, min(k, len(identified_set)), replace=False)),
            "retain": np.sort(rng.choice(corrected, min(k, len(corrected)), replace=False))}

    def metric(params) -> float:
        return float(accuracy(predict(forward, params, x_eval), y_eval).mean())

    def loss(params, batch, frozen):
        x, y, _ = next(iter(batch.values()))
        return torch.nn.functional.cross_entropy(forward(params, x), y)

    def probe(params) -> dict:
        return relearn_curves(params, sets, loss, metric,
                              lambda positions: Context(task, dataset, forward, params, identified_set, positions,
                                                        seeds, seed))
    return probe


def _forget_set(manip: Manipulation, f: float, positions: np.ndarray, seed: int) -> ForgetSet:
    ids = manip.dataset.train_ids[torch.as_tensor(positions)].numpy()
    return ForgetSet(f"identified:{f:g} of {manip.spec}", seed, positions, ids)


def evaluation_blocks(manip: Manipulation, clean) -> tuple[list, callable]:
    """Validation images the manipulation's metrics need, appended after the validation set, and the
    splits over them (given the offset where they start). An attack is read as an accuracy: the poison
    block labels each triggered image with the target, so "accuracy" there is the attack success rate;
    the swap block labels each image of the pair with the other class, so its accuracy is the swap rate."""
    x, y = clean.x_val, clean.y_val
    if manip.kind == "poison":
        triggered = manip.trigger(x)
        other = (y != manip.target).nonzero().flatten()
        names = ("triggered", "attack")
        blocks = [(triggered, y), (triggered[other], torch.full((len(other),), manip.target, dtype=y.dtype))]
    elif manip.kind == "swap":
        a, b = manip.classes
        pair = ((y == a) | (y == b)).nonzero().flatten()
        swapped = torch.where(y[pair] == a, torch.tensor(b, dtype=y.dtype), torch.tensor(a, dtype=y.dtype))
        names = ("pair", "swapped")
        blocks = [(x[pair], y[pair]), (x[pair], swapped)]
    else:
        return [], lambda start: {}

    def splits(start: int) -> dict[str, np.ndarray]:
        ends = start + np.cumsum([len(b_y) for _, b_y in blocks])
        return {name: np.arange(end - len(b_y), end) for name, (_, b_y), end in zip(names, blocks, ends)}
    return blocks, splits


MANIPULATION_COLUMNS = {"poison": (("ASR", "attack"), ("trig acc", "triggered")),
                        "swap": (("pair acc", "pair"), ("swap rate", "swapped")), "noise": ()}


def format_corrective(results: dict) -> str:
    """One table per identified fraction (≤ 100 columns): clean validation accuracy, the manipulation's
    own metrics, KLoM p95 on the identified, unidentified, retained and validation data, cost."""
    m = results["manipulation"]
    cols = MANIPULATION_COLUMNS[m["kind"]]
    lines = textwrap.wrap(f"{m['spec']} on {results['config']['task']}: {m['size']} manipulated training examples; "
                          f"N = {results['config']['models']} models per arm; oracles retrained on the corrected data",
                          100)
    for block in results["fractions"]:
        lines += ["", f"identified f = {block['fraction']:g} ({block['identified']} of {m['size']})"]
        relearn = any("relearn" in r for r in block["rows"])
        header = (f"{'method':<18}{'val acc':>8}" + "".join(f"{name:>10}" for name, _ in cols)
                  + f"{'K95 ident':>10}{'unident':>9}{'retain':>8}{'val':>7}{'×retrain':>9}"
                  + (f"{'½ relearn':>10}" if relearn else ""))
        lines += [header, "-" * len(header)]
        floor = block["noise_floor"]
        for r in block["rows"] + ([] if floor in block["rows"] else [{**floor, "label": "noise floor"}]):
            acc, k = r["accuracy"], r["klom_p95"]
            ratio = (r.get("cost_vs_retrain") or {}).get("flops")
            lines.append(f"{r['label'][:17]:<18}{format_number(acc.get('val'), '.3f'):>8}"
                         + "".join(f"{format_number(acc.get(split), '.3f'):>10}" for _, split in cols)
                         + f"{format_number(k.get('forget')):>10}{format_number(k.get('unidentified')):>9}{format_number(k.get('retain')):>8}"
                         f"{format_number(k.get('val')):>7}{format_number(ratio, '.3f'):>9}"
                         + (f"{format_steps((r.get('relearn') or {}).get('forget')):>10}" if relearn else ""))
    lines += ["", *textwrap.wrap("val acc: clean validation accuracy; " + {
        "poison": "ASR: triggered validation images of other classes classified as the target; trig acc: "
                  "triggered images against their true labels; ",
        "swap": "pair acc: accuracy on the two swapped classes; swap rate: their images predicted as the other; ",
        "noise": ""}[m["kind"]] + "K95: KLoM p95 against oracles retrained without M (ident = S_F, unident = "
              "M ∖ S_F); the floor row is an independent arm of such oracles."
              + (RELEARN_NOTE.format(k=k_relearn(results), what={
                  "poison": "the attack success", "swap": "the swap rate"}.get(
                  m["kind"], "the accuracy on the manipulated labels")) if k_relearn(results) else ""), 100)]
    return "\n".join(lines + small_n_warning(results["config"]["models"], WIDTH))


__all__ = ["DEFAULT_FRACTIONS", "DEFAULT_METHODS", "corrective", "evaluation_blocks", "format_corrective"]
