"""The language-model pipeline: tofu-synth task → LM zoo → forget set → LM methods → TOFU/MUSE metrics
and sequence-level KLoM → report. `unlearnkit run --task tofu-synth-gpt` lands here.

Arms as for classifiers: originals (trained on every training item), oracles (on the retain set) and
the retrain arm (the retain set again, other seeds: the noise floor), N models each, cached by the zoo.
Every metric is computed per model and then averaged over the N models of the arm, except forget
quality, which compares unlearned model i with oracle i (TOFU's KS test is between two models' truth
ratios) and reports the median over the N pairs.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch

from . import __version__
from .budget import Budget, StepProfile
from .cells import CellStore
from .data.probes import N_FLUENCY, PROBE_TYPES, Probe, author_probes, fluency_prompts, neighbour_probes, sample
from .data.tofu_synth import author_profiles
from .errors import Diverged, UnlearnkitError, option
from .lm import steering
from .lm.evaluate import ItemScores, answer_seq, fluency_scores, probe_scores, score_items
from .lm.lora import LoraSpec
from .lm.model import LMForward, answer_width, build_lm, init_lm_params
from .lm.scoring import concat_splits, diverged_lm_row, item_score_arrays, lm_row
from .lm.task import DEFAULT_LM_METHODS, TofuData, get_lm_task, load_tofu  # noqa: F401 (re-exported)
from .lm.tokenizer import IGNORE, special_ids
from .lm.train import lm_family, lm_loss, train_lm_models
from .lm_trajectories import LMRecorder
from .methods.base import Setting
from .methods.lm import LM_REGISTRY, LMContext
from .methods.lm.base import check_lora
from .metrics.trajectory import StepRule
from .runs import (
    NOISE_FLOOR_METHOD,
    Job,
    RunConfig,
    Work,
    add_originals,
    build_jobs,
    computing,
    jobs_done,
    on_compute,
    run_budget,
    run_jobs,
    run_method,
)
from .tuned import load_tuned
from .zoo import ORACLE_SEEDS, ORIGINAL_SEEDS, RETRAIN_SEEDS, ZooCache, arm_seeds, stable_hash

log = logging.getLogger(__name__)

PROBES_PER_TYPE = 8    # RWKU-style probes scored per type: a fixed seeded sample of the forget authors'
NEIGHBOUR_PROBES = 16  # neighbour probes scored (locality)
PROBE_ROOM = 12        # context tokens a probe's question must leave for the answer


def probe_sets(data: TofuData, forget: np.ndarray, seed: int) -> dict[str, list[Probe]]:
    """The RWKU-style probe sets (`data.probes`) of a forget set, scored in every row: "probe_<type>" for
    each probe type, probes of the forget authors' trained facts, and "neighbour", probes of the retained
    authors that share a trained fact's value with a forget author; each a fixed sample (by `seed`) of
    the probes whose question leaves PROBE_ROOM tokens of the context. None for a canary forget set."""
    t = data.task
    authors = sorted({data.items[p].author for p in forget if data.items[p].kind == "author"})
    if not authors:
        return {}
    profiles = author_profiles(t.n_authors, t.qa_per_author, t.data_seed)
    fits = lambda q: len(data.tok.encode(q).ids) <= t.max_len - PROBE_ROOM
    sets = {}
    for i, kind in enumerate(PROBE_TYPES):
        pool = [q for a in authors for q in author_probes(profiles[a], profiles, (kind,), t.data_seed) if q.trained]
        if chosen := sample(pool, PROBES_PER_TYPE, seed, fits, stream=i):
            sets[f"probe_{kind}"] = chosen
    if chosen := sample(neighbour_probes(profiles, authors, t.data_seed), NEIGHBOUR_PROBES, seed, fits,
                        stream=len(PROBE_TYPES)):
        sets["neighbour"] = chosen
    return sets


def lm_jobs(config: RunConfig) -> list[Job]:
    """Validate the run's LM methods and options; one Job per method (and per budget)."""
    unknown = [m for m in config.methods if m not in LM_REGISTRY]
    if unknown:
        raise UnlearnkitError(f"unknown language-model method(s) {', '.join(unknown)}; known: {', '.join(LM_REGISTRY)}")
    if config.train_size is not None or config.val_size is not None:  # --data-dir and --datamodels: RunConfig
        raise UnlearnkitError(f"{option('train_size')} and {option('val_size')} apply to classifier tasks only "
                              "(language-model tasks generate their data)")
    check_lora(config.methods if config.lora else (), LM_REGISTRY)
    return build_jobs(config, LM_REGISTRY,
                      lambda m: load_tuned(config.cache_root, config.task, config.forget, m) if config.tuned else None)


