"""`unlearnkit`: a thin command line over the Python API (unlearnkit.experiment)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from .errors import COMMAND_LINE, UnlearnkitError


def _study_options(fn):
    """N, seed, data, cache, hyperparameter overrides and the time limit, the same on every study command
    (`corrective`, `generalisation`)."""
    for option in reversed([
        click.option("--models", default=16, show_default=True, type=int, help="N models per arm."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--train-size", default=None, type=int, help="Training examples (default: the task's)."),
        click.option("--data-dir", default=None, help="Dataset directory (default $UNLEARNKIT_DATA or the system's)."),
        click.option("--cache-dir", default=None,
                     help="Model cache (default $UNLEARNKIT_CACHE or ~/.cache/unlearnkit)."),
        click.option("--set", "sets", multiple=True, help="Hyperparameter override METHOD.NAME=VALUE (repeatable)."),
        click.option("--max-hours", default=24.0, show_default=True, type=float),
    ]):
        fn = option(fn)
    return fn


def _compute_options(fn):
    """--device, --precision, --max-memory, --backend and --ray-address, the same on every command that trains."""
    for option in reversed([
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda or cuda:K; auto: the first GPU if there is one, else the CPU."),
        click.option("--precision", default="auto", show_default=True,
                     help="Training precision: fp32, bf16 (float32 master weights), tf32 (CUDA); auto: bf16 where "
                          "the device multiplies bfloat16 in hardware, else fp32."),
        click.option("--max-memory", default=None,
                     help="Memory an arm's training may use (e.g. 8GiB); larger arms train in chunks of models. "
                          "Default: the device's free memory."),
        click.option("--backend", default="local", show_default=True,
                     help="local, or ray: arms' chunks as tasks on a Ray cluster (pip install 'unlearnkit[ray]')."),
        click.option("--ray-address", default=None, help="The Ray cluster to join (default: start a local one)."),
    ]):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress (cache hits, resumes, methods).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Machine unlearning, judged per example against many oracle models (KLoM)."""
    ctx.meta[COMMAND_LINE] = True  # messages name flags (errors.option)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@cli.command()
@click.option("--task", default="fashion-mnist-mlp", show_default=True, help="See `unlearnkit list`.")
@click.option("--forget", "forget", default=None,
              help="Forget-set spec (default random:100; authors:0.1 for language-model tasks; interactions:0.05 "
                   "for recommendation tasks, which also take users:K, items:K, user:ID and item:ID).")
@click.option("--methods", default=None,
              help="Comma-separated method names (default: none,retrain,finetune,ga,neggrad+; for language-model "
                   "tasks none,retrain,ga,graddiff,npo,simnpo,llmu,rmu,flat,idk; for recommendation tasks "
                   "none,retrain,finetune,mmrecun).")
@click.option("--models", default=None, type=int,
              help="Models per arm (N). Default: 100 for classifier tasks, 16 for language-model tasks.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the forget set and the arms.")
@click.option("--train-size", type=int, default=None, help="Fixed, seeded subset of the training set.")
@click.option("--val-size", type=int, default=None, help="Use only the first K validation examples.")
@click.option("--data-dir", default=None, help="Dataset directory (default $UNLEARNKIT_DATA or the system's).")
@click.option("--cache-dir", default=None, help="Model cache (default $UNLEARNKIT_CACHE or ~/.cache/unlearnkit).")
@click.option("--no-cache", is_flag=True, help="Train everything afresh and keep nothing.")
@click.option("--set", "sets", multiple=True, help="Hyperparameter override METHOD.NAME=VALUE (repeatable).")
@click.option("--reference-binning", is_flag=True,
              help="Drop each histogram's pooled maximum, as EasyDUB's reference code does.")
@click.option("--bootstrap", default=100, show_default=True, type=int, help="Bootstrap replicates for CIs.")
@click.option("--estimators", default="gauss", show_default=True,
              help="KLoM estimators reported beside the reference histogram (comma-separated; '' for none).")
@click.option("--metrics", default=None,
              help="Metrics computed for every row (comma-separated; see `unlearnkit list`; default: all of them "
                   "for a classifier, klom for a language model, whose TOFU/MUSE metrics are always computed).")
