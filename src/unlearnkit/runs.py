"""What a run is, shared by the classifier and language-model pipelines: its config (a frozen dataclass
that describes it fully), the jobs it computes (one per method and budget, the noise floor always
among them) and the loop over them. `experiment` (classifiers) and `lm_experiment` both build on it.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .attribution.subsets import check_datamodel_settings
from .backends import check_backend, use_backend
from .budget import (
    Budget,
    StepProfile,
    Work,
    check_epochs,
    check_models,
    parse_memory,
)
from .cells import cell_key, run_cells
from .engine.compute import Compute, ensemble_for, resolve, use
from .engine.observe import observing
from .errors import UnlearnkitError, option
from .forget.specs import USES_DATAMODELS
from .methods import get_method, make_hparams
from .methods.base import Ensemble, ScratchArm, Setting
from .metrics.trajectory import StepRule
from .scoring import DEFAULT_ESTIMATORS, DEFAULT_METRICS, check_settings
from .tasks import TASKS, Task
from .zoo import (
    ORACLE_SEEDS,
    ORIGINAL_SEEDS,
    RETRAIN_SEEDS,
    ZooCache,
    arm_seeds,
    stable_hash,
)

DEFAULT_METHODS = ("none", "retrain", "finetune", "ga", "neggrad+")
DEFAULT_REC_METHODS = ("none", "retrain", "finetune", "mmrecun")
NOISE_FLOOR_METHOD = "retrain"
MIN_MODELS = 2
MAX_SEED = 2 ** 32 - 1
# config fields that never change a number in results.json (models trained in memory-sized chunks, on
# another backend, equal those of one pass)
NOT_RESULTS = ("cache_dir", "max_hours", "max_memory", "backend", "ray_address")
# the best step of an LM trajectory, unless the user states another: the best forget quality among the steps
# that kept 90% of the originals' model utility
DEFAULT_STEP_RULE = "max:forget_quality;model_utility>=0.9x"
# config fields that choose which jobs a run has, not what any one job computes
JOB_CHOICE = ("methods", "hparams", "budgets", "tuned")


def default_methods(task: str) -> tuple[str, ...]:
    from .lm.task import (  # lazily: transformers is slow to import
        DEFAULT_LM_METHODS,
        LM_TASKS,
    )
    if task in LM_TASKS:
        return DEFAULT_LM_METHODS
    return DEFAULT_REC_METHODS if recommendation_task(task) else DEFAULT_METHODS


def recommendation_task(task: str) -> bool:
    """Whether `task` is a recommender on interaction data (a BPR objective; `data.interactions`)."""
    return task in TASKS and TASKS[task].objective == "bpr"


def method_registry(task: str) -> dict:
    """The methods that apply to `task`: the language-model, recommendation or classifier registry."""
    from .lm.task import LM_TASKS
    if task in LM_TASKS:
        from .methods.lm import LM_REGISTRY
        return LM_REGISTRY
    if recommendation_task(task):
        from .methods.rec import REC_REGISTRY
        return REC_REGISTRY
    from .methods import REGISTRY
    return REGISTRY


def default_models(task: str) -> int:
    """Models per arm: 100, the reference N, where KLoM's noise floor is low (mean ≈ 0.35); language-model
    arms stay at 16 (a GPT zoo trains ~21k tokens/s on a 2-core CPU: N = 100 needs a GPU)."""
    from .lm.task import LM_TASKS
    return 16 if task in LM_TASKS else 100


def default_metrics(task: str) -> tuple[str, ...]:
    """A classifier run computes every metric; a language-model run computes KLoM and, always, the TOFU/MUSE
    metrics (`lm.evaluate`): U-LiRA, the NeurIPS'23 score and the SVC attack read a classifier's margins."""
    return DEFAULT_METRICS if reads_margins(task) else ("klom",)


def reads_margins(task: str) -> bool:
    from .lm.task import LM_TASKS
    return task not in LM_TASKS


def reads_files(task: str) -> bool:
    """Whether the task's data is read from a directory (--data-dir); unknown names are refused elsewhere."""
    from .data import FILE_DATASETS
    from .lm.task import LM_TASKS  # tofu-synth is generated
    return task not in LM_TASKS and (task not in TASKS or TASKS[task].dataset in FILE_DATASETS)