class LMBench:
    """Originals, oracles and the scorer of one LM task, forget set and N (what `run` needs)."""

    @on_compute
    def __init__(self, config: RunConfig, data: TofuData | None = None, cache: ZooCache | None = None,
                 identified: np.ndarray | None = None, probe=None, probe_key=None, forget: np.ndarray | None = None,
                 reference: bool = True):
        """`identified`: corrective unlearning (`lm_corrective`), the unlearner told only these positions of
        the forget set M = config.forget: methods unlearn them (their retain set keeps the rest of M), the
        oracles and the noise floor train without all of M, the forget metrics cover M, and KLoM is also
        summarised on the identified and unidentified items. `probe(params) -> dict` adds what a study
        measures on the unlearned models themselves (a relearning attack) to each row; `probe_key` says what
        it is (for the jobs' cell keys). `forget`: positions that replace the config's forget set (tuning).
        `reference=False`: rows without the Reference attack, whose reference models are a whole arm (the
        retrain arm) to train: for what reads no MIA AUC (`llm ood`'s curves, a tuning search's objective)."""
        self.probe = probe
        self.reference = reference
        self.config = config
        self.task = get_lm_task(config.task)
        self.data = data or load_tofu(self.task)
        d, n, seed = self.data, config.models, config.seed
        everything = np.arange(len(d.items))
        self.manipulated = d.forget_positions(config.forget, seed) if forget is None else np.sort(np.asarray(forget))
        self.forget = self.manipulated if identified is None else np.sort(np.asarray(identified))
        if not np.isin(self.forget, self.manipulated).all():
            raise UnlearnkitError("the identified items must be part of the forget set")
        self.retain = np.setdiff1d(everything, self.forget)
        self.oracle_positions = np.setdiff1d(everything, self.manipulated)
        within = np.isin(self.manipulated, self.forget)
        self.subsets = {} if identified is None else {k: v for k, v in (("identified", np.flatnonzero(within)),
                                                                        ("unidentified", np.flatnonzero(~within)))
                                                      if len(v)}
        self.bench_digest = lm_bench_digest(self.forget, None if identified is None else self.manipulated, probe_key,
                                            reference)
        self.cache = cache
        self.cells = CellStore.beside(cache)  # finished jobs (run_jobs)
        self.forward = LMForward(d.config)
        self.generator = build_lm(d.config)
        self.originals = train_lm_models(d.config, d.tensors, torch.as_tensor(everything),
                                         arm_seeds(ORIGINAL_SEEDS, n, seed), self.task.recipe, cache, "originals")
        self.oracles = train_lm_models(d.config, d.tensors, torch.as_tensor(self.oracle_positions),
                                       arm_seeds(ORACLE_SEEDS, n, seed), self.task.recipe, cache, "oracles")
        self.sets = {"forget": [d.items[p] for p in self.manipulated],
                     "retain": [d.items[p] for p in d.retain_sample(self.oracle_positions, seed)],
                     "world": list(d.bench.world), "val": list(d.holdout_like(self.manipulated))}
        self.probe_items = probe_sets(d, self.manipulated, seed)  # RWKU-style probes, neighbours (locality)
        self.fluency_prompts = fluency_prompts(N_FLUENCY, seed)
        self.probe_new_tokens = int((d.tensors[1] != IGNORE).sum(1).max()) + 4
        self._reference_seq = None
        self.oracle_scores = self.score(self.oracles.params)
        self._originals_scores = None

    @property
    def reference_seq(self) -> dict[str, np.ndarray]:
        """The Reference attack's reference models' mean answer log-probabilities on the forget and
        held-out items, (N, items) each: model i of an arm is attacked with reference model i.

        OpenUnlearning's reference model is a retain-only model (its TOFU config names the
        "..._retain90" model, its MUSE config the "..._retrain" one): the very model whose logs also
        judge forget quality and privleak. Here the oracles judge, so the attacker's reference models
        are the retrain arm instead — trained on the oracles' data (every item but the forget set) with
        other seeds, the noise floor's models (`methods.lm.retrain`, the same zoo cache entry): a
        retain-only reference like OpenUnlearning's, independent of the models it is compared with. The
        retrain row is its own reference (its Reference AUC is 0.5)."""
        if self._reference_seq is None:
            d, c = self.data, self.config
            arm = train_lm_models(d.config, d.tensors, torch.as_tensor(self.oracle_positions),
                                  arm_seeds(RETRAIN_SEEDS, c.models, c.seed), self.task.recipe, self.cache, "retrain")
            self._reference_seq = {s: answer_seq(self.forward, arm.params, d.tok, self.sets[s], self.task.max_len)
                                   for s in ("forget", "val")}
        return self._reference_seq

    @property
    def originals_scores(self) -> dict[str, ItemScores]:
        if self._originals_scores is None:
            self._originals_scores = self.score(self.originals.params)
        return self._originals_scores

    def score(self, params) -> dict[str, ItemScores]:
        """Every item set's scores; an inference-time method's params are scored through it (`lm.steering`)."""
        t, d = self.task, self.data
        common = (steering.forward_for(self.forward, params), params, self.generator, d.tok)
        attacks = lambda s: dict(mia=True, gradnorm=True,
                                 reference_seq=self.reference_seq[s] if self.reference else None)
        out = {"forget": score_items(*common, self.sets["forget"], t.max_len, rouge=True, verbmem=True,
                                     **attacks("forget")),
               "retain": score_items(*common, self.sets["retain"], t.max_len, rouge=True),
               "world": score_items(*common, self.sets["world"], t.max_len, rouge=True, options=True),
               "val": score_items(*common, self.sets["val"], t.max_len, **attacks("val"))}
        return out | self.score_probes(params)

    def score_probes(self, params) -> dict[str, ItemScores]:
        """The probe sets' ROUGE (all generated together, then split by set) and the fluency prompts'."""
        d, names = self.data, list(self.probe_items)
        out = {}
        if names:
            flat = [p for n in names for p in self.probe_items[n]]
            rouge = probe_scores(self.generator, params, d.tok, flat, self.probe_new_tokens).rouge
            ends = np.cumsum([len(self.probe_items[n]) for n in names])
            out = {n: ItemScores(seq=None, rouge=r) for n, r in zip(names, np.split(rouge, ends[:-1], axis=1))}
        out["fluency"] = fluency_scores(self.generator, params, d.tok, self.fluency_prompts, self.task.max_len)
        return out

    def context(self, job: Job | None = None) -> LMContext:
        """What a method gets; the noise-floor arm (an independent arm of oracles) trains where they do."""
        d, c = self.data, self.config
        retain = self.oracle_positions if job is not None and job.method == NOISE_FLOOR_METHOD else self.retain
        return LMContext(self.task, d, self.forward, self.originals.params, self.forget, retain,
                         arm_seeds(ORIGINAL_SEEDS, c.models, c.seed), c.seed, self.cache, tokens=d.tensors,
                         items=d.items, tok=d.tok, pad_id=special_ids(d.tok)[0], eos_id=special_ids(d.tok)[1],
                         lm_config=d.config, recipe=self.task.recipe, max_len=self.task.max_len,
                         lora=LoraSpec(c.lora) if c.lora else None)

    def recorder(self, job: Job) -> LMRecorder | None:
        """A per-step evaluator, started at the originals, for a method that trains (when asked)."""
        if not self.config.trajectories or not hasattr(job.hparams, "epochs") or job.method == NOISE_FLOOR_METHOD:
            return None
        recorder = LMRecorder(self)
        recorder(0, self.originals.params)
        return recorder

    @on_compute
    def run_job(self, job: Job) -> tuple[dict, dict | None]:
        """One results row, and (unless the method diverged) {"klom": per-example KLoM, "scores": the
        arrays scores.npz keeps for the row}."""
        ctx = self.context(job)
        log.info("method %s", job.label)
        start = time.perf_counter()
        extra = None
        try:
            recorder = self.recorder(job)
            params, cost, last = run_method(ctx, LM_REGISTRY[job.method].fn, job.hparams, recorder,
                                            self.config.trajectories, self.originals.params)
            if not all(torch.isfinite(v).all() for v in params.values()):
                raise Diverged(-1, [])
            scores = self.score(params)
            row, values = lm_row(scores, self.oracle_scores, self.config, self.subsets)
            row.update({**cost, "diverged": False})
            if (steered := steering.kind(params)) is not None:  # suppresses at inference; the weights still know
                row["mechanism"] = steering.MECHANISM[steered]
                if diagnostics := steering.diagnostics(params):
                    row["steering"] = diagnostics
            if self.probe is not None:  # what a study measures beyond the scores (a relearning attack)
                row.update(self.probe(params))
            extra = {"klom": values, "scores": item_score_arrays(scores, f"row/{job.label}")}
            if recorder is not None:
                if recorder.steps[-1] != last:
                    recorder(last, params)  # where the method stopped
                row["trajectory"], arrays = recorder.result(StepRule.parse(self.config.best_step))
                extra["scores"].update({f"trajectory/{job.label}/{k}": v for k, v in arrays.items()})
        except Diverged as err:
            log.warning("method %s diverged: %s", job.label, err)
            row = diverged_lm_row(time.perf_counter() - start, str(err))
        return {"method": job.method, "label": job.label, **row, "budget": job.budget, "tuned": job.tuned,
                "hparams": asdict(job.hparams)}, extra


