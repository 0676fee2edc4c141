"""Writing a run's results: results.json, timings.json, klom.npz and forget_set.json, each atomically.

results.json holds everything a run's config and seed determine, so two runs of one config give the same
file bit for bit (trained here, loaded from the cache, or resumed). Wall-clock seconds are the one thing
that differs between identical runs: they go to timings.json.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import UnlearnkitError, option
from ..files import alive, atomic_write, check_writable, remove_stale_temporaries, savez
from .scores import OUTPUTS, write_scores


def json_safe(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def other_output(out: Path, name: str, overwrite: bool) -> None:
    """Refuse (unless `overwrite`) an `out` holding another command's output: a run's report would replace a
    study's, and the run index would lose the study."""
    theirs = [f for f in OUTPUTS if f != name and (out / f).is_file()]
    if theirs and not overwrite:
        raise UnlearnkitError(f"{option('out', str(out))} holds {OUTPUTS[theirs[0]]} ({theirs[0]}); choose a new "
                              f"folder, or pass {option('overwrite', True)} to write over it")


def check_output(out, run_id: str, overwrite: bool = False, name: str = "results.json",
                 mine: dict | None = None) -> None:
    """Refuse, before any work, an `out` that cannot be written or that holds another run's results
    (`name` with another "run_id", the hash of a config) unless `overwrite`. The same run's results are
    refreshed. Nothing is created: the folder appears only when the results are written. `mine` (this run's
    config) lets the message name the settings that differ."""
    if not str(out).strip():
        raise UnlearnkitError(f"{option('out')} is empty: give the folder to write to (leave {option('out')} out to "
                              "write nothing)")
    out = Path(out)
    check_writable(out, option("out", str(out)))
    claim = _claim(out)
    if claim and claim.get("run_id") != run_id and claim.get("pid") != os.getpid() and alive(claim.get("pid", 0)):
        raise UnlearnkitError(f"{option('out', str(out))} is being written by another run (pid {claim['pid']}); "
                              "choose another folder or wait for it to finish")
    other_output(out, name, overwrite)
    previous = out / name
    if overwrite or not previous.exists():
        return
    try:
        theirs = json.loads(previous.read_text())
    except (OSError, ValueError):
        theirs = None
    if not isinstance(theirs, dict) or theirs.get("run_id") != run_id:
        readable = isinstance(theirs, dict)
        theirs = theirs if readable else {}
        config = theirs.get("config") if isinstance(theirs, dict) and isinstance(theirs.get("config"), dict) else {}
        differ = [f"{k} {config[k]} there, {v} here" for k, v in (mine or {}).items()
                  if k in config and v is not None and config[k] != v and k not in ("cache_dir", "max_hours")]
        what = ", ".join(differ or [f"{k} {config[k]}" for k in ("task", "forget", "models", "seed") if k in config])
        what = what or (f"id {theirs.get('run_id')}, this one's {run_id}" if readable else f"{name} unreadable")
        raise UnlearnkitError(f"{option('out', str(out))} holds {OUTPUTS.get(name, name)} of other settings ({what}); "
                              f"choose a new folder, or pass {option('overwrite', True)} to replace them")


CLAIM = ".unlearnkit-claim"


def _claim(out: Path) -> dict | None:
    try:
        claim = json.loads((out / CLAIM).read_text())
        return claim if isinstance(claim, dict) else None
    except (OSError, ValueError):
        return None


def claim_output(out, run_id: str) -> None:
    """Mark `out` as being written by this run (once every check has passed, before training), so a
    second run started into the same folder meanwhile is refused by `check_output` instead of one
    silently replacing the other's results. `release_output` removes the mark; a dead owner's is ignored."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CLAIM, lambda p: p.write_text(json.dumps({"run_id": run_id, "pid": os.getpid()})))


def release_output(out) -> None:
    (Path(out) / CLAIM).unlink(missing_ok=True)


def json_config(config) -> dict:
    """A config as it reads back from results.json (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def split_timings(results: dict) -> tuple[dict, dict]:
    """(results without wall-clock fields, {row label: {"seconds", "seconds_vs_retrain"}})."""
    timings, rows = {}, {}
    for r in results["rows"] + [results["noise_floor"]]:
        timed = {k: v for k, v in r.items() if k != "seconds"}
        cost = dict(r.get("cost_vs_retrain") or {})
        if cost:
            timed["cost_vs_retrain"] = {k: v for k, v in cost.items() if k != "seconds"}
        rows[id(r)] = timed
        timings[r.get("label", r["method"])] = {"seconds": r.get("seconds"), "seconds_vs_retrain": cost.get("seconds")}
    fixed = {**results, "rows": [rows[id(r)] for r in results["rows"]], "noise_floor": rows[id(results["noise_floor"])]}
    return fixed, {"rows": timings}


def write_results(out, results: dict, per_example: dict[str, np.ndarray], splits: dict[str, np.ndarray],
                  forget_ids: np.ndarray, scores: dict[str, np.ndarray] | None = None) -> None:
    """results.json (config, rows, noise_floor; no wall-clock), timings.json (seconds per row); klom.npz
    (per-example KLoM of every method that finished, as `klom/<method>`, with the split positions and
    the forget set's ids); forget_set.json (pass it back with --forget ids:@FILE); scores.npz (every
    arm's per-model scores, `report.scores`), written first: results never exist without their scores."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if scores is not None:
        write_scores(out, {**scores, "forget_ids": np.asarray(forget_ids)}, splits, results)
    atomic_write(out / "forget_set.json", lambda p: p.write_text(json.dumps(results["forget_set"], indent=1)))
    fixed, timings = split_timings(results)
    atomic_write(out / "timings.json", lambda p: p.write_text(json.dumps(json_safe(timings), indent=2)))
    rewrite_results(out, fixed, per_example, splits, forget_ids)
    release_output(out)


def rewrite_results(out, fixed: dict, per_example: dict[str, np.ndarray], splits: dict[str, np.ndarray],
                    forget_ids: np.ndarray) -> None:
    """klom.npz, then results.json (without wall-clock fields): what a run and `rescore` both write."""
    out = Path(out)
    arrays = {f"klom/{m}": v for m, v in per_example.items()}
    arrays.update({f"split/{k}": v for k, v in splits.items()})
    arrays["forget_ids"] = forget_ids
    arrays["run_id"] = np.array(fixed["run_id"])
    atomic_write(out / "klom.npz", lambda p: savez(p, arrays))
    atomic_write(out / "results.json", lambda p: p.write_text(json.dumps(json_safe(fixed), indent=2)))