def default_forget(task: str) -> str:
    from .lm.task import LM_TASKS
    if task in LM_TASKS:
        return "authors:0.1"
    return "interactions:0.05" if recommendation_task(task) else "random:100"


def classifier_task(name: str) -> Task:
    """The classifier task `name`; a language-model task's name is refused as such, for the commands and
    functions that work on classifiers only."""
    from .lm.task import LM_TASKS
    if name in LM_TASKS:
        raise UnlearnkitError(f"{name!r} is a language-model task: `unlearnkit run` and `unlearnkit llm` take it; "
                              "this command works on classifier tasks")
    if name not in TASKS:
        raise UnlearnkitError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}; language-model tasks: "
                              f"{', '.join(LM_TASKS)}")
    return TASKS[name]


_SCALARS = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool, np.bool_), "str": (str,)}


_SEQUENCES = {"tuple[str, ...]": ("str", "names"), "tuple[float, ...]": ("float", "numbers"),
              "tuple[tuple[str, str, str], ...]": (None, "METHOD.NAME=VALUE overrides")}


def _check_types(config) -> None:
    """Each field of the type it is declared with (a spec's `models = "two"` or `seed = 1.5` is refused by name,
    not met later as a Python error). NumPy scalars become Python's (a config is written as JSON), lists
    tuples (a config is hashable, and equal to the same config given tuples); a bare string where a sequence
    goes is refused (`methods="ga"` is not the methods g and a)."""
    for f in dataclasses.fields(config):
        kind, _, rest = str(f.type).partition(" | ")
        value = getattr(config, f.name)
        flag = option(f.name, flag="--set" if f.name == "hparams" else None)
        if value is None and rest == "None":
            continue
        if kind in _SEQUENCES:
            item, what = _SEQUENCES[kind]
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise UnlearnkitError(f"{flag} must be a sequence of {what}, e.g. a tuple or a list, got {value!r}")
            value = tuple(v.item() if isinstance(v, np.generic) else v for v in value)
            for v in value if item else ():
                _check_scalar(flag + " values", item, v)
        elif kind in _SCALARS:
            value = value.item() if isinstance(value, np.generic) else value
            _check_scalar(flag, kind, value)
        object.__setattr__(config, f.name, value)


def _check_scalar(flag: str, kind: str, value) -> None:
    if not isinstance(value, _SCALARS[kind]) or (isinstance(value, (bool, np.bool_)) and kind != "bool"):
        raise UnlearnkitError(f"{flag} must be {'an' if kind == 'int' else 'a'} {kind}, got {value!r}")


def parse_overrides(values) -> tuple[tuple[str, str, str], ...]:
    """Hyperparameter overrides as (method, name, value) triples of text, from "METHOD.NAME=VALUE" strings
    (the command line's --set, a study's `hparams`) or from triples (a spec's [["ga", "lr", 0.1]])."""
    out = []
    for v in values:
        if isinstance(v, str):
            key, sep, value = v.partition("=")
            method, dot, name = key.strip().rpartition(".")
            if not sep or not dot or not method or not name:
                raise UnlearnkitError(f"a hyperparameter override is METHOD.NAME=VALUE (e.g. ga.lr=0.001), got {v!r}")
            out.append((method, name, value.strip()))
        elif (isinstance(v, (tuple, list)) and len(v) == 3 and all(isinstance(x, str) for x in v[:2])
              and isinstance(v[2], (str, int, float, bool))):
            out.append((v[0], v[1], str(v[2]).lower() if isinstance(v[2], bool) else str(v[2])))
        else:
            raise UnlearnkitError(f"a hyperparameter override is METHOD.NAME=VALUE or [METHOD, NAME, VALUE], got {v!r}")
    return tuple(out)


