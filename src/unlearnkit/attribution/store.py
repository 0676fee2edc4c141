"""Fitting datamodels for a task end to end, and saving/loading them with what they were fitted on."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import Dataset
from ..engine.compute import current
from ..errors import UnlearnkitError
from ..files import atomic_write, file_sha, read_json_object
from ..tasks import Task
from ..zoo import (
    ORIGINAL_SEEDS,
    ZooCache,
    arm_seeds,
    stable_hash,
    template,
    tensor_digest,
    train_models,
)
from .datamodels import LinearDatamodels, fit_datamodels, lds
from .subsets import SubsetRuns, train_subset_models

HELD_OUT = 0.2  # fresh subset models for the LDS, as a fraction of M (at least 10)


def held_out_models(models: int) -> int:
    """The fresh subset models the LDS of M = `models` datamodels is measured on."""
    return max(10, round(HELD_OUT * models))


@dataclass(frozen=True)
class DatamodelReport:
    datamodels: LinearDatamodels
    lds_train: float
    lds_val: float
    models: int
    held_out: int
    meta: dict
    held_out_runs: SubsetRuns


def _identity(task: Task, dataset: Dataset, models: int, subset: float, seed: int) -> dict:
    return {"task": task.name, "data": dataset.fingerprint, "train_ids": tensor_digest(dataset.train_ids),
            "n_train": len(dataset.y_train), "n_val": len(dataset.y_val), "models": models, "subset": subset,
            "seed": seed}


def datamodels_id(task: Task, dataset: Dataset, models: int, subset: float, seed: int) -> str:
    """What saved datamodels are checked against before a fit overwrites them (`run_id` in datamodels.json)."""
    return stable_hash(_identity(task, dataset, models, subset, seed))[:16]


def compute_datamodels(task: Task, dataset: Dataset, models: int, subset: float = 0.5, seed: int = 0,
                       cache: ZooCache | None = None) -> DatamodelReport:
    """Train M subset models (+ held-out ones for the LDS), fit ridge datamodels for every training and
    validation example, and score them by LDS on the held-out subsets."""
    held_out = held_out_models(models)
    runs = train_subset_models(task, dataset, models, subset, seed, cache)
    test = train_subset_models(task, dataset, held_out, subset, seed, cache, first=models)
    dm = fit_datamodels(runs.masks, runs.margins)
    scores = lds(dm, test.masks, test.margins)
    n = len(dataset.y_train)
    return DatamodelReport(dm, float(np.nanmean(scores[:n])), float(np.nanmean(scores[n:])), models, held_out,
                           _identity(task, dataset, models, subset, seed), test)


def trak_lds(task: Task, dataset: Dataset, held_out: SubsetRuns, models: int = 2, proj_dim: int = 256,
             targets: int = 1000, seed: int = 0, cache: ZooCache | None = None) -> dict:
    """LDS of the TRAK attributor, on the same held-out subset models as the datamodels', for a seeded
    sample of `targets` training and `targets` validation examples (TRAK's weights are explicit)."""
    from .trak import trak_attribution

    n, n_val = len(dataset.y_train), len(dataset.y_val)
    g = torch.Generator().manual_seed(seed)
    pick_t = torch.randperm(n, generator=g)[:targets].sort().values
    pick_v = torch.randperm(n_val, generator=g)[:targets].sort().values
    arm = train_models(task, dataset, torch.arange(n), arm_seeds(ORIGINAL_SEEDS, models, seed), cache, "originals")
    x_t = torch.cat([dataset.x_train[pick_t], dataset.x_val[pick_v]])
    y_t = torch.cat([dataset.y_train[pick_t], dataset.y_val[pick_v]])
    on_device = {k: v.to(current().device) for k, v in arm.params.items()}  # per-example gradients there
    att = trak_attribution(template(task, dataset), on_device,
                           dataset.x_train, dataset.y_train, x_t, y_t, proj_dim=proj_dim, seed=seed)
    scores = lds(att, held_out.masks, held_out.margins[:, torch.cat([pick_t, n + pick_v])])
    return {"lds_train": float(np.nanmean(scores[:len(pick_t)])), "lds_val": float(np.nanmean(scores[len(pick_t):])),
            "models": models, "proj_dim": proj_dim, "targets": 2 * targets}


def save_datamodels(path: str | os.PathLike, report: DatamodelReport, extra: dict | None = None) -> None:
    """datamodels.safetensors (the weight matrix as its two exact factors, basis @ coef, plus bias and
    mask mean) and datamodels.json (what they were fitted on, and their LDS)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    dm = report.datamodels
    tensors = {"basis": dm.basis, "coef": dm.coef, "bias": dm.bias, "mask_mean": dm.mask_mean}
    atomic_write(d / "datamodels.safetensors", lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p))
    key = stable_hash(report.meta)
    meta = {**report.meta, "key": key, "run_id": key[:16], "lds_train": report.lds_train, "lds_val": report.lds_val,
            "held_out_models": report.held_out, "sha256": file_sha(d / "datamodels.safetensors"), **(extra or {}),
            "layout": "weights[i, x] = (basis @ coef)[i, x]; targets x = training then validation examples"}
    atomic_write(d / "datamodels.json", lambda p: p.write_text(json.dumps(meta, indent=2)))


def load_datamodels(path: str | os.PathLike, task: Task, dataset: Dataset) -> LinearDatamodels:
    """Load datamodels saved by `save_datamodels`, refusing those fitted for another task or training set."""
    d = Path(path)
    try:
        meta = read_json_object(d / "datamodels.json")
        if meta.get("sha256") != file_sha(d / "datamodels.safetensors"):
            raise ValueError("datamodels.safetensors does not match the checksum datamodels.json records")
        t = load_file(d / "datamodels.safetensors")
    except (OSError, ValueError, SafetensorError) as err:
        raise UnlearnkitError(f"no readable datamodels in {d}: {err}; fit them again with `unlearnkit datamodels`"
                              ) from None
    want = _identity(task, dataset, meta.get("models"), meta.get("subset"), meta.get("seed"))
    for field in ("task", "data", "train_ids", "n_train", "n_val"):
        if meta.get(field) != want[field]:
            raise UnlearnkitError(f"datamodels in {d} were fitted for task {meta.get('task')!r} on another training "
                                  f"set ({field}: {meta.get(field)} ≠ {want[field]}); this run is task {task.name!r} "
                                  "— fit them again with `unlearnkit datamodels`")
    return LinearDatamodels(weights=None, bias=t["bias"], method="datamodels", basis=t["basis"], coef=t["coef"],
                            mask_mean=t["mask_mean"])
