"""Fair hyperparameter tuning: every method searched with Optuna under the same trial budget, scored on
a *tuning* forget set drawn apart from the reported one, so no method is tuned on what it is judged by.

Each trial is a cell (`cells.run_cells`) kept in the cache as it finishes: the sampler is seeded, so a
rerun of an interrupted search proposes the same trials again and reads the finished ones back.

Saved configs live in <cache>/tuned/<task>/<forget spec>/<method>.json (tuned.py); `unlearnkit run --tuned`
reads them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cells import run_cells
from .errors import UnlearnkitError, option
from .experiment import Bench, Job, budget, prepare
from .files import atomic_write
from .forget import build_forget_set
from .methods import get_method, make_hparams
from .runs import computing, job_key, method_registry
from .tuned import load_tuned, tuned_path

log = logging.getLogger(__name__)

TUNING_SEED_OFFSET = 7919  # the tuning forget set is drawn from seed + this
DIVERGED_SCORE = 2 * math.log(1e5)  # worse than any finite KLoM
MAX_TRIALS = 10_000


def score(row: dict) -> float:
    """What tuning minimises: the mean over forget, retain and validation of KLoM p95, so a method must
    match the oracles on the forget set without drifting from them elsewhere."""
    if row["diverged"]:
        return DIVERGED_SCORE
    return float(np.mean([row["klom_p95"][s] for s in ("forget", "retain", "val")]))


@dataclass(frozen=True)
class TuneConfig:
    """What `tune` searches: one method, `trials` Optuna trials, on `tune_forget` (a forget spec apart from
    the reported one; None: the run's spec drawn from another seed)."""

    method: str
    trials: int = 20
    tune_forget: str | None = None

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise UnlearnkitError(f"{option('method')} must be a method's name, got {self.method!r}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, numbers.Integral):
            raise UnlearnkitError(f"{option('trials')} must be a whole number, got {self.trials!r}")
        if not 1 <= self.trials <= MAX_TRIALS:
            raise UnlearnkitError(f"{option('trials')} must be in [1, {MAX_TRIALS}], got {self.trials}")
        if self.tune_forget is not None and not isinstance(self.tune_forget, str):
            raise UnlearnkitError(f"{option('tune_forget')} must be a forget spec, got {self.tune_forget!r}")
        object.__setattr__(self, "trials", int(self.trials))


@dataclass
class Target:
    """What a search scores its trials on: a bench built on the tuning forget set, the score a trial's row
    gets (lower is better), what that score means, and the row fields each trial keeps."""

    bench: object
    score: Callable[[dict], float]
    objective: str
    keep: tuple[str, ...]
    tuning_forget: dict
    cache_dir: str


@computing
def tune(run_config, tune_config: TuneConfig) -> dict:
    """Search `tune_config.method`'s hyperparameters; save and return the best (with every trial).

    Classifier tasks minimise `score` (KLoM against the oracles); language-model tasks maximise TOFU's
    forget quality subject to model utility ≥ UTILITY_FLOOR × the originals' (`lm_score`). Either way
    the trials run on a tuning forget set apart from the reported one, as cells of that bench."""
    import optuna

    from .lm.task import LM_TASKS
    if not isinstance(tune_config, TuneConfig):
        raise UnlearnkitError(f"tune takes a TuneConfig second (e.g. TuneConfig('ga', trials=20)), got "
                              f"{type(tune_config).__name__}")
    lm = run_config.task in LM_TASKS
    registry = method_registry(run_config.task)
    method = get_method(tune_config.method, registry)
    if not method.hparams.search_space:
        raise UnlearnkitError(f"method {method.name!r} has no hyperparameters to tune")
    base = {n: v for m, n, v in run_config.hparams if m == method.name}  # --set: fixed, not searched
    space = {name: dims for name, dims in method.hparams.search_space.items() if name not in base}
    if not space:
        raise UnlearnkitError(f"every hyperparameter {method.name} tunes ({', '.join(method.hparams.search_space)}) "
                              f"is fixed by {option('hparams', flag='--set')}: nothing is left to search")
    target = (_lm_target if lm else _classifier_target)(run_config, tune_config, method)
    bench = target.bench

    def objective(trial: optuna.Trial) -> float:
        values = dict(base)
        for name, (kind, low, high) in space.items():
            if kind == "log":
                values[name] = trial.suggest_float(name, low, high, log=True)
            elif kind == "int":
                values[name] = trial.suggest_int(name, low, high)
            else:
                values[name] = trial.suggest_float(name, low, high)
        try:
            hp = make_hparams(method.name, values, registry)
        except UnlearnkitError as err:  # a combination outside the valid region (e.g. msteps > epochs)
            raise optuna.TrialPruned(str(err)) from None
        job = Job(method.name, method.name, hp)  # a cell: a rerun of an interrupted search reuses its trials
        (row, _), = run_cells(bench.cells, [(job_key(bench, job, registry), job)], bench.run_job)
        trial.set_user_attr("row", {k: row[k] for k in target.keep})
        return target.score(row)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=run_config.seed))
    study.optimize(objective, n_trials=tune_config.trials)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise UnlearnkitError("no trial completed: every sampled configuration was invalid")
    best = study.best_trial
    hparams = dataclasses.asdict(make_hparams(method.name, {**base, **best.params}, registry))
    result = {
        "task": run_config.task, "forget": run_config.forget, "method": method.name, "hparams": hparams,
        "score": best.value, "objective": target.objective, "tuning_forget": target.tuning_forget,
        "models": run_config.models, "trials": [
            {"number": t.number, "params": t.params, "score": t.value, **t.user_attrs} for t in completed],
    }
    path = tuned_path(target.cache_dir, run_config.task, run_config.forget, method.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(result, indent=2)))
    result["path"] = str(path)
    return result