def method_overrides(hparams, method: str) -> dict[str, str]:
    """{name: value} of the overrides (`parse_overrides`'s input) for a command that runs one `method`;
    an override for any other method is refused rather than ignored."""
    triples = parse_overrides(hparams)
    others = [f"{m}.{name}" for m, name, _ in triples if m != method]
    if others:
        raise UnlearnkitError(f"hyperparameters given for another method ({', '.join(others)}), but the method is "
                              f"{method}")
    return {name: value for _, name, value in triples}


def default_cache_dir() -> str:
    return os.environ.get("UNLEARNKIT_CACHE") or str(Path.home() / ".cache" / "unlearnkit")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run (`experiment.run`), checked when made: a run is reproduced from its
    config alone, and its cached artefacts are keyed by it (`run_id`, `bench_id`). Fields left None take
    the task's defaults when the config is made, so that results.json records what ran; hence
    `dataclasses.replace(config, task=...)` keeps the first task's methods, forget set, N and metrics:
    make a new config for another task."""

    task: str = "fashion-mnist-mlp"
    forget: str | None = None            # None: default_forget(task), random:100 for classifiers
    methods: tuple[str, ...] | None = None  # None: default_methods(task)
    models: int | None = None            # None: default_models(task), 100 for classifiers
    seed: int = 0
    train_size: int | None = None        # None: the task's default
    data_dir: str | None = None
    cache_dir: str | None = None         # None: $UNLEARNKIT_CACHE or ~/.cache/unlearnkit; "" disables
    hparams: tuple[tuple[str, str, str], ...] = ()  # (method, name, value) overrides
    reference_binning: bool = False
    bootstrap: int = 100                 # bootstrap replicates for the p95 intervals (0: none)
    val_size: int | None = None          # None: the whole validation set
    budgets: tuple[float, ...] = ()      # run each method with an `epochs` budget at each of these
    tuned: bool = False                  # start from the configs `unlearnkit tune` saved for this task/forget
    datamodels: str | None = None        # saved datamodels (`unlearnkit datamodels --out`) for pc: sets and dmm
    datamodel_models: int = 100          # M subset models when datamodels are fitted on the fly
    max_hours: float = 24.0              # refuse a run whose estimated training time is longer
    device: str = "auto"                 # auto | cpu | cuda | cuda:K; resolved when the config is made
    precision: str = "auto"              # auto | fp32 | tf32 | bf16 (training); resolved likewise
    max_memory: str | None = None        # e.g. "8GiB": train each arm in chunks of models that fit (None: the device's)
    backend: str = "local"               # local | ray
    ray_address: str | None = None       # a Ray cluster to join (None: start a local one)
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS  # KLoM estimators beside the reference histogram (scoring.py)
    metrics: tuple[str, ...] | None = None  # None: default_metrics(task); see `unlearnkit list`
    trajectories: int = 0                # evaluate every K unlearning steps (per-example trajectories); 0: off
    best_step: str = DEFAULT_STEP_RULE   # LM trajectories: the rule that selects a step (metrics.trajectory.StepRule)
    lora: int = 0                        # LM methods: train rank-r LoRA adapters instead of the weights (0: off)

    def __post_init__(self):
        """Every option's range, checked when the config is made: nothing trains on a value that would
        fail (or run forever) later. `auto` device and precision are resolved here, so a config (and the
        results.json that records it) always says what the run computed on."""
        _check_types(self)
        if self.models is None:
            object.__setattr__(self, "models", default_models(self.task))
        if self.methods is None:
            object.__setattr__(self, "methods", default_methods(self.task))
        if self.forget is None:
            object.__setattr__(self, "forget", default_forget(self.task))
        if self.metrics is None or (self.metrics == DEFAULT_METRICS and not reads_margins(self.task)):
            object.__setattr__(self, "metrics", default_metrics(self.task))  # (a classifier config's, replaced)
        object.__setattr__(self, "hparams", parse_overrides(self.hparams))
        compute = resolve(self.device, self.precision)
        object.__setattr__(self, "device", compute.device)
        object.__setattr__(self, "precision", compute.precision)
        parse_memory(self.max_memory)
        check_settings(self.estimators, self.metrics)
        beyond = [m for m in self.metrics if m not in default_metrics(self.task)]
        if beyond:
            raise UnlearnkitError(f"{self.task} is a language model: its runs compute KLoM and the TOFU/MUSE "
                                  f"metrics, not {', '.join(beyond)} (classifier metrics); leave "
                                  f"{option('metrics')} out")
        if not 0 <= self.lora <= 1024:
            raise UnlearnkitError(f"{option('lora')} must be a LoRA rank in [1, 1024] (0: off), got {self.lora}")
        if not 0 <= self.trajectories <= 100_000:
            raise UnlearnkitError(f"{option('trajectories')} must be a number of steps in [1, 100000] (0: off), got "
                                  f"{self.trajectories}")
        check_backend(self.backend, self.ray_address)
        try:
            StepRule.parse(self.best_step)
        except ValueError as e:
            raise UnlearnkitError(f"{option('best_step')}: {e}") from None
        if self.data_dir is not None and not reads_files(self.task):
            raise UnlearnkitError(f"{self.task}'s data is generated or shipped with a package and reads no "
                                  f"directory; leave {option('data_dir')} out")
        if self.datamodels and self.forget.split(":")[0].strip() not in USES_DATAMODELS:
            raise UnlearnkitError(f"{option('datamodels')} is read by a classifier's "
                                  f"{' and '.join(k + ':' for k in USES_DATAMODELS)} forget sets only, not by "
                                  f"{self.forget!r} on {self.task} (dmm takes its own: "
                                  f"{option('hparams', ('dmm.datamodels=DIR',), flag='--set dmm.datamodels=DIR')}); "
                                  "leave it out")
        if not 0 <= self.seed <= MAX_SEED:
            raise UnlearnkitError(f"{option('seed')} must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        for name in ("train_size", "val_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UnlearnkitError(f"{option(name)} must be at least 1 (leave it out for the task's "
                                      f"default), got {value}")
        if not 0 <= self.bootstrap <= 10_000:
            raise UnlearnkitError(f"{option('bootstrap')} must be in [0, 10000] replicates (0: no intervals), "
                                  f"got {self.bootstrap}")
        for b in self.budgets:
            check_epochs(b, f"every {option('budgets')} value")
        check_datamodel_settings(self.datamodel_models, 0.5, "datamodel_models")
        check_models(self.models, MIN_MODELS)
        if not (self.max_hours > 0 and math.isfinite(self.max_hours)):
            raise UnlearnkitError(f"{option('max_hours')} must be a positive number, got {self.max_hours}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cache_root(self) -> str:
        """The model cache's directory: `cache_dir`, else $UNLEARNKIT_CACHE or ~/.cache/unlearnkit ("": none)."""
        return default_cache_dir() if self.cache_dir is None else self.cache_dir

    def zoo_cache(self) -> ZooCache | None:
        """The model cache this run reads and writes (None when `cache_dir` is "")."""
        return ZooCache(self.cache_root) if self.cache_root else None

    @property
    def compute(self) -> Compute:
        family = TASKS[self.task].model if self.task in TASKS else None  # None: a language model
        return Compute(self.device, self.precision, parse_memory(self.max_memory), ensemble_for(family, self.device))

    @property
    def run_id(self) -> str:
        """A hash of what determines the results (not where models are cached, nor the time limit, nor which
        GPU of a kind): results under this id came from exactly this run."""
        fields = {k: v for k, v in self.to_dict().items() if k not in NOT_RESULTS}
        return stable_hash({**fields, "device": self.compute.key()["device"]})[:16]

    @property
    def bench_id(self) -> str:
        """A hash of what all of a run's jobs share (task, data, forget spec, N, seed, metrics, device,
        precision): with a job's own identity it keys the job's cell, so a run that adds a method
        reuses the jobs it shares with an earlier one."""
        fields = {k: v for k, v in self.to_dict().items() if k not in NOT_RESULTS + JOB_CHOICE}
        return stable_hash({**fields, "device": self.compute.key()["device"]})[:16]


