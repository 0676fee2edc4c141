"""Does forgetting by random labels generalise, and is it deep? (`unlearnkit generalisation`)

Zhang, Choshen & Andreas 2024, "Unforgettable Generalization in Language Models" (arXiv 2409.02228):
models fine-tuned on randomised labels for a task's "training" examples predict near-randomly on those
examples, but whether that spreads to new instances of the same task varies widely (§4), it can spread
to unrelated tasks instead (collateral), and even forgetting that generalises is shallow: a linear probe
on the forgotten models' representations still performs the task (§6).

The same three questions on a classifier task, where the skill forgotten is one class c. The forget
set S_F is a fraction of class c's training examples (`class:C:F`); methods unlearn it and every row
reports, besides the usual KLoM against oracles retrained without S_F:

- **forget**: accuracy on S_F against the true labels (what random-label training acts on);
- **held out**: accuracy on class c's other training examples (seen by the originals, never relabelled)
  and on class c's validation examples — does forgetting generalise to the same kind of example?
- **collateral**: accuracy on the other classes' validation examples;
- **probe**: per model, a multinomial logistic regression on the penultimate features of a fixed sample
  of retained training examples (class c's held-out examples among them), read on S_F and on class c's
  validation examples with their true labels — does the representation still separate class c?
- **generalisation**: the held-out validation accuracy drop of class c divided by the forget set's drop
  (1: forgetting spread to every example of the class; 0: it stayed on the relabelled ones).

Random-label forgetting runs as the paper's (`random-labels` with `retain_weight=0`: the forget set alone,
its labels drawn at random) and as amnesiac unlearning (the same with the retain loss beside it, Graves
et al. 2021), with `none`, `retrain` and `finetune` for scale. One table; every method is a cell.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .errors import UnlearnkitError, option
from .experiment import Bench, prepare
from .methods import make_hparams
from .report.table import WIDTH, small_n_warning
from .runs import Job, RunConfig, computing, run_jobs
from .zoo import template

DEFAULT_METHODS = ("none", "retrain", "finetune", "random-labels")
FORGET_ONLY = "random-labels/forget-only"  # the paper's setting: random labels on S_F alone
PROBE_SIZE = 2000  # retained training examples each model's probe is fitted on
PROBE_TAG = 0x50524F42


@computing
def generalisation(config: RunConfig, klass: int, fraction: str = "0.5", out: str | os.PathLike | None = None,
                   overwrite: bool = False) -> dict:
    """{"config", "class", "forget", "rows", "noise_floor"}: every method of `config.methods` (plus random
    labels on the forget set alone) with the held-out, collateral and probe accuracies described above."""
    from .report import check_output, claim_output
    config = dataclasses.replace(config, forget=f"class:{klass}:{fraction}")
    p = prepare(config)
    ds = p.dataset
    if not 0 <= klass < ds.num_classes:
        raise UnlearnkitError(f"{option('klass', flag='--class')} must be in [0, {ds.num_classes - 1}] for "
                              f"{config.task}, got {klass}")
    held = np.setdiff1d(np.flatnonzero(ds.y_train.numpy() == klass), p.forget.positions)
    if not len(held):
        raise UnlearnkitError(f"class:{klass}:{fraction} takes every training example of class {klass}: nothing is "
                              "held out to tell whether forgetting generalises; use a fraction below 1")
    jobs = list(p.jobs)
    if "random-labels" in config.methods:
        jobs.append(Job(FORGET_ONLY, "random-labels", make_hparams("random-labels", {"retain_weight": 0})))
    run_id = config.run_id
    if out is not None:
        check_output(out, run_id, overwrite, "generalisation.json")
        claim_output(out, run_id)
    n_train = len(ds.y_train)
    val = np.arange(n_train, n_train + len(ds.y_val))
    val_c = val[ds.y_val.numpy() == klass]
    splits = {"forget": p.forget.positions, "retain": p.forget.retain_positions(n_train), "held_out": held,
              "val_class": val_c, "val_other": val[ds.y_val.numpy() != klass], "val": val}
    probe = representation_probe(p, held, klass)
    bench = Bench(p, splits=splits, probe=probe, probe_key={"probe": PROBE_SIZE, "class": klass})
    rows, _, _, floor = run_jobs(bench, jobs)
    none = next((r for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["generalisation"] = generalisation_ratio(r, none)
    results = {"run_id": run_id, "config": config.to_dict(), "class": klass,
               "forget": {"spec": config.forget, "size": len(p.forget), "held_out": len(held), "val_class": len(val_c)},
               "rows": [r for r in rows if r["method"] in config.methods or r["label"] == FORGET_ONLY],
               "noise_floor": floor}
    if out is not None:
        from .report.html import write_study_output
        write_study_output(out, "generalisation", results, f"random-label forgetting of class {klass} on "
                           f"{config.task}", format_generalisation(results), {}, config.to_dict())
    return results


def representation_probe(p, held: np.ndarray, klass: int):
    """probe(params) -> {"probe_accuracy": {forget, val_class, val}}: per model, a logistic regression on
    penultimate features of PROBE_SIZE retained training examples (a fixed seeded sample that holds
    all of class c's held-out examples up to half of it), scored on S_F and class c's validation
    examples against their true labels; the mean over models."""
    ds = p.dataset
    rng = np.random.default_rng([p.config.seed, PROBE_TAG])
    retained = np.setdiff1d(np.arange(len(ds.y_train)), p.forget.positions)
    own = rng.permutation(held)[:PROBE_SIZE // 2]
    others = rng.choice(np.setdiff1d(retained, own), min(PROBE_SIZE - len(own), len(retained) - len(own)),
                        replace=False)
    fit_on = np.concatenate([own, others])
    val_c = (ds.y_val == klass).numpy()
    read = {"forget": (ds.x_train[p.forget.positions], ds.y_train[p.forget.positions]),
            "val_class": (ds.x_val[val_c], ds.y_val[val_c]), "val": (ds.x_val, ds.y_val)}
    forward = template(p.task, ds)

    def probe(params) -> dict:
        accs = {k: [] for k in read}
        with torch.no_grad():
            for i in range(len(next(iter(params.values())))):
                one = {k: v[i] for k, v in params.items()}
                clf = LogisticRegression(max_iter=500)
                clf.fit(forward.embed(one, ds.x_train[fit_on]).numpy(), ds.y_train[fit_on].numpy())
                for k, (x, y) in read.items():
                    accs[k].append(float((clf.predict(forward.embed(one, x).numpy()) == y.numpy()).mean()))
        return {"probe_accuracy": {k: float(np.mean(v)) for k, v in accs.items()}}

    return probe


def generalisation_ratio(row: dict, none: dict | None) -> float | None:
    """(class c's validation accuracy drop) / (the forget set's drop), both from the originals (`none`)."""
    if none is None or row.get("diverged") or none is row:
        return None
    drop_forget = none["accuracy"]["forget"] - row["accuracy"]["forget"]
    if drop_forget <= 0.05:  # nothing forgotten: no ratio to speak of
        return None
    return (none["accuracy"]["val_class"] - row["accuracy"]["val_class"]) / drop_forget


def format_generalisation(results: dict) -> str:
    f = results["forget"]
    lines = [f"random-label forgetting of class {results['class']} on {results['config']['task']}: "
             f"forget {f['spec']} ({f['size']} examples), {f['held_out']} held-out training and {f['val_class']} "
             f"validation examples of the class; N = {results['config']['models']}",
             "",
             f"{'method':28} {'acc forget':>10} {'held out':>9} {'val class':>9} {'val other':>9} {'general.':>8} "
             f"{'probe f':>8} {'probe vc':>8} {'KLoM f':>7} {'seconds':>8}",
             "-" * 112]
    for r in results["rows"]:
        if r.get("diverged"):
            lines.append(f"{r['label']:28} diverged")
            continue
        a, pr = r["accuracy"], r.get("probe_accuracy") or {}
        g = "—" if r.get("generalisation") is None else f"{r['generalisation']:.2f}"
        lines.append(f"{r['label']:28} {a['forget']:10.3f} {a['held_out']:9.3f} {a['val_class']:9.3f} "
                     f"{a['val_other']:9.3f} {g:>8} {pr.get('forget', float('nan')):8.3f} "
                     f"{pr.get('val_class', float('nan')):8.3f} {r['klom_p95']['forget']:7.2f} {r['seconds']:8.1f}")
    lines += ["", "acc: against the true labels. held out: class c's training examples outside the forget set; "
              "general.: class c's validation drop / the forget set's drop (from none). probe: logistic regression "
              "on each model's penultimate features (fitted on retained examples), read on the forget set (f) and "
              "class c's validation examples (vc)."]
    return "\n".join(lines + small_n_warning(results["config"]["models"], WIDTH))


__all__ = ["DEFAULT_METHODS", "format_generalisation", "generalisation"]
