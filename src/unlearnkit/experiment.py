"""The pipeline: task → zoo → forget set → methods → metrics → report, as one Python call.

`run(RunConfig(...))` is what `unlearnkit run` does. Everything a user can get wrong is checked before
any model is trained; results are written only when the run is complete.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import __version__
from .attribution.store import HELD_OUT
from .budget import Budget, StepProfile
from .cells import CellStore
from .data import load_dataset
from .engine import predict
from .engine.observe import observing
from .errors import Diverged, UnlearnkitError
from .forget import build_forget_set
from .methods import REGISTRY, Context, Ensemble, get_method
from .metrics.trajectory import worse_after_best
from .models import init_params
from .runs import (
    DEFAULT_METHODS,
    MIN_MODELS,
    NOISE_FLOOR_METHOD,
    Job,
    RunConfig,
    build_jobs,
    classifier_task,
    computing,
    default_cache_dir,
    default_forget,
    default_methods,
    run_budget,
    run_jobs,
)
from .scoring import ArmScores, Settings, row_metrics
from .trajectories import Recorder, sample_positions
from .tuned import load_tuned
from .zoo import (
    ORACLE_SEEDS,
    ORIGINAL_SEEDS,
    ZooCache,
    arm_seeds,
    cross_entropy_loss,
    stable_hash,
    template,
    tensor_digest,
    train_models,
    zoo_key,
)

log = logging.getLogger(__name__)

@dataclass
class Prepared:
    """A validated run: data, forget set, the jobs with their hyperparameters — nothing trained yet."""

    config: RunConfig
    task: object
    dataset: object
    forget: object
    jobs: list[Job]
    cache: ZooCache | None


def prepare(config: RunConfig) -> Prepared:
    """Check every input and load the data; raise UnlearnkitError before any work on bad input."""
    task = classifier_task(config.task)
    cache_dir = default_cache_dir() if config.cache_dir is None else config.cache_dir
    jobs = build_jobs(config, REGISTRY,
                      lambda m: load_tuned(cache_dir, config.task, config.forget, m) if config.tuned else None)
    size = task.train_size if config.train_size is None else config.train_size
    dataset = load_dataset(task.dataset, config.data_dir, size, config.seed)
    if config.val_size is not None:
        if not 1 <= config.val_size <= len(dataset.y_val):
            raise UnlearnkitError(f"--val-size must be in [1, {len(dataset.y_val)}]")
        dataset = type(dataset)(dataset.name, dataset.x_train, dataset.y_train, dataset.train_ids,
                                dataset.x_val[:config.val_size], dataset.y_val[:config.val_size],
                                dataset.val_ids[:config.val_size], dataset.num_classes)
    cache = ZooCache(cache_dir) if cache_dir else None
    if (before := clustered_budget(config, task, dataset, cache)) is not None:  # what building the set trains
        before.check(config.max_hours, cache.root if cache else None, "building this forget set")
    forget = build_forget_set(config.forget, dataset, config.seed, ForgetResources(config, task, dataset, cache))
    for job in jobs:
        job.hparams.check_setting(task, dataset, forget.positions, config.seed)
    return Prepared(config, task, dataset, forget, jobs, cache)


class ForgetResources:
    """What clustered forget specs need, built only when one asks: datamodels (loaded from
    `config.datamodels`, else fitted on `datamodel_models` cached subset models) and embeddings."""

    def __init__(self, config: RunConfig, task, dataset, cache):
        self.config, self.task, self.dataset, self.cache = config, task, dataset, cache

    def datamodels(self):
        from .attribution import compute_datamodels, load_datamodels
        if self.config.datamodels:
            return load_datamodels(self.config.datamodels, self.task, self.dataset)
        return compute_datamodels(self.task, self.dataset, self.config.datamodel_models, 0.5, self.config.seed,
                                  self.cache).datamodels

    def principal_projections(self, k: int) -> torch.Tensor:
        return self.datamodels().principal_projections(np.arange(len(self.dataset.y_train)), k)

    def embeddings(self) -> torch.Tensor:
        """Penultimate-layer features of the training set under the first original model."""
        forward = template(self.task, self.dataset)
        arm = train_models(self.task, self.dataset, torch.arange(len(self.dataset.y_train)),
                           arm_seeds(ORIGINAL_SEEDS, self.config.models, self.config.seed), self.cache, "originals")
        with torch.no_grad():
            return forward.embed({k: v[0] for k, v in arm.params.items()}, self.dataset.x_train)


class Bench:
    """Originals, oracles and the evaluator for one task, forget set and N: what `run` and `tune` share.

    Building it trains (or loads) the two reference arms; `run_job` applies one method to the originals
    and scores it against the oracles.
    """

    def __init__(self, p: Prepared, forget=None, oracle_positions=None, blocks=(), splits=None, probe=None,
                 probe_key=None):
        """`forget` replaces the run's forget set (tuning); `oracle_positions` what the oracles and the
        noise-floor arm train on (default: all but the forget set; corrective unlearning retrains on the
        corrected data instead); `blocks` are (x, y) evaluated after the validation set and `splits`
        names the positions of every split (default forget, retain, val); `probe(params) -> dict` adds
        to each row what a study measures on the unlearned models themselves, `probe_key` says what it is
        (for the jobs' cell keys)."""
        self.probe = probe
        self.p, self.config, self.forget = p, p.config, forget or p.forget
        self.retain = self.forget.retain_positions(len(p.dataset.y_train))
        self.oracle_positions = self.retain if oracle_positions is None else np.asarray(oracle_positions)
        ds, n, seed = p.dataset, p.config.models, p.config.seed
        self.forward = template(p.task, ds)
        everything, retain = torch.arange(len(ds.y_train)), torch.as_tensor(self.oracle_positions)
        seeds = {"originals": arm_seeds(ORIGINAL_SEEDS, n, seed), "oracles": arm_seeds(ORACLE_SEEDS, n, seed)}
        self.originals = train_models(p.task, ds, everything, seeds["originals"], p.cache, "originals")
        oracles = train_models(p.task, ds, retain, seeds["oracles"], p.cache, "oracles")
        # what names the reference arms in a cache (the report's provenance)
        self.cache_keys = {"originals": zoo_key(p.task, ds, everything, seeds["originals"]),
                           "oracles": zoo_key(p.task, ds, retain, seeds["oracles"])}
        self.x_all = torch.cat([ds.x_train, ds.x_val, *(x for x, _ in blocks)])
        self.y_all = torch.cat([ds.y_train, ds.y_val, *(y for _, y in blocks)])
        self.splits = splits or {"forget": self.forget.positions, "retain": self.retain,
                                 "val": np.arange(len(ds.y_train), len(ds.y_train) + len(ds.y_val))}
        # with the config's bench_id, what keys this bench's jobs (cells.py): data, forget set, oracles, blocks
        self.bench_digest = stable_hash([ds.fingerprint, tensor_digest(torch.as_tensor(self.forget.positions)),
                                         tensor_digest(retain), [[tensor_digest(t) for t in b] for b in blocks],
                                         probe_key])
        self.cells = CellStore.beside(p.cache)  # finished jobs (run_jobs)
        self.settings = Settings.of(p.config)
        self.oracles = self.scores(predict(self.forward, oracles.params, self.x_all))
        self.originals_scores = self.scores(predict(self.forward, self.originals.params, self.x_all))
        self.followed = np.concatenate(list(sample_positions(self.splits, seed).values()))

    def scores(self, logits: torch.Tensor) -> ArmScores:
        s = ArmScores.from_logits(logits, self.y_all)
        if not s.finite():
            raise Diverged(-1, np.nonzero(~np.isfinite(s.margin).all(1))[0].tolist())
        return s

    def recorder(self, job: Job) -> Recorder | None:
        """A trajectory recorder, started at the originals, for a method that trains (when asked)."""
        if not self.p.config.trajectories or not hasattr(job.hparams, "epochs") or job.method == NOISE_FLOOR_METHOD:
            return None
        recorder = Recorder(self.forward, self.x_all[self.followed], self.y_all[self.followed])
        recorder(0, self.originals.params)
        return recorder

    def run_job(self, job: Job) -> tuple[dict, dict | None]:
        """One results row, and (unless the method diverged) {"klom": per-example KLoM, "scores": the
        arrays scores.npz keeps for the row}."""
        p = self.p
        # the noise-floor arm is an independent arm of oracles: it trains on what they train on
        retain = self.oracle_positions if job.method == NOISE_FLOOR_METHOD else self.retain
        ctx = Context(p.task, p.dataset, self.forward, self.originals.params, self.forget.positions, retain,
                      arm_seeds(ORIGINAL_SEEDS, p.config.models, p.config.seed), p.config.seed, p.cache)
        log.info("method %s", job.label)
        start = time.perf_counter()
        extra = None
        try:
            recorder = self.recorder(job)
            if recorder is None:
                result, cost = ctx.charged(get_method(job.method).fn, job.hparams)
            else:
                template = {k: tuple(v.shape) for k, v in self.originals.params.items()}
                with observing(recorder, p.config.trajectories, template) as watched:
                    result, cost = ctx.charged(get_method(job.method).fn, job.hparams)
                cost["seconds"] -= watched.seconds
                if not isinstance(result, Ensemble) and recorder.steps[-1] != watched.steps:
                    recorder(watched.steps, result)  # where the method stopped
            reference = None
            if isinstance(result, Ensemble):
                arm = self.scores(result.logits(self.x_all))
                reference = self.scores(result.oracle_logits(self.x_all)) if result.oracle_logits else None
            else:
                # the originals themselves (`none`) were scored when the bench was built
                arm = (self.originals_scores if result is self.originals.params
                       else self.scores(predict(self.forward, result, self.x_all)))
            metrics, values = row_metrics(arm, reference or self.oracles, self.oracles, self.splits, self.settings)
            row = {**metrics, **cost, "diverged": False}
            if isinstance(result, Ensemble):
                row["reference"] = result.reference
            elif self.probe is not None:  # what a study measures beyond the scores (a relearning attack)
                row.update(self.probe(result))
            arrays = arm.arrays(f"row/{job.label}")
            if reference is not None:
                arrays.update(reference.arrays(f"reference/{job.label}"))
            if recorder is not None and len(recorder.steps) > 1:
                row["trajectory"], traj = recorder.result(self.oracles.margin[:, self.followed],
                                                          len(self.splits["forget"]))
                arrays.update({f"trajectory/{job.label}/{k}": v for k, v in traj.items()})
            extra = {"klom": values, "scores": arrays}
        except Diverged as err:
            row = diverged_row(time.perf_counter() - start, str(err))
            log.warning("method %s diverged: %s", job.label, err)
        return {"method": job.method, "label": job.label, **row, "budget": job.budget, "tuned": job.tuned,
                "hparams": asdict(job.hparams)}, extra


@computing
def run(config: RunConfig, out: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Run the whole evaluation; return the results dict (and write it under `out` if given).

    Everything that can fail is checked before anything is trained: the options, the data, the forget
    set, that `out` and the cache can be written, that `out` does not hold another run's results (unless
    `overwrite`), and that the work fits in memory, on disk and in `config.max_hours`.
    Language-model tasks (`unlearnkit.lm.task.LM_TASKS`) run through `unlearnkit.lm.experiment.run_lm`."""
    from .lm.task import LM_TASKS
    from .report import check_output, claim_output, index, json_config, write_report, write_results
    if config.task in LM_TASKS:
        from .lm.experiment import run_lm
        return run_lm(config, out, overwrite)
    if out is not None:
        check_output(out, config.run_id, overwrite, mine=json_config(config))
    p = prepare(config)
    budget(p).check(config.max_hours, p.cache.root if p.cache else None)
    if out is not None:
        claim_output(out, config.run_id)
    bench = Bench(p)
    rows, per_example, scores, noise_floor = run_jobs(bench, p.jobs)
    for r in rows:  # a point "worse after its best step" by more than the noise floor's p95, not by noise
        if "trajectory" in r and noise_floor["klom_p95"]["forget"] is not None:
            forget = scores[f"trajectory/{r['label']}/klom"][:, :len(bench.splits["forget"])]
            r["trajectory"]["forget_worse_after_best_beyond_floor"] = float(
                worse_after_best(forget, noise_floor["klom_p95"]["forget"]).mean())
    ds = p.dataset
    results = {
        "run_id": config.run_id,
        "config": {**config.to_dict(), "train_size": len(ds.y_train), "val_size": len(ds.y_val),
                   "unlearnkit": __version__, "torch": torch.__version__},
        "forget_set": p.forget.to_dict(),
        "oracle": {"accuracy": bench.oracles.accuracies(bench.splits)},
        "rows": [r for r in rows if r["method"] in config.methods],
        "noise_floor": noise_floor,
        "provenance": {"cache_keys": bench.cache_keys},
    }
    if out is not None:
        if p.config.trajectories:
            scores["trajectory/positions"] = bench.followed
        scores.update({**bench.originals_scores.arrays("arm/originals"), **bench.oracles.arrays("arm/oracles"),
                       "labels": bench.y_all.numpy(), "example_ids": np.concatenate([ds.train_ids, ds.val_ids])})
        write_results(out, results, per_example, bench.splits, p.forget.ids, scores)
        write_report(out, results)
        index.record(out, results)
    return results


def _profile(task, ds) -> StepProfile:
    one = init_params(task.model, ds.input_shape, ds.num_classes, [0], **task.model_kwargs)
    return StepProfile.measure(cross_entropy_loss(template(task, ds)), one, (ds.x_train, ds.y_train),
                               task.recipe.batch_size)


def clustered_budget(config: RunConfig, task, ds, cache: ZooCache | None) -> Budget | None:
    """What building a clustered forget set trains before the run's own budget can be known: the
    originals (near:) or the subset models its datamodels are fitted on (pc: without --datamodels)."""
    kind, n_train, batch = config.forget.split(":")[0], len(ds.y_train), task.recipe.batch_size
    out = Budget()
    if kind == "near":
        seeds = arm_seeds(ORIGINAL_SEEDS, config.models, config.seed)
        out.add(_profile(task, ds), config.models, n_train, task.recipe.epochs, batch,
                cache is not None and cache.has(zoo_key(task, ds, torch.arange(n_train), seeds)), cache is not None)
    elif kind == "pc" and not config.datamodels:
        models = config.datamodel_models + max(10, round(HELD_OUT * config.datamodel_models))
        out.add(_profile(task, ds), models, n_train // 2, task.recipe.epochs, batch, False, cache is not None)
    else:
        return None
    return out


def budget(p: Prepared) -> Budget:
    """The training a prepared run will do (`runs.run_budget`)."""
    task, ds = p.task, p.dataset
    return run_budget(_profile(task, ds), task.recipe, p.config, torch.arange(len(ds.y_train)),
                      torch.as_tensor(p.forget.retain_positions(len(ds.y_train))), len(p.forget),
                      lambda positions, seeds: zoo_key(task, ds, positions, seeds), p.cache, p.jobs)


def diverged_row(seconds: float, why: str) -> dict:
    nan = {"forget": None, "retain": None, "val": None}
    return {"klom_p95": nan, "klom_mean": dict(nan), "klom_median": dict(nan),
            "accuracy": dict(nan), "seconds": seconds, "flops": None, "diverged": True, "why": why}


__all__ = ["DEFAULT_METHODS", "MIN_MODELS", "NOISE_FLOOR_METHOD", "Bench", "ForgetResources", "Job", "Prepared",
           "RunConfig",
           "budget", "build_jobs", "default_cache_dir", "default_forget", "default_methods", "prepare",
           "run", "run_jobs"]