def computing(fn: Callable) -> Callable:
    """Run `fn(config, ...)` on the config's device, precision, memory limit and backend (the engine and
    the zoo read them from there: no function below needs them as arguments)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        config = _config_of(fn, args, kwargs)
        with use(config.compute), use_backend(config.backend, config.ray_address):
            return fn(*args, **kwargs)
    return wrapper


def on_compute(method: Callable) -> Callable:
    """A bench's method (or constructor) on its config's device, precision and memory limit, so that a
    bench used directly, outside `run`, trains and loads the models `run` would (the same cache entries)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with use(_config_of(method, args, kwargs).compute):
            return method(*args, **kwargs)
    return wrapper


def _config_of(fn: Callable, args: tuple, kwargs: dict) -> RunConfig:
    """The RunConfig among the arguments, or held by one of them as `.config` (a bench, a Prepared)."""
    for a in (*args, *kwargs.values()):
        for c in (a, getattr(a, "config", None)):
            if isinstance(c, RunConfig):
                return c
    got = type(args[0]).__name__ if args else "nothing"
    raise UnlearnkitError(f"{fn.__name__} takes a RunConfig first (e.g. RunConfig(task='digits-mlp')), got {got}")


@dataclass(frozen=True)
class Job:
    """One row to compute: a method with its hyperparameters (and budget, on a KLoM-vs-cost curve)."""

    label: str
    method: str
    hparams: object
    budget: float | None = None
    tuned: bool = False