@click.option("--budgets", default="", help="Comma-separated epoch budgets: one row per method and budget.")
@click.option("--trajectories", default=0, show_default=True, type=int,
              help="Evaluate every K unlearning steps: per-example KLoM trajectories (0: off).")
@click.option("--best-step", default=None,
              help="LM trajectories: the rule that picks a step, max:METRIC or min:METRIC then ;METRIC>=V "
                   "constraints (V ending in x: times the originals'). Default: "
                   "max:forget_quality;model_utility>=0.9x.")
@click.option("--tuned", is_flag=True, help="Use the hyperparameters `unlearnkit tune` saved for this task/forget.")
@click.option("--lora", default=0, show_default=True, type=int,
              help="Language-model methods: train rank-R LoRA adapters (PEFT) instead of the weights (0: off).")
@click.option("--datamodels", default=None, help="Saved datamodels (`unlearnkit datamodels --out`) for pc: sets.")
@click.option("--datamodel-models", default=100, show_default=True, type=int,
              help="Subset models to fit datamodels with when pc: needs them and none are given.")
@click.option("--max-hours", default=24.0, show_default=True, type=float,
              help="Refuse a run whose estimated training time is longer (estimated before anything trains).")
@_compute_options
@click.option("--out", default=None,
              help="Directory for results.json, timings.json, klom.npz, forget_set.json and scores.npz.")
@click.option("--overwrite", is_flag=True, help="Replace the results of another run in --out.")
def run(out, overwrite, **options) -> None:
    """Unlearn a forget set with each method and compare it with oracles retrained without it."""
    from .experiment import run as run_experiment
    from .report import format_lm_table, format_table

    results = run_experiment(_run_config(**options), out, overwrite)
    click.echo(format_lm_table(results) if "lm_task" in results["config"] else format_table(results))
    if out:
        click.echo(f"\nwrote {out}/results.json, {out}/timings.json, {out}/klom.npz, {out}/forget_set.json, "
                   f"{out}/scores.npz, {out}/report.html")


