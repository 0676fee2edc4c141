"""Where `unlearnkit tune` keeps the best hyperparameters it found and `unlearnkit run --tuned` reads them:
<cache>/tuned/<task>/<forget spec>/<method>.json. Apart from the search itself (tuning.py), so that a run can
read them without depending on the tuner.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import UnlearnkitError
from .files import read_json_object


def tuned_path(cache_dir: str, task: str, forget: str, method: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", forget).replace(":", "-")
    return Path(cache_dir) / "tuned" / task / safe / f"{method}.json"


def load_tuned(cache_dir: str, task: str, forget: str, method: str) -> dict | None:
    """The hyperparameters `tune` saved for this task, forget spec and method, or None."""
    if not cache_dir:
        return None
    path = tuned_path(cache_dir, task, forget, method)
    if not path.is_file():
        return None
    try:
        hparams = read_json_object(path)["hparams"]
        if not isinstance(hparams, dict):
            raise ValueError("its hparams are not a table of values")
    except (OSError, ValueError, KeyError) as e:
        raise UnlearnkitError(f"the tuned hyperparameters of {method} in {path} cannot be read ({e}); run "
                              f"`unlearnkit tune --method {method}` again, or delete the file") from None
    return hparams