def build_jobs(config: RunConfig, registry: dict,
               tuned_for: Callable[[str], dict | None] = lambda m: None) -> list[Job]:
    """Check the methods (in `registry`), N, overrides and budgets; one Job per method and budget, with the
    noise-floor method always included. `tuned_for(method)` gives saved hyperparameters to start from."""
    if not config.methods:
        raise UnlearnkitError("no methods given")
    for m in config.methods:
        get_method(m, registry)
    if len(set(config.methods)) != len(config.methods):
        raise UnlearnkitError(f"methods listed twice: {', '.join(config.methods)}")
    overrides: dict[str, dict[str, str]] = {}
    for method, name, value in config.hparams:
        if method not in config.methods and method != NOISE_FLOOR_METHOD:
            raise UnlearnkitError(f"hyperparameter {method}.{name} given for a method that is not run")
        if name in overrides.get(method, {}):
            raise UnlearnkitError(f"{method}.{name} is set twice; give each hyperparameter once")
        overrides.setdefault(method, {})[name] = value
    jobs = []
    if len(set(config.budgets)) != len(config.budgets):
        raise UnlearnkitError(f"{option('budgets')} lists a budget twice: "
                              f"{', '.join(f'{b:g}' for b in config.budgets)}")
    for m in dict.fromkeys(config.methods + (NOISE_FLOOR_METHOD,)):
        tuned = tuned_for(m)
        if config.tuned and tuned is None and m in config.methods and registry[m].hparams.search_space:
            raise UnlearnkitError(f"{option('tuned', True)}: no tuned hyperparameters saved for {m} on "
                                  f"{config.task} with forget {config.forget}; run `unlearnkit tune --task "
                                  f"{config.task} --forget {config.forget} --method {m}` first, or leave out "
                                  f"{option('tuned', True)}")
        hp = make_hparams(m, {**(tuned or {}), **overrides.get(m, {})}, registry)
        if config.budgets and hasattr(hp, "epochs") and m != NOISE_FLOOR_METHOD:
            jobs += [Job(f"{m}@{b:g}", m, make_hparams(m, {**asdict(hp), **hp.at_budget(b)}, registry), b, tuned is not None)
                     for b in config.budgets]
        else:
            jobs.append(Job(m, m, hp, None, tuned is not None))
    return jobs


