"""The pipeline: task → zoo → forget set → methods → metrics → report, as one Python call.

`run(RunConfig(...))` is what `unlearnkit run` does. Everything a user can get wrong is checked before
any model is trained; results are written only when the run is complete.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch

from . import __version__
from .attribution.store import held_out_models
from .attribution.subsets import subset_size
from .backends import Later, finished
from .budget import Budget, StepProfile
from .cells import CellStore
from .data import Interactions, load_dataset
from .engine import Params, predict
from .engine.compute import current
from .errors import Diverged, UnlearnkitError, option
from .forget import build_forget_set
from .forget.worst import SELECTION, memorisation, per_example_losses, select
from .methods import Context, Ensemble, get_method
from .methods.base import Setting
from .metrics.trajectory import worse_after_best
from .runs import (
    DEFAULT_METHODS,
    MIN_MODELS,
    NOISE_FLOOR_METHOD,
    Job,
    RunConfig,
    Work,
    add_originals,
    build_jobs,
    classifier_task,
    computing,
    count_once,
    default_cache_dir,
    default_forget,
    default_methods,
    jobs_done,
    method_registry,
    on_compute,
    run_budget,
    run_jobs,
    run_method,
)
from .scoring import ArmScores, Settings, row_metrics
from .trajectories import Recorder, sample_positions
from .tuned import load_tuned
from .zoo import (
    ORACLE_SEEDS,
    ORIGINAL_SEEDS,
    ZooCache,
    arm_seeds,
    init_models,
    stable_hash,
    task_loss,
    template,
    tensor_digest,
    train_models,
    zoo_family,
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


class _NeedsModels(Exception):
    """Raised by `_NO_MODELS` when a forget spec asks for trained models (see `prepare`'s `check_only`)."""


class _NoModels:
    def __getattr__(self, name):
        raise _NeedsModels(name)


_NO_MODELS = _NoModels()  # ForgetResources that refuse to train: a clustered or hard spec is checked when built


@on_compute  # a forget set that needs models (worst:, near:) trains them
def prepare(config: RunConfig, check_only: bool = False) -> Prepared:
    """Check every input and load the data; raise UnlearnkitError before any work on bad input.
    `check_only` (a study checking its cells before any runs): nothing is trained, so a forget set that
    needs trained models (clustered, hard to unlearn) is left for its run to build and check (forget None)."""
    task = classifier_task(config.task)
    if config.lora:
        raise UnlearnkitError(f"{option('lora')} applies to language-model tasks (classifier methods train "
                              "every weight)")
    jobs = build_jobs(config, method_registry(config.task),
                      lambda m: load_tuned(config.cache_root, config.task, config.forget, m) if config.tuned else None)
    size = task.train_size if config.train_size is None else config.train_size
    dataset = load_dataset(task.dataset, config.data_dir, size, config.seed)
    if config.val_size is not None:
        if not 1 <= config.val_size <= len(dataset.y_val):
            raise UnlearnkitError(f"{option('val_size')} must be in [1, {len(dataset.y_val)}]")
        dataset = dataclasses.replace(dataset, x_val=dataset.x_val[:config.val_size],
                                      y_val=dataset.y_val[:config.val_size], val_ids=dataset.val_ids[:config.val_size])
    cache = config.zoo_cache()
    if check_only:
        try:
            forget = build_forget_set(config.forget, dataset, config.seed, _NO_MODELS)
        except _NeedsModels:
            return Prepared(config, task, dataset, None, jobs, cache)
    else:
        if (before := clustered_budget(config, task, dataset, cache)) is not None:  # what building the set trains
            before.check(config.max_hours, cache.root if cache else None, "building this forget set")
        forget = build_forget_set(config.forget, dataset, config.seed, ForgetResources(config, task, dataset, cache))
    for job in jobs:
        job.hparams.check_setting(task, dataset, forget.positions, config.seed)
    return Prepared(config, task, dataset, forget, jobs, cache)


class ForgetResources:
    """What clustered and hard-to-unlearn forget specs need, built only when one asks: datamodels (loaded
    from `config.datamodels`, else fitted on `datamodel_models` cached subset models), the run's cached
    original models, and what is computed from them (forget/specs.py says which spec needs what)."""

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

    def memorisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Counterfactual memorisation (and its margin counterpart) from the subset models datamodels are
        fitted on (the same cached models)."""
        from .attribution import train_subset_models
        runs = train_subset_models(self.task, self.dataset, self.config.datamodel_models, 0.5, self.config.seed,
                                   self.cache)
        return memorisation(runs.masks, runs.margins)

    def seeds(self) -> list[int]:
        return arm_seeds(ORIGINAL_SEEDS, self.config.models, self.config.seed)

    def originals(self) -> Params:
        """The run's original models: the cached arm `Bench` trains."""
        return train_models(self.task, self.dataset, torch.arange(len(self.dataset.y_train)), self.seeds(),
                            self.cache, "originals").params

    def embeddings(self, chunk: int = 8192) -> torch.Tensor:
        """Penultimate-layer features of the training set under the first original model, on the CPU: computed
        on the run's device, `chunk` examples at a time (50k CIFAR images at once would keep ~13 GB of
        ResNet-9 activations; each chunk also carries its 1000 calibration images). One model's plain
        forward, not vmapped: on the CPU chunks give the same bits as one call, so a clustered forget set does
        not depend on the chunk."""
        forward = template(self.task, self.dataset)
        dev = current().device
        first = {k: v[0].to(dev) for k, v in self.originals().items()}
        x = self.dataset.x_train
        with torch.no_grad():  # the originals are trained (or loaded) outside it
            return torch.cat([forward.embed(first, x[i:i + chunk].to(dev)).cpu() for i in range(0, len(x), chunk)])

    def original_losses(self) -> torch.Tensor:
        """Each training example's cross-entropy, averaged over the run's originals."""
        ds = self.dataset
        return per_example_losses(template(self.task, ds), self.originals(), ds.x_train, ds.y_train).mean(0)

    def bilevel(self, k: int, start: np.ndarray, hardest: bool) -> np.ndarray:
        """Fan et al.'s worst-case (or easiest) K-set, searched from `start` on the first SELECTION.models
        originals (forget/worst.py); cached."""
        ds, m = self.dataset, min(SELECTION.models, self.config.models)
        params = {name: v[:m] for name, v in self.originals().items()}
        seeds = self.seeds()[:m]
        identity = zoo_key(self.task, ds, torch.arange(len(ds.y_train)), seeds)
        return select(template(self.task, ds), params, (ds.x_train, ds.y_train), k, start, seeds,
                      self.task.recipe.batch_size, hardest, self.cache, identity)


def bench_digest(ds, forget, oracle_positions, blocks=(), probe_key=None) -> str:
    """With the config's bench_id, what keys a bench's jobs (cells.py): the data, the forget set, what the
    oracles train on, the evaluation blocks and a study's probe."""
    return stable_hash([ds.fingerprint, tensor_digest(torch.as_tensor(forget)), tensor_digest(torch.as_tensor(
        oracle_positions)), [[tensor_digest(t) for t in b] for b in blocks], probe_key])


class Bench:
    """Originals, oracles and the evaluator for one task, forget set and N: what `run` and `tune` share.

    Building it trains (or loads) the two reference arms; `run_job` applies one method to the originals
    and scores it against the oracles.
    """

    @on_compute
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
        self.registry = method_registry(self.config.task)
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
        self.bench_digest = bench_digest(ds, self.forget.positions, retain, blocks, probe_key)
        self.cells = CellStore.beside(p.cache)  # finished jobs (run_jobs)
        self.settings = Settings.of(p.config)
        start = time.perf_counter()
        self.oracles = self.scores(predict(self.forward, oracles.params, self.x_all))
        self.originals_scores = self.scores(predict(self.forward, self.originals.params, self.x_all))
        log.info("scored the originals and oracles on %d examples in %.1f s", len(self.y_all), time.perf_counter() - start)
        self.followed = np.concatenate(list(sample_positions(self.splits, seed).values()))

    def scores(self, logits: torch.Tensor) -> ArmScores:
        finite(logits)
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
        return finished(self.start_job(job))

    @on_compute
    def start_job(self, job: Job) -> Later | tuple[dict, dict | None]:
        """`run_job` in two parts: here, the device work (the method, its models' predictions, a study's
        probe); in the `Later` returned, the CPU work (scores and metrics), which a run on a GPU finishes
        while the next job trains (`backends.Local`)."""
        p = self.p
        # the noise-floor arm is an independent arm of oracles: it trains on what they train on
        retain = self.oracle_positions if job.method == NOISE_FLOOR_METHOD else self.retain
        ctx = Context(p.task, p.dataset, self.forward, self.originals.params, self.forget.positions, retain,
                      arm_seeds(ORIGINAL_SEEDS, p.config.models, p.config.seed), p.config.seed, p.cache)
        log.info("method %s", job.label)
        start = time.perf_counter()
        try:
            recorder = self.recorder(job)
            result, cost, last = run_method(ctx, get_method(job.method, self.registry).fn, job.hparams, recorder,
                                            p.config.trajectories, self.originals.params)
            if recorder is not None and not isinstance(result, Ensemble) and recorder.steps[-1] != last:
                recorder(last, result)  # where the method stopped
            trained = time.perf_counter()
            reference = None
            if isinstance(result, Ensemble):
                logits = result.logits(self.x_all)
                reference = result.oracle_logits(self.x_all) if result.oracle_logits else None
            else:  # the originals themselves (`none`) were scored when the bench was built
                logits = None if result is self.originals.params else predict(self.forward, result, self.x_all)
            for out in (logits, reference):
                if out is not None:
                    finite(out)  # before a probe runs on the weights
            # what a study measures beyond the scores (a relearning attack)
            probe = self.probe(result) if self.probe is not None and not isinstance(result, Ensemble) else {}
        except Diverged as err:
            return self._diverged(job, start, err)
        predicted = time.perf_counter()
        # what the CPU part needs of the result: not the models themselves (several jobs' may be pending)
        kept = {"reference": result.reference} if isinstance(result, Ensemble) else {}
        del result

        def finish() -> tuple[dict, dict | None]:
            begun = time.perf_counter()
            try:
                arm = self.originals_scores if logits is None else self.scores(logits)
                ref = self.scores(reference) if reference is not None else None
                metrics, values = row_metrics(arm, ref or self.oracles, self.oracles, self.splits, self.settings)
                log.info("method %s: %.1f s the method, %.1f s its predictions, %.1f s the scores and metrics",
                         job.label, trained - start, predicted - trained, time.perf_counter() - begun)
                row = {**metrics, **cost, "diverged": False, **kept, **probe}
                arrays = arm.arrays(f"row/{job.label}")
                if ref is not None:
                    arrays.update(ref.arrays(f"reference/{job.label}"))
                if recorder is not None and len(recorder.steps) > 1:
                    row["trajectory"], traj = recorder.result(self.oracles.margin[:, self.followed],
                                                              len(self.splits["forget"]))
                    arrays.update({f"trajectory/{job.label}/{k}": v for k, v in traj.items()})
            except Diverged as err:
                return self._diverged(job, start, err)
            return self._row(job, row), {"klom": values, "scores": arrays}
        return Later(finish)

    def _diverged(self, job: Job, start: float, err: Diverged) -> tuple[dict, None]:
        log.warning("method %s diverged: %s", job.label, err)
        return self._row(job, diverged_row(time.perf_counter() - start, str(err))), None

    @staticmethod
    def _row(job: Job, row: dict) -> dict:
        return {"method": job.method, "label": job.label, **row, "budget": job.budget, "tuned": job.tuned,
                "hparams": asdict(job.hparams)}


@computing
def run(config: RunConfig, out: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Run the whole evaluation; return the results dict (and write it under `out` if given).

    Everything that can fail is checked before anything is trained: the options, the data, the forget
    set, that `out` and the cache can be written, that `out` does not hold another run's results (unless
    `overwrite`), and that the work fits in memory, on disk and in `config.max_hours`.
    Language-model tasks (`unlearnkit.lm.task.LM_TASKS`) run through `unlearnkit.lm_experiment.run_lm`.
    Recommendation tasks (objective "bpr") run here, their methods from `methods.rec`, every row also
    reporting Recall@K and NDCG@K (`recommendation_probe`)."""
    from .lm.task import LM_TASKS
    from .report import check_output, claim_output, index, json_config, write_report, write_results
    if config.task in LM_TASKS:
        from .lm_experiment import run_lm
        return run_lm(config, out, overwrite)
    if out is not None:
        check_output(out, config.run_id, overwrite, mine=json_config(config))
    p = prepare(config)
    budget(p).check(config.max_hours, p.cache.root if p.cache else None)
    if out is not None:
        claim_output(out, config.run_id)
    bench = Bench(p, **recommendation_probe(p))
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


def recommendation_probe(p: Prepared) -> dict:
    """Bench's probe and probe_key for a recommendation task (Recall@K and NDCG@K in every row,
    `ranking.ranking_probe`); nothing for a classifier."""
    if not isinstance(p.dataset, Interactions):
        return {}
    from .ranking import ranking_probe
    retain = p.forget.retain_positions(len(p.dataset.y_train))
    return {"probe": ranking_probe(template(p.task, p.dataset), p.dataset, p.forget.positions, retain),
            "probe_key": recommendation_probe_key(p)}


def recommendation_probe_key(p: Prepared) -> dict | None:
    """What keys a recommendation run's probe in its jobs' cells (None for a classifier)."""
    from .ranking import RANK_K
    return {"ranking": RANK_K} if isinstance(p.dataset, Interactions) else None


def _profile(task, ds) -> StepProfile:
    return StepProfile.measure(task_loss(task, template(task, ds)), init_models(task, ds, [0]),
                               (ds.x_train, ds.y_train), task.recipe.batch_size)


def datamodels_budget(task, ds, models: int, subset: float, trak_models: int, seed: int,
                      cache: ZooCache | None) -> Budget:
    """What `unlearnkit datamodels` trains (`attribution.compute_datamodels`, `trak_lds`): M subset models and
    the held-out ones its LDS is measured on, each on a `subset` fraction of the training set, and TRAK's
    `trak_models` originals (nothing for them if cached)."""
    n_train, batch, epochs = len(ds.y_train), task.recipe.batch_size, task.recipe.epochs
    profile, out = _profile(task, ds), Budget()
    out.add(profile, models + held_out_models(models), subset_size(n_train, subset), epochs, batch, False,
            cache is not None)
    if trak_models:
        add_originals(out, profile, task.recipe, cache, zoo_family(task, ds, torch.arange(n_train)),
                      arm_seeds(ORIGINAL_SEEDS, trak_models, seed), n_train)
    return out


def clustered_budget(config: RunConfig, task, ds, cache: ZooCache | None, seen: set | None = None) -> Budget | None:
    """What building a clustered or hard-to-unlearn forget set trains before the run's own budget can be
    known: the originals (near:, lowest-loss:, and worst:/easy: with their bi-level search on a few of
    them), or the subset models datamodels are fitted on (pc: and influence: without --datamodels,
    memorised:). `seen`: the arms a study's earlier cells train (`runs.run_budget`): the originals count once."""
    kind, n_train, batch = config.forget.split(":")[0], len(ds.y_train), task.recipe.batch_size
    out = Budget()
    if kind in ("near", "lowest-loss", "worst", "easy"):
        seeds = arm_seeds(ORIGINAL_SEEDS, config.models, config.seed)
        family = zoo_family(task, ds, torch.arange(n_train))
        profile = _profile(task, ds)  # (measured once: a counted training step)
        add_originals(out, profile, task.recipe, cache, family, seeds, n_train,
                      counted=not count_once(seen, (family, tuple(seeds))))
        if kind in ("worst", "easy"):
            out.add(profile, min(SELECTION.models, config.models), n_train, SELECTION.iterations * SELECTION.epochs,
                    batch)
    elif kind in ("pc", "influence") and not config.datamodels:  # the datamodels `Prepared` fits (subset 0.5)
        out = datamodels_budget(task, ds, config.datamodel_models, 0.5, 0, config.seed, cache)
    elif kind == "memorised":
        out.add(_profile(task, ds), config.datamodel_models, subset_size(n_train, 0.5), task.recipe.epochs, batch,
                False, cache is not None)
    else:
        return None
    return out