def _names(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@cli.command()
@click.argument("run_dir")
@click.option("--estimators", default=None, help="KLoM estimators beside the histogram (default: the run's).")
@click.option("--metrics", default=None, help="Metrics to compute (default: the run's).")
@click.option("--bootstrap", default=None, type=int, help="Bootstrap replicates for CIs (default: the run's).")
@click.option("--reference-binning/--no-reference-binning", default=None,
              help="EasyDUB's histogram binning (default: the run's).")
def rescore(run_dir, estimators, metrics, bootstrap, reference_binning) -> None:
    """Recompute a finished run's metrics from its scores.npz (no training) and rewrite its results."""
    from .report import format_lm_table, format_table
    from .rescore import rescore as rescore_run

    results = rescore_run(run_dir, _names(estimators), _names(metrics), bootstrap, reference_binning)
    click.echo(format_lm_table(results) if "lm_task" in results["config"] else format_table(results))
    report = " and report.html" if (Path(run_dir) / "report.html").is_file() else ""
    click.echo(f"\nrewrote {run_dir}/results.json, klom.npz{report}")


@cli.command()
@click.argument("run_dir")
def report(run_dir) -> None:
    """Write RUN_DIR/report.html (self-contained: tables, figures, config, provenance) and RUN_DIR/figures/."""
    from .report import write_report

    click.echo(f"wrote {write_report(run_dir)} and {run_dir}/figures/")


@cli.command()
@click.argument("spec", required=False)
@click.option("--out", required=True, help="The study's folder: cells/, study.json, report.html, figures/.")
@click.option("--run", "run_flags", multiple=True, metavar="KEY=VALUE",
              help="An option every cell shares (repeatable), e.g. --run task=digits-mlp --run methods=none,ga.")
@click.option("--grid", "grid_flags", multiple=True, metavar="KEY=V1,V2",
              help="An axis of the grid (repeatable), e.g. --grid seed=0,1 --grid forget=random:100,class:3.")
@click.option("--overwrite", is_flag=True, help="Replace another study written to --out.")
def study(spec, out, run_flags, grid_flags, overwrite) -> None:
    """Run a grid of runs from a TOML spec ([run] shared options, [grid] axes) and/or --run/--grid flags;
    finished cells are kept, so an interrupted study resumes."""
    from .study import format_study, load_study, run_study

    click.echo(format_study(run_study(load_study(spec, run_flags, grid_flags), out, overwrite)))
    click.echo(f"\nwrote {out}/study.json, {out}/report.html and a folder per cell under {out}/cells/")


@cli.group()
def runs() -> None:
    """The index of runs written with --out: list, show and compare them."""


@runs.command(name="list")
@click.option("--task", default=None, help="Only runs of this task.")
def runs_list(task) -> None:
    """Every indexed run: id, when, task, forget set, N, methods, folder."""
    from .report import index
    rows = index.entries(task)
    known = sorted({e["task"] for e in index.entries() if e["task"]}) if task and not rows else []
    if known:
        raise UnlearnkitError(f"no indexed run has task {task!r}; the index holds runs of {', '.join(known)}")
    click.echo(index.format_list(rows))


@runs.command(name="show")
@click.argument("ref")
def runs_show(ref) -> None:
    """A run's table (REF: a run id, a unique prefix of one, or its folder)."""
    from .report import format_lm_table, format_table, index
    path, results = index.load(ref)
    click.echo(f"{path}\n" + (format_lm_table(results) if "lm_task" in results["config"] else format_table(results)))


@runs.command(name="compare")
@click.argument("a")
@click.argument("b")
def runs_compare(a, b) -> None:
    """Two runs' rows side by side (KLoM p95 per split, B − A), after the settings in which they differ."""
    from .report import index
    click.echo(index.format_compare(index.load(a), index.load(b)))


def _run_config(task, forget, methods, models, seed, train_size, val_size, data_dir, cache_dir, no_cache, sets,
                reference_binning, bootstrap, budgets="", tuned=False, datamodels=None, datamodel_models=100,
                max_hours=24.0, estimators="gauss", metrics=None, trajectories=0, best_step=None,
                lora=0, **compute):
    from .experiment import RunConfig

    try:
        budget_list = tuple(float(b) for b in budgets.split(",") if b.strip())
    except ValueError:
        raise UnlearnkitError(f"--budgets expects comma-separated numbers of epochs, got {budgets!r}") from None
    return RunConfig(task=task, forget=forget, methods=_names(methods),
                     models=models, seed=seed, train_size=train_size, val_size=val_size, data_dir=data_dir,
                     cache_dir="" if no_cache else cache_dir, hparams=sets,
                     reference_binning=reference_binning, bootstrap=bootstrap, budgets=budget_list, tuned=tuned,
                     datamodels=datamodels, datamodel_models=datamodel_models, max_hours=max_hours,
                     estimators=_names(estimators), metrics=_names(metrics), trajectories=trajectories, lora=lora,
                     **({"best_step": best_step} if best_step else {}), **compute)


@cli.command()
@click.option("--task", default="fashion-mnist-mlp", show_default=True)
@click.option("--forget", default=None,
              help="The spec the tuned config is for (default random:100; authors:0.1 for language-model tasks).")
@click.option("--method", required=True, help="Method to tune.")
@click.option("--trials", default=20, show_default=True, type=int, help="Optuna trials (the same for every method).")
@click.option("--tune-forget", default=None, help="Spec of the tuning forget set (default: --forget, another seed).")
@click.option("--models", default=16, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train-size", type=int, default=None)
@click.option("--data-dir", default=None)
@click.option("--cache-dir", default=None)
@click.option("--set", "sets", multiple=True, help="Fixed hyperparameters METHOD.NAME=VALUE, not searched.")
@click.option("--max-hours", default=24.0, show_default=True, type=float,
              help="Refuse a search whose estimated training time is longer.")
@_compute_options
def tune(task, forget, method, trials, tune_forget, models, seed, train_size, data_dir, cache_dir, sets,
         max_hours, **compute) -> None:
    """Search a method's hyperparameters on a separate tuning forget set; save the best for `run --tuned`."""
    from .tuning import TuneConfig
    from .tuning import tune as run_tuning

    config = _run_config(task, forget, method, models, seed, train_size, None, data_dir, cache_dir, False, sets,
                         False, 0, max_hours=max_hours, **compute)
    result = run_tuning(config, TuneConfig(method, trials, tune_forget))
    click.echo(f"best of {len(result['trials'])} trials for {method} on {task} "
               f"(tuning set {result['tuning_forget']['spec']} seed {result['tuning_forget']['seed']}): "
               f"score {result['score']:.3f} — {result['objective']}")
    click.echo(json.dumps(result["hparams"]))
    click.echo(f"saved {result['path']}; use it with: unlearnkit run --tuned --task {task} --forget {config.forget} ...")


@cli.command()
@click.option("--task", default="fashion-mnist-mlp", show_default=True)
@click.option("--models", default=200, show_default=True, type=int, help="Subset models M (plus max(10, 20% of M) held out).")
@click.option("--subset", default=0.5, show_default=True, type=float, help="Fraction of S each model trains on.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train-size", type=int, default=None)
@click.option("--data-dir", default=None)
@click.option("--cache-dir", default=None)
@click.option("--trak-models", default=2, show_default=True, type=int, help="Models TRAK ensembles (0: skip TRAK).")
@click.option("--proj-dim", default=256, show_default=True, type=int, help="TRAK's projection dimension.")
@click.option("--out", required=True, help="Directory for datamodels.safetensors and datamodels.json.")
@click.option("--overwrite", is_flag=True, help="Replace other datamodels saved in --out.")
@click.option("--max-hours", default=24.0, show_default=True, type=float,
              help="Refuse datamodels whose estimated training time is longer (estimated before anything trains).")
@_compute_options
def datamodels(task, models, subset, seed, train_size, data_dir, cache_dir, trak_models, proj_dim, out,
               overwrite, max_hours, **compute) -> None:
    """Fit linear datamodels on subset-trained models; report their LDS (and TRAK's); save them."""
    from .attribution_run import fit_and_save_datamodels
    from .experiment import RunConfig

    config = RunConfig(task=task, seed=seed, train_size=train_size, data_dir=data_dir, cache_dir=cache_dir,
                       max_hours=max_hours, **compute)  # shared options, checked the same way
    report, extra = fit_and_save_datamodels(config, out, models, subset, trak_models, proj_dim, overwrite)
    click.echo(f"datamodels on {task}: M = {models} models on {subset:.0%} subsets; LDS on {report.held_out} fresh "
               f"subsets: train {report.lds_train:.3f}, validation {report.lds_val:.3f}")
    if extra:
        click.echo(f"TRAK ({trak_models} models, k = {proj_dim}), same subsets, {extra['targets']} targets: "
                   f"LDS train {extra['lds_train']:.3f}, validation {extra['lds_val']:.3f}")
    click.echo(f"saved {out}/datamodels.safetensors and {out}/datamodels.json")


@cli.command(name="corrective")
@click.option("--task", default="fashion-mnist-mlp", show_default=True)
@click.option("--manip", "manipulation", default=None,
              help="The manipulation of the training set: poison:K[:target=T][:patch=P], swap:A:B:K or noise:K "
                   "(default poison:100); for a language-model task, the forget set of which a fraction is "
                   "identified: authors:F or canaries:K (default authors:0.1).")
@click.option("--identified", default="0.1,0.25,0.5,1.0", show_default=True,
              help="Comma-separated fractions of the manipulated set the unlearner is told, each in (0, 1].")
@click.option("--methods", default=None, help="Comma-separated methods (default: none, filter, finetune, neggrad+, "
                                              "acdc, nablatau, llmu, ssd, potion, potion-lf, potion+finetune, era, "
                                              "era-control; for a language-model task none, filter, finetune, "
                                              "graddiff, llmu, rmu, era, era-control).")
@_study_options
@click.option("--bootstrap", default=0, show_default=True, type=int, help="Bootstrap replicates for KLoM p95 intervals.")
@click.option("--relearn", default=0, show_default=True, type=int,
              help="The relearning attack: fine-tune every unlearned model on K identified (and, apart, K retained) "
                   "examples for 40 steps and report how much of the manipulation comes back (0: off).")
@click.option("--out", default=None, help="Directory for corrective.json, report.html and the figure.")
@click.option("--overwrite", is_flag=True, help="Replace another study's corrective.json in --out.")
@_compute_options
def corrective_cmd(task, manipulation, identified, methods, models, seed, train_size, data_dir, cache_dir, sets,
                   bootstrap, max_hours, relearn, out, overwrite, **compute) -> None:
    """Corrective unlearning: a manipulated training set, a fraction of it identified, oracles retrained on
    the corrected data; one table per fraction and each metric against the fraction."""
    from .corrective import DEFAULT_METHODS, corrective, format_corrective
    from .experiment import RunConfig
    from .lm.task import LM_TASKS
    from .lm_corrective import DEFAULT_LM_CORRECTIVE_METHODS, format_lm_corrective
    lm = task in LM_TASKS
    if manipulation is not None and not manipulation.strip():
        raise UnlearnkitError("--manip is empty: give a manipulation (e.g. poison:100), or leave it out for the "
                              "default")
    manipulation = manipulation or ("authors:0.1" if lm else "poison:100")

    try:
        fractions = tuple(float(f) for f in identified.split(",") if f.strip())
    except ValueError:
        raise UnlearnkitError(f"--identified expects comma-separated fractions in (0, 1], got {identified!r}") from None
    names = (tuple(m.strip() for m in methods.split(",") if m.strip()) if methods
             else DEFAULT_LM_CORRECTIVE_METHODS if lm else DEFAULT_METHODS)
    config = RunConfig(task=task, forget=manipulation, methods=names, models=models, seed=seed, train_size=train_size,
                       data_dir=data_dir, cache_dir=cache_dir, hparams=sets, bootstrap=bootstrap,
                       max_hours=max_hours, **compute)
    results = corrective(config, manipulation, fractions, out, overwrite, relearn)
    click.echo(format_lm_corrective(results) if lm else format_corrective(results))
    if out:
        click.echo(f"\nwrote {out}/corrective.json, {out}/report.html and {out}/figures/corrective.png")


@cli.command(name="generalisation")
@click.option("--task", default="fashion-mnist-mlp", show_default=True, help="A classifier task.")
@click.option("--class", "klass", default=3, show_default=True, type=int, help="The class whose examples are forgotten.")
@click.option("--fraction", default="0.5", show_default=True,
              help="Fraction of the class's training examples relabelled (the rest are held out).")
@click.option("--methods", default=None,
              help="Comma-separated methods (default: none, retrain, finetune, random-labels); random-labels also runs "
                   "on the forget set alone (the paper's setting).")
@_study_options
@click.option("--out", default=None, help="Directory for generalisation.json and report.html.")
@click.option("--overwrite", is_flag=True, help="Replace another study's generalisation.json in --out.")
@_compute_options
def generalisation_cmd(task, klass, fraction, methods, models, seed, train_size, data_dir, cache_dir, sets, max_hours,
                       out, overwrite, **compute) -> None:
    """Random-label forgetting of one class: does it generalise to the class's held-out examples, what does it
    cost the others, and does a linear probe on the representations still find the class?"""
    from .experiment import RunConfig
    from .generalisation import DEFAULT_METHODS, format_generalisation, generalisation

    config = RunConfig(task=task, methods=_names(methods) or DEFAULT_METHODS, models=models,
                       seed=seed, train_size=train_size, data_dir=data_dir, cache_dir=cache_dir,
                       hparams=sets, bootstrap=0, max_hours=max_hours, **compute)
    results = generalisation(config, klass, fraction, out, overwrite)
    click.echo(format_generalisation(results))
    if out:
        click.echo(f"\nwrote {out}/generalisation.json and {out}/report.html")

@cli.group()
def llm() -> None:
    """Language-model unlearning beyond `run --task tofu-synth-gpt`: ID vs OOD curves, your own checkpoints."""


@llm.command()
@click.option("--task", default="tofu-synth-gpt", show_default=True, help="A language-model task.")
@click.option("--method", default="ga", show_default=True, help="A language-model method.")
@click.option("--authors", default=2, show_default=True, type=int,
              help="In-distribution forget set: this many authors (all their QAs); OOD: as many canaries as QAs.")
@click.option("--steps", default="1,2,4,8,16,32", show_default=True, help="Comma-separated unlearning step counts.")
@click.option("--models", default=4, show_default=True, type=int, help="Models per arm (N).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache-dir", default=None)
@click.option("--set", "sets", multiple=True, help="Hyperparameter override METHOD.NAME=VALUE (repeatable).")
@click.option("--out", default=None, help="Directory for id_vs_ood.json.")
@click.option("--overwrite", is_flag=True, help="Replace another curve's id_vs_ood.json in --out.")
@click.option("--max-hours", default=24.0, show_default=True, type=float,
              help="Refuse a curve whose estimated training time is longer (estimated before anything trains).")
@_compute_options
def ood(task, method, authors, steps, models, seed, cache_dir, sets, out, overwrite, max_hours, **compute) -> None:
    """Unlearn an in-distribution and an out-of-distribution forget set of one size, step by step."""
    from .experiment import RunConfig
    from .lm_ood import format_id_vs_ood, id_vs_ood

    try:
        step_list = tuple(int(s) for s in steps.split(",") if s.strip())
    except ValueError:
        raise UnlearnkitError(f"--steps expects comma-separated whole numbers, got {steps!r}") from None
    config = RunConfig(task=task, methods=(method,), models=models, seed=seed, cache_dir=cache_dir,
                       hparams=sets, bootstrap=0, max_hours=max_hours, **compute)
    click.echo(format_id_vs_ood(id_vs_ood(config, method, authors, step_list, out, overwrite)))
    if out:
        click.echo(f"\nwrote {out}/id_vs_ood.json and {out}/report.html")


@llm.command(name="trace")
@click.option("--task", default="tofu-synth-gpt", show_default=True, help="A language-model task.")
@click.option("--forget", default="authors:0.1", show_default=True, help="The forget items whose facts are traced.")
@click.option("--models", default=4, show_default=True, type=int, help="Originals traced (N); effects are averaged.")
@click.option("--samples", default=10, show_default=True, type=int, help="Noise draws per item (ROME: 10).")
@click.option("--noise", default=3.0, show_default=True, type=float,
              help="Noise std on the subject's token embeddings, in units of their std (ROME: 3).")
@click.option("--window", default=1, show_default=True, type=int, help="MLP/attention layers restored together.")
@click.option("--positions", is_flag=True, help="Also restore at every question token (ROME's token categories).")
@click.option("--top", default=1, show_default=True, type=int, help="MLP layers the `traced` method would update.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache-dir", default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--max-hours", default=24.0, show_default=True, type=float,
              help="Refuse to train originals for longer than this (estimated before anything trains).")
@_compute_options
def llm_trace(task, forget, models, samples, noise, window, positions, top, seed, cache_dir, as_json, max_hours,
              **compute) -> None:
    """Causal tracing (ROME): which blocks' MLP and attention carry the forget items' facts."""
    from .experiment import RunConfig
    from .lm_trace import format_trace, trace_task

    config = RunConfig(task=task, forget=forget, methods=("traced",), models=models, seed=seed, cache_dir=cache_dir,
                       bootstrap=0, max_hours=max_hours, **compute)
    result, info = trace_task(config, samples, noise, window, positions, top)
    click.echo(json.dumps({**info, **result.to_dict(top)}, indent=2) if as_json else format_trace(result, info))


@llm.command(name="run")
@click.option("--model-dir", required=True, help="A local Hugging Face causal-LM checkpoint (never modified).")
@click.option("--forget", "forget_file", required=True, help="JSONL of question/answer items to forget.")
@click.option("--retain", "retain_file", required=True, help="JSONL of question/answer items to keep.")
@click.option("--method", default="npo", show_default=True,
              help="A language-model method (not retrain). Its defaults suit small models trained from scratch; "
                   "for a pretrained checkpoint set a TOFU-like budget, e.g. --set npo.lr=1e-5.")
@click.option("--set", "sets", multiple=True, help="Hyperparameter override METHOD.NAME=VALUE (repeatable).")
@click.option("--max-len", default=128, show_default=True, type=int, help="Tokens per question+answer.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--probes", default=None, is_flag=False, flag_value="", metavar="FILE",
              help="JSONL of probes ({question, answer: the short fact}) whose ROUGE-L recall is reported before "
                   "and after (tofu-synth's generated probes exist only for its own authors).")
@click.option("--lora", default=0, show_default=True, type=int,
              help="Train rank-R LoRA adapters (PEFT) instead of the weights, merged into the saved checkpoint "
                   "(0: full fine-tuning).")
@click.option("--out", required=True, help="New directory for the unlearned checkpoint (save_pretrained).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:K (auto: a GPU if any).")
@click.option("--precision", default="auto", show_default=True,
              help="fp32, bf16 (float32 master weights) or tf32 (CUDA); auto: bf16 where it runs in hardware.")
def llm_run(model_dir, forget_file, retain_file, method, sets, max_len, seed, probes, lora, out, device,
            precision) -> None:
    """Unlearn your forget QAs from your checkpoint, keep your retain QAs, and save the result."""
    from .engine.compute import resolve, use
    from .lm_checkpoint import unlearn_checkpoint
    from .runs import method_overrides

    overrides = method_overrides(sets, method)
    with use(resolve(device, precision)):
        report = unlearn_checkpoint(model_dir, forget_file, retain_file, method, out, overrides, max_len, seed, probes,
                                    lora)
    click.echo(f"{method}: forget-answer probability {report['before_forget_probability']:.4f} → "
               f"{report['after_forget_probability']:.4f}; retain {report['before_retain_probability']:.4f} → "
               f"{report['after_retain_probability']:.4f} ({report['seconds']:.1f} s)")
    if "probes" in report:
        click.echo(f"probe ROUGE-L recall ({report['probes']} probes) {report['before_probe_rouge']:.3f} → "
                   f"{report['after_probe_rouge']:.3f}")
    click.echo(f"saved the unlearned model to {out} (save_pretrained; report in {out}/unlearnkit.json)")


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(as_json: bool) -> None:
    """Show tasks, methods, forget-set kinds, metrics and KLoM estimators."""
    import dataclasses

    from .forget import KINDS, REC_KINDS
    from .lm.task import LM_TASKS
    from .methods import REGISTRY
    from .methods.lm import LM_REGISTRY
    from .methods.rec import REC_REGISTRY
    from .metrics.estimators import ESTIMATORS
    from .scoring import METRICS
    from .tasks import TASKS

    def methods(registry):
        return {n: {"summary": m.summary, "hparams": {f.name: f.default for f in dataclasses.fields(m.hparams)}}
                for n, m in registry.items()}

    listing = {
        "tasks": {n: t.description for n, t in TASKS.items()},
        "methods": methods(REGISTRY),
        "forget": {k: h for k, (_, h) in KINDS.items()},
        "recommendation methods": methods(REC_REGISTRY),
        "recommendation forget": {k: h for k, (_, h) in REC_KINDS.items()},
        "language-model tasks": {n: t.description for n, t in LM_TASKS.items()},
        "language-model methods": methods(LM_REGISTRY),
        "language-model forget": {"authors:F": "a fraction F of the authors with all their QAs (TOFU forget01/05/10: "
                                               "0.01, 0.05, 0.1); authors:K, K authors (a fraction has a decimal point)",
                                  "canaries:K": "K random-string canaries (out of distribution); canaries:F, a fraction"},
        "metrics": METRICS,
        "KLoM estimators": {k: h for k, (_, h) in ESTIMATORS.items()},
    }
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for section, items in listing.items():
        click.echo(f"{section}:")
        for name, info in items.items():
            if isinstance(info, dict):
                hp = ", ".join(f"{k}={v}" for k, v in info["hparams"].items())
                click.echo(f"  {name:<16} {info['summary']}" + (f"\n  {'':<16} [{hp}]" if hp else ""))
            else:
                click.echo(f"  {name:<16} {info}")


def main() -> None:
    before = os.environ.get(COMMAND_LINE)
    os.environ[COMMAND_LINE] = "1"  # inherited by the worker processes a run starts (a local Ray cluster's)
    try:
        cli(standalone_mode=False)
    except UnlearnkitError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as err:
        if isinstance(err.__cause__, EOFError):  # click reports an EOFError as an abort: it is a truncated file
            click.echo(f"error: a file ended early (truncated or empty): {err.__cause__}", err=True)
            sys.exit(2)
        click.echo("interrupted: the ensembles finished so far are cached (and the one in training at its last "
                   "epoch); rerun the same command to resume", err=True)
        sys.exit(130)
    finally:  # (main is also called in-process, by tests)
        if before is None:
            os.environ.pop(COMMAND_LINE, None)
        else:
            os.environ[COMMAND_LINE] = before