def run_budget(profile: StepProfile, recipe, config: RunConfig, everything: torch.Tensor, oracles_on: torch.Tensor,
               settings: list[Setting], family_of: Callable[[torch.Tensor], str], cache: ZooCache | None,
               jobs: list[Job], registry: dict, extra: list[Work] = (), seen: set | None = None,
               done: Callable[[Job, int], bool] | None = None, floor: bool = True) -> Budget:
    """The training a run (or a study of several forget sets) will do, for either pipeline: the reference
    arms (originals on `everything`; oracles and, unless `floor` is False, the noise-floor arm on
    `oracles_on`), and per forget set (`settings`: one per set) every job with an epochs budget, counted
    over the forget set (the smallest set a method passes over), and the arms a job's method trains from
    scratch (`Method.scratch`: filter, ERA, SISA, IAU). An arm counts once however many jobs or sets name
    it, and the models a cache holds cost nothing (`family_of(positions)` names a zoo arm's family there), so
    a run is never refused for work it will not do. `extra`: other training (`Work`). `seen`: the arms counted already (a study's earlier cells,
    which train them first); this run's are added to it. `done(job, i)`: the job's cell on the i-th forget
    set is cached, so its method trains nothing."""
    out = Budget()
    arms = [ScratchArm(everything, ORIGINAL_SEEDS), ScratchArm(oracles_on, ORACLE_SEEDS)]
    if floor:
        arms.append(ScratchArm(oracles_on, RETRAIN_SEEDS))
    for setting in settings:
        for job in jobs:
            method = get_method(job.method, registry)
            if method.scratch is not None and job.method != NOISE_FLOOR_METHOD:  # the floor is a reference arm
                arms += method.scratch(job.hparams, setting)
    seen = set() if seen is None else seen
    for arm in arms:
        seeds = list(arm.seeds) if arm.seeds is not None else arm_seeds(arm.seed_base, config.models, config.seed)
        family = (arm.family or family_of(arm.positions)) if arm.key is None else None
        name = (family, tuple(seeds)) if arm.key is None else arm.key
        if not count_once(seen, name):
            continue
        todo = (config.models if cache is None else cache.untrained(family, seeds) if arm.key is None
                else 0 if cache.has(arm.key) else config.models)
        out.add(dataclasses.replace(profile, flops=profile.flops * arm.scale), todo or config.models,
                len(arm.positions), recipe.epochs, recipe.batch_size, todo == 0, cache is not None)
    for i, setting in enumerate(settings):
        for job in jobs:
            epochs = getattr(job.hparams, "epochs", None)
            if epochs and job.method != NOISE_FLOOR_METHOD and not (done is not None and done(job, i)):
                out.add(profile, config.models, len(setting.forget), epochs,
                        getattr(job.hparams, "batch_size", recipe.batch_size), method=True)
    for work in extra:
        out.add(profile, work.models, work.batch, work.steps, work.batch)
    return out