def budget(p: Prepared, oracles_on: np.ndarray | None = None, more: tuple[Prepared, ...] = (),
           extra: tuple[Work, ...] = (), seen: set | None = None, cached_jobs: bool = True,
           digests: tuple[str, ...] = ()) -> Budget:
    """The training a prepared run will do (`runs.run_budget`); for a study, with its oracles' training set
    (default: the run's retain set), its other prepared forget sets (`more`, same task, data and jobs),
    other work, and what its earlier cells train (`seen`: arms, and jobs, which cells that differ only in
    their methods share). A plain run's job whose cell is kept trains nothing, unless not `cached_jobs`
    (a search, whose trials are other jobs than the one a default run keeps); so does a study's whose
    benches' digests it is given (`digests`, one per forget set: p's, then `more`'s)."""
    task, ds = p.task, p.dataset
    seeds = arm_seeds(ORIGINAL_SEEDS, p.config.models, p.config.seed)
    settings = [Setting(task, ds, q.forget.positions, q.forget.retain_positions(len(ds.y_train)), seeds,
                        p.config.seed) for q in (p, *more)]
    done = None
    if oracles_on is None and not more:  # a plain run's jobs, keyed as its Bench keys them
        bench = SimpleNamespace(config=p.config, bench_digest=bench_digest(
            ds, p.forget.positions, settings[0].retain, probe_key=recommendation_probe_key(p)))
        done = jobs_done(bench, CellStore.beside(p.cache) if cached_jobs else None, seen)
    elif digests:
        done = jobs_done([SimpleNamespace(config=p.config, bench_digest=d) for d in digests],
                         CellStore.beside(p.cache), seen)
    oracles_on = settings[0].retain if oracles_on is None else oracles_on
    return run_budget(_profile(task, ds), task.recipe, p.config, torch.arange(len(ds.y_train)),
                      torch.as_tensor(oracles_on), settings, lambda positions: zoo_family(task, ds, positions),
                      p.cache, p.jobs, method_registry(p.config.task), list(extra), seen, done)


def finite(logits: torch.Tensor) -> None:
    """Refuse weights a method left non-finite without a non-finite loss (one huge step, or its own code)."""
    bad = (~torch.isfinite(logits)).flatten(1).any(1).nonzero().flatten().tolist()
    if bad:
        raise Diverged(-1, bad, f"the weights give non-finite outputs in model(s) {bad[:8]}")


def diverged_row(seconds: float, why: str) -> dict:
    nan = {"forget": None, "retain": None, "val": None}
    return {"klom_p95": nan, "klom_mean": dict(nan), "klom_median": dict(nan),
            "accuracy": dict(nan), "seconds": seconds, "flops": None, "diverged": True, "why": why}


__all__ = ["DEFAULT_METHODS", "MIN_MODELS", "NOISE_FLOOR_METHOD", "Bench", "ForgetResources", "Job", "Prepared",
           "RunConfig",
           "budget", "build_jobs", "default_cache_dir", "default_forget", "default_methods", "prepare",
           "run", "run_jobs"]
