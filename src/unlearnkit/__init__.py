"""unlearnkit: machine unlearning methods, judged per example against many oracle models.

The public API, importable from here (each name loads its module on first use, so `import unlearnkit`
stays instant):

    run, RunConfig                     a run: task → zoo → forget set → methods → metrics (experiment.py)
    rescore_run                        a finished run's metrics again, from its saved scores (rescore.py)
    load_study, run_study              a grid of runs (study.py)
    tune, TuneConfig                   Optuna search of one method's hyperparameters (tuning.py)
    corrective_study,                  the corrective-unlearning, random-label generalisation and
    generalisation_study, id_vs_ood    in- vs out-of-distribution studies
    unlearn_checkpoint                 a Hugging Face causal LM unlearned on a user's QA files
    fit_and_save_datamodels            linear datamodels (and TRAK) for a task
    register, Context, HParams,        writing a method: a function of one Context and its frozen
    LoopParams, Ensemble               hyperparameters, registered by name (methods/base.py)
    klom, summarize, bootstrap_p95     the metrics, pure functions over arrays (metrics/)
    format_table, write_report         the table a run prints and its report.html (report/)
    UnlearnkitError, Diverged          bad input (the message says what to do); a loop met a non-finite loss

A function named as its module (rescore, corrective, generalisation) is exported under another name: the
package's attribute of a submodule's name is that submodule once it is imported.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {  # name here: (module, name there)
    "run": "experiment", "RunConfig": "runs", "rescore_run": ("rescore", "rescore"), "load_study": "study",
    "run_study": "study", "tune": "tuning", "TuneConfig": "tuning", "corrective_study": ("corrective", "corrective"),
    "generalisation_study": ("generalisation", "generalisation"),
    "id_vs_ood": "lm_ood", "unlearn_checkpoint": "lm_checkpoint", "fit_and_save_datamodels": "attribution_run",
    "register": "methods", "Context": "methods", "HParams": "methods", "LoopParams": "methods",
    "Ensemble": "methods", "klom": "metrics", "summarize": "metrics", "bootstrap_p95": "metrics",
    "format_table": "report.table", "write_report": "report", "UnlearnkitError": "errors", "Diverged": "errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'unlearnkit' has no attribute {name!r}")
    module, there = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    value = getattr(importlib.import_module(f".{module}", __name__), there)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