def lm_bench_digest(forget: np.ndarray, manipulated: np.ndarray | None = None, probe_key=None,
                    reference: bool = True) -> str:
    """With the config's bench_id, what keys an LM bench's jobs: its forget set (and, in a corrective study,
    the manipulated set it is part of and the study's probe; and whether its rows carry the Reference attack)."""
    forget = np.asarray(forget)
    key = forget.tolist() if manipulated is None else [forget.tolist(), manipulated.tolist(), probe_key]
    return stable_hash(key if reference else [key, "no reference attack"])


def lm_budget(config: RunConfig, data: TofuData, jobs: list[Job], cache: ZooCache | None,
              identified: list[np.ndarray] | None = None, extra: tuple[Work, ...] = (),
              forget: np.ndarray | None = None, seen: set | None = None, reference: bool = True,
              digests: tuple[str, ...] = ()) -> Budget:
    """The training an LM run will do (`runs.run_budget`) on the run's forget set (or `forget`: a search's
    tuning set); for a corrective study, with the forget sets it runs its methods on (`identified`: its
    oracles train without all of the run's forget set), other work, and what a study's earlier cells train
    (`seen`). A plain run's job whose cell is kept trains nothing (not a search's: its trials are other jobs).
    `reference=False`: as `LMBench`'s, no retrain arm (unless a job is the retrain row itself). `digests`: a
    corrective study's benches' (one per identified set), whose kept cells train nothing."""
    task = data.task
    profile = lm_profile(data)
    plain = identified is None and forget is None  # a plain run's jobs, keyed as its LMBench keys them
    forget = data.forget_positions(config.forget, config.seed) if forget is None else forget
    benches = ([SimpleNamespace(config=config, bench_digest=lm_bench_digest(forget))] if plain else
               [SimpleNamespace(config=config, bench_digest=d) for d in digests])
    done = jobs_done(benches, CellStore.beside(cache), seen, LM_REGISTRY) if benches else None
    everything = np.arange(len(data.items))
    seeds = arm_seeds(ORIGINAL_SEEDS, config.models, config.seed)
    settings = [Setting(task, data, f, np.setdiff1d(everything, f), seeds, config.seed)
                for f in (identified or [forget])]
    return run_budget(profile, task.recipe, config, torch.as_tensor(everything),
                      torch.as_tensor(np.setdiff1d(everything, forget)), settings,
                      lambda positions: lm_family(data.config, data.tensors, positions, task.recipe),
                      cache, jobs, LM_REGISTRY, list(extra), seen, done,
                      floor=reference or any(j.method == NOISE_FLOOR_METHOD for j in jobs))


