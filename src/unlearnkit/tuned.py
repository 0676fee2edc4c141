"""Where `unlearnkit tune` keeps the best hyperparameters it found and `unlearnkit run --tuned` reads them:
<cache>/tuned/<task>/<forget spec>/<method>.json. Apart from the search itself (tuning.py), so that a run can
read them without depending on the tuner.
"""
from __future__ import annotations

import json
import re
from pathlib import Path


def tuned_path(cache_dir: str, task: str, forget: str, method: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", forget).replace(":", "-")
    return Path(cache_dir) / "tuned" / task / safe / f"{method}.json"


def load_tuned(cache_dir: str, task: str, forget: str, method: str) -> dict | None:
    """The hyperparameters `tune` saved for this task, forget spec and method, or None."""
    if not cache_dir:
        return None
    path = tuned_path(cache_dir, task, forget, method)
    try:
        return json.loads(path.read_text())["hparams"]
    except (OSError, ValueError, KeyError):
        return None
