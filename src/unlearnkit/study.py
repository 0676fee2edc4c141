"""Studies: a grid of runs with one output folder, one table, one figure and one report.

    unlearnkit study spec.toml --out studies/forget-kinds

A spec file (or the flags `--run KEY=VALUE` and `--grid KEY=V1,V2`, which override it) has two tables: [run], the options every cell shares (any `RunConfig` field, as
`unlearnkit run` names them with underscores: task, methods, models, ...), and [grid], the axes whose
product is the study (each a list of values of a `RunConfig` field: forget, seed, models, ...):

    [run]
    task = "fashion-mnist-mlp"
    methods = ["none", "retrain", "finetune", "ga"]
    [grid]
    forget = ["random:100", "class:3:0.1"]
    seed = [0, 1]

Every cell is an ordinary run written to `cells/<name>/` (its results.json, scores.npz, report.html): a
finished cell — its folder holds results.json with the cell's run id — is never recomputed, so an
interrupted study resumes where it stopped; the cells run through `cells.run_cells`, the one way every
grid runs (as parallel tasks on the Ray backend). Every
cell's config (options, methods, forget spec, hyperparameters) is checked before any cell trains; an
error names the spec's offending line. The [run]'s `max_hours` bounds the whole study: the training of its
unfinished cells is estimated (`study_budget`) and a study past the limit is refused before any cell runs.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import tomllib
from pathlib import Path

from .backends import use_backend
from .budget import Budget
from .cells import run_cells
from .engine.compute import use
from .errors import UnlearnkitError, option, spelled_as_python
from .files import atomic_write, check_writable, read_json_object
from .forget.specs import USES_DATAMODELS
from .report import index
from .report.html import write_study_report
from .report.results import other_output
from .report.table import WIDTH, small_n_warning
from .runs import RunConfig, default_forget, default_models, reads_files
from .zoo import stable_hash

FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
TUPLES = {"methods", "budgets", "estimators", "metrics", "hparams"}


@dataclasses.dataclass(frozen=True)
class Study:
    base: dict
    grid: dict[str, list]
    cells: list[tuple[dict, RunConfig]]  # (the cell's grid values, its config)

    @property
    def study_id(self) -> str:
        return stable_hash([c.run_id for _, c in self.cells])[:16]


def _line(text: str, key: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line) or line.strip() == f"[{key}]":
            flag = re.search(r"# (--\w+)$", line)
            return f"{flag.group(1)} {key}=…" if flag else f"line {n} ({line.strip()})"
    return f"key {key!r}"


def _scalar(text: str):
    """A flag's value as TOML would read it: an integer, a number, true/false, else the text."""
    t = text.strip()
    for parse in (int, float):
        try:
            return parse(t)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(t.lower(), t)


def _flag(key: str, value: str, axis: bool):
    """`--run KEY=V` / `--grid KEY=V1,V2`: list-valued keys (methods, …) take commas within a value, so
    their grid values are separated by semicolons (`--grid methods='none,ga;none,scrub'`)."""
    def one(v: str):
        return [_scalar(x) for x in v.split(",") if x.strip()] if key in TUPLES else _scalar(v)
    if not axis:
        return one(value)
    return [one(v) for v in value.split(";" if key in TUPLES else ",") if v.strip()]


def _value(key: str, v):
    """A spec's value as RunConfig takes it: lists as tuples (hparams as "METHOD.NAME=VALUE" strings or
    [METHOD, NAME, VALUE] lists, which RunConfig reads with `runs.parse_overrides`)."""
    if key in TUPLES and isinstance(v, list):
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v