def lm_profile(data: TofuData) -> StepProfile:
    """The cost of one model's zoo training step on the task's data (what every LM budget counts in)."""
    return StepProfile.measure(lm_loss(LMForward(data.config), answer_width(data.tensors[1])),
                               init_lm_params(data.config, [0]), data.tensors, data.task.recipe.batch_size)


def originals_budget(config: RunConfig, data: TofuData, cache: ZooCache | None) -> Budget:
    """Training the task's N originals alone, unless the cache holds them (`llm trace`)."""
    everything, recipe, out = torch.arange(len(data.items)), data.task.recipe, Budget()
    add_originals(out, lm_profile(data), recipe, cache, lm_family(data.config, data.tensors, everything, recipe),
                  arm_seeds(ORIGINAL_SEEDS, config.models, config.seed), len(everything))
    return out


def prepare_lm(config: RunConfig, jobs: list[Job]) -> tuple[TofuData, np.ndarray, ZooCache | None, Budget]:
    """What an LM run checks before any training (`run_lm`, LM tuning): the data, the run's forget set (a bad
    spec fails here), each job's setting on it, the cache, and the training budget (for the caller to check
    against its limit)."""
    data, forget = checked_lm(config, jobs)
    cache = config.zoo_cache()
    return data, forget, cache, lm_budget(config, data, jobs, cache)