def _classifier_target(run_config, tune_config: TuneConfig, method) -> Target:
    # the objective reads histogram KLoM alone: no other estimator or attack is computed per trial
    p = prepare(dataclasses.replace(run_config, methods=(method.name,), estimators=(), metrics=("klom",)))
    spec = tune_config.tune_forget or run_config.forget
    tuning_set = build_forget_set(spec, p.dataset, run_config.seed + TUNING_SEED_OFFSET)
    _check_apart(spec, tuning_set.positions, p.forget.positions)
    plan = budget(dataclasses.replace(p, forget=tuning_set), cached_jobs=False)  # the search trains on the tuning set
    plan.flops += (tune_config.trials - 1) * plan.method_flops  # every trial runs the method once
    plan.check(run_config.max_hours, p.cache.root if p.cache else None, "this search")
    if p.cache is None:
        raise UnlearnkitError("tuning saves its result in the cache directory: do not disable the cache")
    overlap = len(np.intersect1d(tuning_set.positions, p.forget.positions))
    return Target(Bench(p, forget=tuning_set), score, "mean KLoM p95 over forget, retain, val",
                  ("klom_p95", "accuracy", "seconds", "diverged"),
                  {"spec": spec, "seed": tuning_set.seed, "size": len(tuning_set), "overlap_with_reported": overlap},
                  str(p.cache.root.parent))


UTILITY_FLOOR = 0.95       # a tuned LM method keeps at least this fraction of the originals' model utility
INFEASIBLE = 1000.0        # behind every feasible trial (−log10 of a forget quality is at most ~300)


def lm_score(row: dict, utility_floor: float) -> float:
    """What LM tuning minimises: −log10(forget quality) (TOFU's KS-test p-value, read on a log scale as
    TOFU plots it) when model utility is at least `utility_floor` (UTILITY_FLOOR × the originals'), else
    INFEASIBLE plus the relative shortfall, so infeasible trials rank behind every feasible one and among
    themselves by how far they fall short; diverged trials last."""
    if row["diverged"] or row["forget_quality"] is None:
        return DIVERGED_SCORE + INFEASIBLE
    if row["model_utility"] < utility_floor:
        return INFEASIBLE + (utility_floor - row["model_utility"]) / utility_floor
    return -math.log10(max(row["forget_quality"], 1e-300))


def _lm_target(run_config, tune_config: TuneConfig, method) -> Target:
    from .lm_experiment import LMBench, lm_budget, lm_jobs, lm_row, prepare_lm

    config = dataclasses.replace(run_config, methods=(method.name,))
    jobs = lm_jobs(config)
    data, reported, cache, _ = prepare_lm(config, jobs)
    spec = tune_config.tune_forget or config.forget
    tuning = data.forget_positions(spec, config.seed + TUNING_SEED_OFFSET)
    _check_apart(spec, tuning, reported)
    for job in jobs:
        job.hparams.check_setting(data.task, data, tuning, config.seed)
    if cache is None:
        raise UnlearnkitError("tuning saves its result in the cache directory: do not disable the cache")
    plan = lm_budget(config, data, jobs, cache, forget=tuning, reference=False)  # trained on the tuning set
    plan.flops += (tune_config.trials - 1) * plan.method_flops
    plan.check(config.max_hours, cache.root, "this search")
    bench = LMBench(config, data, cache, forget=tuning, reference=False)  # the objective reads no MIA AUC
    originals, _ = lm_row(bench.originals_scores, bench.oracle_scores, dataclasses.replace(config, bootstrap=0))
    floor = UTILITY_FLOOR * originals["model_utility"]
    return Target(bench, lambda row: lm_score(row, floor),
                  f"maximise forget quality (minimise -log10 FQ) subject to model utility >= {UTILITY_FLOOR} x the "
                  f"originals' ({floor:.4f})",
                  ("forget_quality", "model_utility", "seconds", "diverged"),
                  {"spec": spec, "seed": config.seed + TUNING_SEED_OFFSET, "size": len(tuning),
                   "overlap_with_reported": len(np.intersect1d(tuning, reported))}, str(cache.root.parent))


def _check_apart(spec: str, tuning: np.ndarray, reported: np.ndarray) -> None:
    if np.array_equal(tuning, reported):
        raise UnlearnkitError(f"the tuning forget set drawn from {spec!r} is the reported one (a deterministic "
                              f"spec such as class:C): pass another with {option('tune_forget')}, e.g. another class")


__all__ = ["MAX_TRIALS", "TuneConfig", "lm_score", "load_tuned", "score", "tune"]