def run_jobs(bench, jobs: list[Job]) -> tuple[list[dict], dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Every job's row, with its cost relative to the retrain arm's; the per-example KLoM of each job that
    finished; the score arrays of those jobs (for scores.npz); and the retrain (noise-floor) row. `bench` is
    a classifier `Bench` or an LM `LMBench`.

    The jobs are cells (`cells.run_cells`): each is kept in the cache as it finishes, so an interrupted
    run resumes at the first unfinished job. On a Ray backend they run as parallel tasks (each charged
    its own seconds and FLOPs); a method that trains an arm (retrain, SISA) caches it from its task,
    through the cache's locks and atomic writes — on a cluster of several machines, give a --cache-dir
    that all of them share."""
    start = getattr(bench, "start_job", bench.run_job)  # a classifier bench hands back its metrics as a Later
    results = run_cells(bench.cells, [(job_key(bench, job), job) for job in jobs], start)
    rows, per_example, scores = [], {}, {}
    for job, (row, extra) in zip(jobs, results):
        rows.append(row)
        if extra is not None:
            per_example[job.label] = extra["klom"]
            scores.update(extra["scores"])
    floor = next(r for r in rows if r["method"] == NOISE_FLOOR_METHOD)
    for r in rows:
        r["cost_vs_retrain"] = {k: (r[k] / floor[k] if r.get(k) is not None and floor.get(k) else None)
                                for k in ("seconds", "flops")}
    return rows, per_example, scores, floor


def run_method(ctx, fn: Callable, hparams, recorder: Callable | None, every: int, originals: dict):
    """`ctx.charged(fn, hparams)` for either pipeline's bench: (the method's result, its cost, the last step
    it trained or None). With a trajectory `recorder` (None: no trajectory), every `every` optimizer steps
    of fits over parameters shaped like `originals` are reported to it, outside the method's charged
    seconds and FLOPs."""
    if recorder is None:
        result, cost = ctx.charged(fn, hparams)
        steps = None
    else:
        with observing(recorder, every, {k: tuple(v.shape) for k, v in originals.items()}) as watched:
            result, cost = ctx.charged(fn, hparams)
        cost["seconds"] -= watched.seconds
        steps = watched.steps
    _check_result(fn, result, originals)
    return result, cost, steps


def _check_result(fn: Callable, result, originals: dict) -> None:
    """A method returns the N models' parameters, shaped as the originals (plus any inference-time state),
    or an `Ensemble`; anything else is named here, not met as a shape error in scoring."""
    if isinstance(result, Ensemble):
        return
    wrong = (["the result is a " + type(result).__name__] if not isinstance(result, dict) else
             [k for k, v in originals.items()
              if not isinstance(result.get(k), torch.Tensor) or result[k].shape != v.shape])
    if wrong:
        raise UnlearnkitError(f"method {fn.__name__} did not return the models' parameters (a dict shaped like "
                              f"ctx.originals) or an Ensemble: {', '.join(map(str, wrong[:5]))}")


def job_key(bench, job: Job, registry: dict | None = None) -> str:
    """The cell key of `job` on `bench`: the bench's shared settings and forget set, the job's method,
    label, hyperparameters and budget, and the method's code (`method_code`: an edited method recomputes)."""
    fn = (registry or method_registry(bench.config.task))[job.method].fn
    return cell_key("job", bench.config.bench_id, bench.bench_digest, job.method, job.label,
                    asdict(job.hparams), job.budget, job.tuned, method_code(fn))


def count_once(seen: set | None, name) -> bool:
    """Whether `name` (an arm or a job of a budget) is met for the first time, noting it in `seen` (None: a
    budget of one run, which names nothing twice)."""
    if seen is None:
        return True
    first = name not in seen
    seen.add(name)
    return first


def add_originals(out: Budget, profile: StepProfile, recipe, cache: ZooCache | None, family: str, seeds: list[int],
                  examples: int, counted: bool = False) -> None:
    """Add to `out` the training of an originals arm a command needs before its own work (`seeds` of
    `family`, on `examples` examples), unless it was `counted` already or the cache holds every model."""
    out.add(profile, len(seeds), examples, recipe.epochs, recipe.batch_size,
            counted or (cache is not None and cache.untrained(family, seeds) == 0), cache is not None)


def jobs_done(benches, store, seen: set | None, registry: dict | None = None) -> Callable[[Job, int], bool]:
    """`run_budget`'s `done` for the jobs of a run's bench, or of a study's benches (one per forget set, in
    `run_budget`'s order): anything with `config` and `bench_digest`, as its Bench computes them. A job whose
    cell `store` keeps (None: none) or that a study's earlier cell counted already (`seen`, to which it is
    added) trains nothing."""
    benches = benches if isinstance(benches, (list, tuple)) else [benches]

    def done(job: Job, i: int = 0) -> bool:
        key = job_key(benches[i], job, registry)
        return not count_once(seen, ("job", key)) or (store is not None and store.has(key))
    return done


def method_code(fn: Callable) -> str:
    """What identifies a method's code in its cells' keys (the package's own code is in every key already,
    `cells.code_digest`): the source of its module, so that a helper edited beside a user's method
    recomputes it, and its own source, or its bytecode where no source can be read (code made by `exec`).
    Values it reads from globals are not code: pass them as hyperparameters, which key every cell."""
    parts = []
    for obj in (inspect.getmodule(fn), fn):
        try:
            parts.append(inspect.getsource(obj))
        except (OSError, TypeError):
            pass
    return stable_hash(parts or [_bytecode(fn.__code__)])


def _bytecode(code) -> list:
    """A code object's instructions, constants (nested functions' code too) and names, as plain data."""
    return [code.co_code.hex(), code.co_names,
            [_bytecode(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]]
