"""The one way a grid runs: cells, each computed once, kept as it finishes, run through the backend.

Every grid unlearnkit runs is a list of cells: a run's jobs (methods × `--budgets`), `unlearnkit tune`'s
trials, `llm ood`'s (forget set × steps) points, and a study's runs. `run_cells` looks each cell up in
a store by a key that hashes everything that makes its result, computes only the missing ones through
the execution backend (one after another here, as parallel tasks on Ray), and keeps each result the
moment it arrives. So an interrupted run, search or study resumes where it stopped, and a cell that
finished is never computed again.

A key hashes the cell's inputs and the package's source code, so an edited method or metric is
recomputed rather than read stale. `CellStore` keeps job results in the cache (`<cache>/cells/<key>`): a JSON result and the arrays beside
it (per-example KLoM, the scores behind `scores.npz`). The arrays are written first and the JSON last,
each atomically, so the JSON's presence says the cell is whole; an entry that cannot be read back
(a damaged file) is computed again, never trusted.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import __version__
from .backends import current as current_backend
from .engine.compute import current as current_compute
from .files import atomic_write, file_sha, read_json_object
from .zoo import stable_hash

log = logging.getLogger(__name__)

FORMAT = 2


def cell_key(*parts) -> str:
    """A cell's key: a hash of what made it and of the package's code (every source file), so that a
    changed method or metric recomputes its cells instead of reading stale ones."""
    return stable_hash({"cell": parts, "unlearnkit": __version__, "code": code_digest(), "format": FORMAT})[:32]


@functools.cache
def code_digest() -> str:
    """SHA-256 of the package's Python sources (names and contents), read once per process."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class CellStore:
    """Finished cells under `root`, each `(row, extra)` as `Bench.run_job` returns it: `row` a JSON dict,
    `extra` None or {"klom": array, "scores": {name: array}}."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def beside(cls, cache) -> CellStore | None:
        """The store of finished jobs next to a `ZooCache` (`<cache>/cells`); None without a cache."""
        return cls(cache.root.parent / "cells") if cache is not None else None

    def has(self, key: str) -> bool:
        """Whether the cell was kept (without reading it back: a damaged one is found, and redone, by `get`)."""
        return (self.root / f"{key}.json").is_file()

    def get(self, key: str):
        meta, arrays = self.root / f"{key}.json", self.root / f"{key}.npz"
        if not meta.exists():
            return None
        try:
            saved = read_json_object(meta)
            if saved.get("key") != key:
                raise ValueError("the entry names another key")
            if saved.get("sha256") != _row_sha(saved.get("row")) or not isinstance(saved["row"], dict):
                raise ValueError("its row does not match its checksum")
            if not saved["arrays"]:
                return saved["row"], None
            if saved.get("arrays_sha256") != file_sha(arrays):
                raise ValueError("its arrays do not match their checksum")
            with np.load(arrays) as z:
                scores = {name[len("scores/"):]: z[name] for name in z.files if name.startswith("scores/")}
                return saved["row"], {"klom": z["klom"], "scores": scores}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("cell %s cannot be read back (%s): computing it again", key, e)
            return None

    def put(self, key: str, result) -> None:
        row, extra = result
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "arrays": extra is not None, "row": row, "sha256": _row_sha(row)}
        if extra is not None:
            arrays = {"klom": np.asarray(extra["klom"]), **{f"scores/{k}": np.asarray(v)
                                                            for k, v in extra["scores"].items()}}
            atomic_write(self.root / f"{key}.npz", lambda p: _save_npz(p, arrays))
            entry["arrays_sha256"] = file_sha(self.root / f"{key}.npz")
        atomic_write(self.root / f"{key}.json", lambda p: p.write_text(json.dumps(entry)))


def _row_sha(row) -> str:
    """A checksum of a row as JSON writes it (an edited number in a cell is refused, not reported)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary's name
        np.savez(f, **arrays)


def run_cells(store, cells: Iterable[tuple[str, object]], compute: Callable) -> list:
    """`compute(item)` for every (key, item) whose key `store` (None: no store) has no result for, through
    the current backend; each result is put in the store as it arrives. Returns the results in order.

    A result goes through the store's JSON and arrays even when just computed, so a cell reads the
    same whether it was computed now or loaded (a rerun's files equal the first run's)."""
    cells = list(cells)
    results: dict[str, object] = {}
    for key, _ in cells:
        if store is not None and key not in results and (hit := store.get(key)) is not None:
            results[key] = hit
    todo = {key: item for key, item in cells if key not in results}  # a key twice is computed once
    if todo:
        backend = current_backend()
        by_item = {id(item): key for key, item in todo.items()}  # the backend hands back the objects sent
        for item, result in backend.map(compute, list(todo.values()), current_compute()):
            key = by_item[id(item)]
            if store is not None:
                store.put(key, result)
                result = store.get(key) or result
            results[key] = result
    return [results[key] for key, _ in cells]


__all__ = ["CellStore", "cell_key", "run_cells"]
