"""On-disk cache of trained ensembles, keyed by a hash of everything that made them.

Layout: <root>/zoo/<key>/{models.safetensors, manifest.json, checkpoint.pt, lock}, and
<root>/zoo/families/<family>/<key>: empty markers listing the entries of one family (arms that differ in
their seeds alone: `zoo.train.arm_key`), from which another N is assembled. Every file is written
under a temporary name and renamed into place, so a file that exists is whole; `manifest.json` is written
last and records the SHA-256 and the shape of every tensor, so a zoo is trusted only if all agree.
An entry is trained under its `lock` (an exclusive `flock`, which the kernel drops when its owner dies,
so a killed run never leaves a lock that blocks the next one): a second run that wants the same entry
waits, then loads it instead of training it twice or reading the first run's live checkpoint.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..engine import Checkpoint, Params
from ..errors import UnlearnkitError, option
from ..files import atomic_write, check_writable, file_sha, read_json_object, remove_stale_temporaries

log = logging.getLogger(__name__)


def stable_hash(obj) -> str:
    """SHA-256 of a JSON-serialisable description (sorted keys, so dict order never matters)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _shapes(params: Params) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sorted(params.items())}


def arm_key(family: str, seeds: list[int]) -> str:
    """The cache key of the arm of `family` (everything that made it but its seeds) holding `seeds`' models."""
    return stable_hash({"family": family, "seeds": [int(s) for s in seeds]})


class ZooCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / "zoo"

    def check(self) -> None:
        """Raise UnlearnkitError now, before any training, if the cache cannot be written."""
        check_writable(self.root, f"the model cache ({option('cache_dir')} or $UNLEARNKIT_CACHE)")

    def dir(self, key: str) -> Path:
        return self.root / key[:24]

    def has(self, key: str) -> bool:
        """Whether a finished entry is there (its manifest, written last, exists); `load` verifies it."""
        return (self.dir(key) / "manifest.json").exists()

    def load(self, key: str, models: int | None = None, quiet: bool = False) -> tuple[Params, dict] | None:
        """(models, manifest) from the cache, or None if absent. An entry that exists but is damaged —
        torn, edited, or holding another number of models than `models` — is reported (unless `quiet`:
        said once already) and ignored (the caller trains it again and overwrites it)."""
        d = self.dir(key)
        if not self.has(key):
            return None
        try:
            manifest = read_json_object(d / "manifest.json")
            if manifest["key"] != key:
                raise ValueError("its manifest belongs to another entry")
            if manifest["sha256"] != file_sha(d / "models.safetensors"):
                raise ValueError("its weights do not match their checksum")
            params = {k: v.clone() for k, v in load_file(d / "models.safetensors").items()}  # own, aligned memory
            if _shapes(params) != manifest["shapes"]:
                raise ValueError("its weights do not have the shapes its manifest records")
            if models is not None and any(v.shape[0] != models for v in params.values()):
                raise ValueError(f"it does not hold {models} models")
            return params, manifest
        except (OSError, ValueError, KeyError, TypeError) as err:
            if not quiet:
                log.warning("cache entry %s is damaged (%s): training it again", d, err)
            return None

    def save(self, key: str, params: Params, manifest: dict) -> None:
        d = self.dir(key)
        d.mkdir(parents=True, exist_ok=True)
        weights = d / "models.safetensors"
        atomic_write(weights, lambda p: save_file({k: v.contiguous() for k, v in params.items()}, p))
        full = {**manifest, "key": key, "sha256": file_sha(weights), "shapes": _shapes(params)}
        atomic_write(d / "manifest.json", lambda p: p.write_text(json.dumps(full, indent=2, default=str)))
        (d / "checkpoint.pt").unlink(missing_ok=True)

    def load_checkpoint(self, key: str) -> tuple[Checkpoint, dict] | None:
        """The last whole epoch of an interrupted training (and what it had cost so far), or None."""
        path = self.dir(key) / "checkpoint.pt"
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=True)
            if state["key"] != key:
                raise ValueError("it belongs to another entry")
            return (Checkpoint(state["epoch"], state["params"], state["optimizer"]),
                    {"seconds": float(state.get("seconds", 0.0)), "flops": int(state.get("flops", 0))})
        except Exception as err:  # a torn or foreign file, whatever the unpickler says: start over
            log.warning("ignoring a damaged checkpoint %s (%s): training from the start", path, err)
            return None

    def save_checkpoint(self, key: str, ckpt: Checkpoint, spent: dict | None = None) -> None:
        d = self.dir(key)
        d.mkdir(parents=True, exist_ok=True)
        state = {"key": key, "epoch": ckpt.epoch, "params": ckpt.params, "optimizer": ckpt.optimizer, **(spent or {})}
        atomic_write(d / "checkpoint.pt", lambda p: torch.save(state, p))

    @contextlib.contextmanager
    def lock(self, key: str, label: str = "models"):
        """Hold the entry's lock while it is trained; wait (saying so) while another process holds it.
        Temporaries in the entry that a killed writer left behind are removed once the lock is held."""
        d = self.dir(key)
        try:
            d.mkdir(parents=True, exist_ok=True)
            f = open(d / "lock", "a+")
        except OSError as err:
            raise UnlearnkitError(f"cannot write to the model cache at {self.root}: {err.strerror}; choose another "
                                  f"{option('cache_dir')} or pass {option('cache_dir', '')}") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "another process"
                log.warning("%s: another run (%s) is training this ensemble; waiting for it to finish", label, owner)
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as err:  # ENOLCK, EOPNOTSUPP: some network and FUSE file systems
                raise UnlearnkitError(f"the model cache at {self.root} cannot lock files ({err.strerror}); use a "
                                      f"local {option('cache_dir')} or pass "
                                      f"{option('cache_dir', '')}") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename}")
            f.flush()
            remove_stale_temporaries(d)
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f, fcntl.LOCK_UN)

    def register(self, family: str, key: str) -> None:
        """Note finished entry `key` as a member of `family` (a marker file: concurrent writers never clash)."""
        marker = self.root / "families" / family[:24] / key[:24]
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def members(self, family: str) -> list[tuple[str, list[int]]]:
        """(key, seeds) of the finished entries of `family` whose manifests say so (a removed or damaged
        entry is left out: `load` verifies the one used)."""
        out = []
        folder = self.root / "families" / family[:24]
        for marker in sorted(folder.iterdir()) if folder.is_dir() else []:
            try:
                manifest = read_json_object(self.root / marker.name / "manifest.json")
                if manifest.get("family") == family:
                    out.append((manifest["key"], [int(s) for s in manifest["seeds"]]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def untrained(self, family: str, seeds: list[int]) -> int:
        """How many of `seeds`' models neither their own arm nor another finished arm of `family` holds:
        what training their arm costs."""
        if self.has(arm_key(family, seeds)):
            return 0
        held = {s for _, its_seeds in self.members(family) for s in its_seeds}
        return sum(1 for s in seeds if int(s) not in held)

    def remove(self, key: str) -> None:
        """Delete one entry (the chunks of an arm, once the whole arm is stored)."""
        shutil.rmtree(self.dir(key), ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