def load_study(path=None, run: tuple[str, ...] = (), grid: tuple[str, ...] = ()) -> Study:
    """Parse and check a spec file and/or the flags of the common cases (`--run KEY=VALUE`, `--grid
    KEY=V1,V2`; a flag overrides the file's key): every cell's config is built (and its methods checked)
    before anything runs."""
    text, spec = "", {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise UnlearnkitError(f"cannot read the study spec {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UnlearnkitError(f"{path} is not UTF-8 text: a study spec is a TOML file") from None
        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UnlearnkitError(f"{path} is not valid TOML: {e}") from None
    for table, flags in (("run", run), ("grid", grid)):
        for flag in flags:
            key, eq, value = flag.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or not key:
                raise UnlearnkitError(f"{option(table)} {flag!r}: write KEY=VALUE" + (",VALUE…" if table == "grid" else ""))
            if not isinstance(spec.get(table, {}), dict):
                raise UnlearnkitError(f"{path}: [{table}] must be a table")
            spec.setdefault(table, {})[key] = _flag(key, value, table == "grid")
            text += f"\n{key} = {value}  # --{table}"
    path = path if path is not None else "the study flags"
    extra = sorted(set(spec) - {"run", "grid"})
    if extra:
        raise UnlearnkitError(f"{path}, {_line(text, extra[0])}: unknown table or key {extra[0]!r}; a spec has [run] "
                              "and [grid]")
    base, grid = spec.get("run", {}), spec.get("grid", {})
    for table, keys in (("run", base), ("grid", grid)):
        for k in keys:
            if k not in FIELDS:
                raise UnlearnkitError(f"{path}, {_line(text, k)}: unknown [{table}] key {k!r}; known: "
                                      f"{', '.join(sorted(FIELDS))}")
    if not grid:
        raise UnlearnkitError(f"{path}: the [grid] table is missing or empty; give at least one axis, e.g. seed = [0, 1]")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UnlearnkitError(f"{path}, {_line(text, k)}: grid axis {k!r} must be a non-empty list")
        if k in base:
            raise UnlearnkitError(f"{path}, {_line(text, k)}: {k!r} is both in [run] and in [grid]")
        if len({repr(v) for v in values}) < len(values):
            raise UnlearnkitError(f"{path}, {_line(text, k)}: grid axis {k!r} repeats a value: the same cell twice")
    cells = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        fields = _applying({k: _value(k, v) for k, v in {**base, **values}.items()}, values)
        try:
            with spelled_as_python():  # a cell's messages name the spec's keys
                config = RunConfig(**fields)
                _check_cell(config)
        except UnlearnkitError as e:
            named = [k for k in values if k in str(e) or (isinstance(values[k], str) and values[k] in str(e))]
            where = named[0] if named else next(iter(values)) if len(values) == 1 else None
            at = _line(text, where) if where else "its values or its [run] options"
            raise UnlearnkitError(f"{path}, cell {values} ({at}): {e}") from None
        except TypeError as e:
            raise UnlearnkitError(f"{path}, cell {values}: {e}") from None
        cells.append((values, config))
    return Study(base, grid, cells)


def _applying(fields: dict, values: dict) -> dict:
    """A cell's fields without the shared [run] options that do not apply to it — `data_dir` for a task
    whose data reads no directory, `datamodels` for a forget set that reads none — so that one study can
    mix tasks or forget kinds; given on the grid (for this cell), they are checked as a run checks them."""
    task = fields.get("task", RunConfig.task)
    forget = fields.get("forget") or default_forget(task)
    drop = {"data_dir": not reads_files(task),
            "datamodels": forget.split(":")[0].strip() not in USES_DATAMODELS}
    return {k: v for k, v in fields.items() if not (drop.get(k) and k not in values)}


def _check_cell(config: RunConfig) -> None:
    """What a cell's run checks before it trains — methods, data, the forget set, each method's setting on
    it — so that a bad cell fails before any cell runs (a clustered or hard forget set needs trained models
    to be built: its run checks it)."""
    from .lm.task import LM_TASKS
    if config.task in LM_TASKS:
        from .lm_experiment import checked_lm, lm_jobs
        checked_lm(config, lm_jobs(config))
    else:
        from .experiment import prepare
        prepare(config, check_only=True)


def study_budget(configs: list[RunConfig]) -> Budget:
    """The training the cells `configs` will do, one after another: each cell's (`runs.run_budget`), an arm
    that several cells share counted once. A clustered or hard forget set counts what building it trains
    (its run checks the rest, once the set is known): the estimate is a lower bound, as a run's is."""
    from .experiment import budget, clustered_budget, prepare
    from .lm.task import LM_TASKS
    total, seen = Budget(), set()
    for config in configs:
        if config.task in LM_TASKS:
            from .lm_experiment import checked_lm, lm_budget, lm_jobs
            jobs = lm_jobs(config)
            data, _ = checked_lm(config, jobs)
            total += lm_budget(config, data, jobs, config.zoo_cache(), seen=seen)
            continue
        p = prepare(config, check_only=True)
        if p.forget is not None:
            total += budget(p, seen=seen)
        elif (before := clustered_budget(config, p.task, p.dataset, p.cache, seen)) is not None:
            total += before
    return total


def cell_name(values: dict) -> str:
    return "-".join(f"{k}={re.sub(r'[^A-Za-z0-9.+_-]', '_', str(v))}" for k, v in values.items())


def _done(folder: Path, config: RunConfig) -> dict | None:
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("run_id") == config.run_id else None


def _run_cell(item: tuple[str, RunConfig]) -> dict:
    from .experiment import run
    folder, config = item
    with spelled_as_python():  # (here too: a cell may run in a Ray worker)
        return run(config, folder, overwrite=True)


class _Finished:
    """A study's cell store: a cell is finished when its folder holds results of its run id (`run` writes
    them, so there is nothing to put)."""

    def __init__(self, cells: dict[str, tuple[Path, RunConfig]]):
        self.cells = cells

    def get(self, key: str) -> dict | None:
        return _done(*self.cells[key])

    def put(self, key: str, result: dict) -> None:
        pass


def run_study(study: Study, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Run every cell not already finished under `out`; write study.json, the study's figure and report.
    `out` holding another study is refused unless `overwrite`, or unless this one extends it (holds all its
    cells: a grid given more values); either way its finished cells are reused."""
    out = Path(out)
    check_writable(out, f"the study's {option('out')}")
    other_output(out, "study.json", overwrite)
    if not overwrite and (out / "study.json").is_file():
        try:
            other = read_json_object(out / "study.json")
            other_id, other_cells = other.get("study_id"), {c["run_id"] for c in other["cells"]}
        except (OSError, ValueError, KeyError, TypeError):
            other_id, other_cells = "unreadable", {None}
        if not other_cells <= {c.run_id for _, c in study.cells}:  # (the same study holds the same cells)
            raise UnlearnkitError(f"{out} holds another study ({other_id}) with cells this one lacks; choose another "
                                  f"{option('out')}, or {option('overwrite', True)} to replace its study.json and "
                                  "report (the cells it finished are kept, and reused where this study has them)")
    items = [(str(out / "cells" / cell_name(v)), (out / "cells" / cell_name(v), c)) for v, c in study.cells]
    first = study.cells[0][1]
    with use(first.compute), use_backend(first.backend, first.ray_address):
        todo = [config for folder, config in dict(items).values() if _done(folder, config) is None]
        if todo:
            study_budget(todo).check(first.max_hours, first.cache_root or None, "this study")
        run_cells(_Finished(dict(items)), items, _run_cell)
    cells = []
    for values, config in study.cells:
        folder = out / "cells" / cell_name(values)
        results = _done(folder, config)
        if results is None:
            raise UnlearnkitError(f"cell {values} did not finish: {folder} has no results for it")
        cells.append({"cell": values, "name": cell_name(values), "path": str(folder), "run_id": config.run_id,
                      "rows": [_summary(r) for r in results["rows"]], "noise_floor": _summary(results["noise_floor"])})
    summary = {"study_id": study.study_id, "run": study.base, "grid": study.grid, "cells": cells}
    atomic_write(out / "study.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    write_study_report(out, summary, format_study(summary))
    index.record(out, {"run_id": study.study_id, "config": {**_plain(study.base), "forget": str(study.grid.get(
        "forget", study.base.get("forget"))), "models": study.base.get("models")}}, kind="study")
    return summary


def _plain(base: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.items()}


def _summary(row: dict) -> dict:
    return {k: row.get(k) for k in ("method", "label", "klom_p95", "accuracy", "cost_vs_retrain", "diverged")}


def format_study(summary: dict) -> str:
    """One line per cell and method: the cell's grid values, KLoM p95 per split, forget accuracy, ×retrain."""
    axes = list(summary["grid"])
    width = max([len(cell_name(c["cell"])) for c in summary["cells"]] + [4])
    lines = [f"{'cell':<{width}}  {'method':<16}{'p95 forget':>11}{'retain':>8}{'val':>8}{'acc f':>7}{'×retrain':>9}"]
    for c in summary["cells"]:
        for r in c["rows"] + ([] if any(x["label"] == c["noise_floor"]["label"] for x in c["rows"]) else [c["noise_floor"]]):
            k, ratio = r["klom_p95"], (r.get("cost_vs_retrain") or {}).get("flops")
            fmt = lambda v, f="{:.2f}": "—" if v is None else f.format(v)  # noqa: E731
            lines.append(f"{cell_name(c['cell']):<{width}}  {r['label']:<16}{fmt(k['forget']):>11}{fmt(k['retain']):>8}"
                         f"{fmt(k['val']):>8}{fmt(r['accuracy']['forget'], '{:.3f}'):>7}{fmt(ratio, '{:.3f}'):>9}")
    lines.append(f"\n{len(summary['cells'])} cells over {', '.join(axes)}; each cell's own report is in its folder.")
    task = summary["run"].get("task", RunConfig.task)
    n = min(c["cell"].get("models", summary["run"].get("models")) or default_models(c["cell"].get("task", task))
            for c in summary["cells"])
    return "\n".join(lines + small_n_warning(n, WIDTH))