def checked_lm(config: RunConfig, jobs: list[Job]) -> tuple[TofuData, np.ndarray]:
    """The data and the run's forget set, with each job's setting checked on it (a bad spec fails here)."""
    data = load_tofu(get_lm_task(config.task))
    forget = data.forget_positions(config.forget, config.seed)
    for job in jobs:
        job.hparams.check_setting(data.task, data, forget, config.seed)
    return data, forget


@computing
def run_lm(config: RunConfig, out: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """`experiment.run` for language-model tasks: same config, same results layout plus the LM fields,
    the same checks before any training."""
    from .report import check_output, claim_output, json_config
    jobs = lm_jobs(config)
    if out is not None:
        check_output(out, config.run_id, overwrite, mine=json_config(config))
    data, _, cache, plan = prepare_lm(config, jobs)
    plan.check(config.max_hours, cache.root if cache else None)
    if out is not None:
        claim_output(out, config.run_id)
    bench = LMBench(config, data, cache)
    rows, per_example, scores, floor = run_jobs(bench, jobs)
    oracle_row, _ = lm_row(bench.oracle_scores, bench.oracle_scores, RunConfig(bootstrap=0, estimators=()))
    ids = np.array([data.items[p].id for p in bench.forget])
    results = {
        "run_id": config.run_id,
        "config": {**config.to_dict(), "train_size": len(data.items), "unlearnkit": __version__,
                   "torch": torch.__version__, "lm_task": data.task.describe()},
        "forget_set": {"spec": config.forget, "seed": config.seed, "positions": bench.forget.tolist(),
                       "ids": ids.tolist()},
        "oracle": {k: oracle_row.get(k) for k in ("model_utility", "utility_components", "forget_rouge",
                                                   "probability", "mia_auc", "forget_truth_ratio_prob",
                                                   "extraction_strength", "exact_memorization", "probe_rouge",
                                                   "probe_rouge_by_type", "neighbour_rouge", "fluency")},
        "rows": [r for r in rows if r["method"] in config.methods],
        "noise_floor": floor,
    }
    if out is not None:
        from .report import index, write_report, write_results
        _, splits = concat_splits(bench.oracle_scores)
        scores.update({**item_score_arrays(bench.oracle_scores, "arm/oracles"),
                       **item_score_arrays(bench.originals_scores, "arm/originals")})
        write_results(out, results, per_example, splits, ids, scores)
        write_report(out, results)
        index.record(out, results)
    return results
