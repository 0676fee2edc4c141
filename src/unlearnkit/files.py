"""Writing files so that a file that exists is whole, and failing early and clearly when one cannot be.

Every file the toolkit writes goes through `atomic_write` (a temporary sibling renamed into place, so an
interrupted write leaves no file) and every place it writes to is checked with `check_writable` before
any work starts, so a run never spends its compute and then fails at its last write.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import UnlearnkitError

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def file_sha(path: Path) -> str:
    """SHA-256 of a file's bytes: what a cache entry records of what it wrote, to refuse an edited one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (a manifest, a cell): ValueError when it holds anything else,
    as for a file that is not JSON at all, so a damaged entry is reported and recomputed, not trusted."""
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
        raise ValueError(f"it holds a JSON {type(value).__name__}, not an object")
    return value


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary sibling of `path`, then rename it into place (atomic on POSIX);
    an interrupted write leaves no file at `path` and no temporary behind. A full disk becomes one
    UnlearnkitError line (what was written before stays)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if disk_full(err, tmp.parent):
            raise UnlearnkitError(f"the disk holding {path.parent} is full: {path.name} was not written (work "
                                  "finished before it is kept); free some space and run the command again") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def disk_full(err: BaseException, where: Path | None = None) -> bool:
    """Whether `err` says the disk is full: ENOSPC/EDQUOT as an OSError, as safetensors' error (the OS
    error in its text), or as torch.save's ("enforce fail at inline_container.cc ... file write failed",
    no errno: then ask the file system at `where` whether it has room left)."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if getattr(err, "errno", None) in codes or any(f"os error {c})" in str(err) for c in codes):
        return True
    if where is not None and ("inline_container" in str(err) or "write failed" in str(err)):
        try:
            st = os.statvfs(where)
            return st.f_bavail * st.f_frsize < (1 << 20)
        except OSError:
            return False
    return False


def check_writable(directory: Path, what: str) -> None:
    """Raise UnlearnkitError unless files can be created in `directory` (created later if missing, so
    its nearest existing ancestor must be a writable directory). Nothing is left behind."""
    probe = nearest_existing(directory)
    if not probe.is_dir():
        raise UnlearnkitError(f"{what}: {probe} is a file, not a directory; choose another path")
    try:  # os.access alone trusts mode bits (root passes them; a read-only mount fails only later)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UnlearnkitError(f"{what}: {probe} is not writable ({err.strerror}: permissions or a read-only file "
                              "system); choose a directory you can write to") from None


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (what a later mkdir(parents=True) would create under)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def remove_stale_temporaries(directory: Path) -> None:
    """Delete `atomic_write` temporaries whose writer is no longer running (a kill mid-write)."""
    for f in Path(directory).iterdir():
        m = _TEMPORARY.match(f.name)
        if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
            f.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Whether process `pid` is running on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def savez(path: Path, arrays: dict, compress: bool = True) -> None:
    """np.savez(_compressed)'s format (np.load reads it), but with fixed member timestamps, so the same
    arrays give the same bytes (np.savez stamps each member with the time of writing)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                       compress_type=method)
