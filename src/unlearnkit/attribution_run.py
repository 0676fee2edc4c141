"""`unlearnkit datamodels` as a function: fit linear datamodels (and TRAK, for comparison) on a task's
subset-trained models, score both by LDS on held-out subsets, and save the datamodels for runs to load
(`--datamodels DIR`: clustered forget sets, DMM). Everything is checked before anything trains."""
from __future__ import annotations

import os

from .attribution import DatamodelReport, compute_datamodels, save_datamodels, trak_lds
from .attribution.store import datamodels_id
from .attribution.subsets import check_datamodel_settings
from .data import load_dataset
from .errors import UnlearnkitError, option
from .experiment import datamodels_budget
from .report import check_output
from .runs import RunConfig, classifier_task, computing


@computing
def fit_and_save_datamodels(config: RunConfig, out: str | os.PathLike, models: int = 200, subset: float = 0.5,
                            trak_models: int = 2, proj_dim: int = 256,
                            overwrite: bool = False) -> tuple[DatamodelReport, dict | None]:
    """M = `models` subset models of `config.task` (each on a random `subset` fraction of the training set,
    from `config.seed`), the datamodels fitted on them and their LDS, and TRAK's LDS with `trak_models`
    models and a `proj_dim` projection (None for 0 models); saved to `out` (datamodels.safetensors and
    datamodels.json), which must not hold other datamodels unless `overwrite`."""
    task = classifier_task(config.task)
    check_datamodel_settings(models, subset)
    if trak_models < 0 or proj_dim < 1:
        raise UnlearnkitError(f"{option('trak_models')} must be >= 0 and {option('proj_dim')} >= 1, got "
                              f"{trak_models} and {proj_dim}")
    ds = load_dataset(task.dataset, config.data_dir, task.train_size if config.train_size is None
                      else config.train_size, config.seed)
    check_output(out, datamodels_id(task, ds, models, subset, config.seed), overwrite, "datamodels.json")
    cache = config.zoo_cache()
    if cache is not None:
        cache.check()
    datamodels_budget(task, ds, models, subset, trak_models, config.seed, cache).check(
        config.max_hours, cache.root if cache is not None else None, "these datamodels")
    report = compute_datamodels(task, ds, models, subset, config.seed, cache)
    trak = (trak_lds(task, ds, report.held_out_runs, trak_models, proj_dim, seed=config.seed, cache=cache)
            if trak_models else None)
    save_datamodels(out, report, {"trak": trak} if trak else {})
    return report, trak
