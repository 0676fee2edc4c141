"""The run index: one SQLite table of every run written with --out, so that runs can be listed, shown
and compared by id (`unlearnkit runs list|show|compare`) long after their folders were written.

The index lives in $UNLEARNKIT_INDEX, else beside the model cache (~/.cache/unlearnkit/runs.sqlite). It
holds where each run's files are and a few fields to find it by; the numbers stay in the run's own
results.json (read when a run is shown or compared), so a rescored run shows its new numbers. A run
written again to the same folder replaces its entry. An index that cannot be written never fails a run
(a warning says so); a missing folder is reported when its entry is read.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sqlite3
from pathlib import Path

from ..errors import UnlearnkitError

log = logging.getLogger(__name__)

SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    path TEXT PRIMARY KEY, run_id TEXT, kind TEXT, task TEXT, forget TEXT, methods TEXT, models INTEGER,
    seed INTEGER, device TEXT, precision TEXT, written TEXT)"""


def index_path() -> Path:
    from ..runs import default_cache_dir
    return Path(os.environ.get("UNLEARNKIT_INDEX") or Path(default_cache_dir()) / "runs.sqlite")


def _connect() -> sqlite3.Connection:
    path = index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.execute(SCHEMA)
    return db


def record(out, results: dict, kind: str = "run") -> None:
    """Add (or refresh) the run written to `out`."""
    c = results.get("config", {})
    row = (str(Path(out).resolve()), results.get("run_id"), kind, c.get("task"), str(c.get("forget")),
           ",".join(c.get("methods", [])), c.get("models"), c.get("seed"), c.get("device"), c.get("precision"),
           datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        with _connect() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
    except (sqlite3.Error, OSError) as e:
        log.warning("the run index %s could not be updated (%s); the run's files are complete", index_path(), e)


def entries(task: str | None = None) -> list[dict]:
    if not index_path().is_file():
        return []
    try:
        with _connect() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM runs" + (" WHERE task = ?" if task else "") + " ORDER BY written"
            return [dict(r) for r in db.execute(query, (task,) if task else ())]
    except sqlite3.Error as e:
        raise UnlearnkitError(f"the run index {index_path()} cannot be read ({e}); move it away (runs written "
                              "afterwards start a new one) or point $UNLEARNKIT_INDEX elsewhere") from None


def find(ref: str) -> Path:
    """The folder of the run `ref`: a folder path, or a run id (or a unique prefix of one) in the index."""
    if not str(ref).strip():
        raise UnlearnkitError("give a run: a folder, or a run id (or the start of one) from `unlearnkit runs list`")
    if Path(ref).is_dir():
        return Path(ref)
    hits = [e for e in entries() if (e["run_id"] or "").startswith(ref)]
    paths = sorted({e["path"] for e in hits})
    if len({e["run_id"] for e in hits}) == 1 and len(paths) > 1:  # one run written to several folders
        paths = [max(hits, key=lambda e: (Path(e["path"]).is_dir(), e["written"]))["path"]]
    if not paths:
        raise UnlearnkitError(f"no run {ref!r}: neither a folder nor a run id in the index {index_path()} "
                              "(`unlearnkit runs list` shows them)")
    if len(paths) > 1:
        raise UnlearnkitError(f"run id {ref!r} is ambiguous: {', '.join(paths)}; give more of it or a folder")
    if not Path(paths[0]).is_dir():
        raise UnlearnkitError(f"run {ref!r} was written to {paths[0]}, which no longer exists")
    return Path(paths[0])


def load(ref: str) -> tuple[Path, dict]:
    from .scores import read_results, with_seconds
    path = find(ref)
    return path, with_seconds(read_results(path), path)


def format_list(rows: list[dict]) -> str:
    if not rows:
        return f"no runs in the index {index_path()} yet (runs written with --out are added)"
    lines = [f"{'run id':<17}{'written (UTC)':<21}{'task':<20}{'forget':<16}{'N':>5}  {'methods':<30}path"]
    for e in rows:
        methods = e["methods"] if len(e["methods"]) <= 28 else e["methods"][:27] + "…"
        gone = "" if Path(e["path"]).is_dir() else "  (folder deleted)"
        lines.append(f"{e['run_id'] or '—':<17}{e['written'][:19]:<21}{e['task'] or '—':<20}{e['forget']:<16}"
                     f"{e['models'] or 0:>5}  {methods:<30}{e['path']}{gone}")
    return "\n".join(lines)


def format_compare(a: tuple[Path, dict], b: tuple[Path, dict]) -> str:
    """Config differences, then each row's KLoM p95 per split and forget accuracy in A and B, and B − A."""
    (pa, ra), (pb, rb) = a, b
    ca, cb = ra["config"], rb["config"]
    skip = {"cache_dir", "max_hours", "max_memory", "backend", "ray_address"}
    diff = [f"  {k}: {json.dumps(ca.get(k))} → {json.dumps(cb.get(k))}" for k in sorted(set(ca) | set(cb))
            if k not in skip and ca.get(k) != cb.get(k)]
    lines = [f"A = {pa} ({ra.get('run_id')})", f"B = {pb} ({rb.get('run_id')})",
             "config differences:" if diff else "configs are the same (but for where they ran)", *diff, ""]
    splits = ("forget", "retain", "val")
    lines.append(f"{'method':<20}" + "".join(f"{'p95 ' + s + ' A':>15}{'B':>8}{'B − A':>8}" for s in splits))
    rows_a = {r.get("label", r["method"]): r for r in ra["rows"] + [ra["noise_floor"]]}
    rows_b = {r.get("label", r["method"]): r for r in rb["rows"] + [rb["noise_floor"]]}
    for label in dict.fromkeys(list(rows_a) + list(rows_b)):
        cells = []
        for s in splits:
            va = (rows_a.get(label) or {}).get("klom_p95", {}).get(s)
            vb = (rows_b.get(label) or {}).get("klom_p95", {}).get(s)
            d = vb - va if va is not None and vb is not None else None
            cells.append("".join(f"{'—' if v is None else f'{v:.2f}':>{w}}" for v, w in ((va, 15), (vb, 8), (d, 8))))
        lines.append(f"{label:<20}" + "".join(cells))
    return "\n".join(lines)
