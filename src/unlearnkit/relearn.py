"""The relearning attack (Gradient Routing §5, Cloud et al. 2024; Siddiqui et al. 2025), shared by the
classifier's and the language model's corrective studies: from the unlearned models, a few full-batch Adam
steps on k identified examples (and, apart, on k retained ones), the manipulation's metric after each. A
method that hid the manipulation recovers it in a few steps; one that removed it does not."""
from __future__ import annotations

import logging

import numpy as np

from .budget import Work
from .engine import Optim
from .errors import option

RELEARN_STEPS = 40    # GR's bound on the relearning fine-tune
RELEARN_LR = 1e-3     # Adam; GR's 5e-5 is for a pretrained transformer, this moves a small classifier in 40 steps

log = logging.getLogger(__name__)


def relearn_key(k: int) -> dict | None:
    """What the attack with k examples is, for the cell keys of the rows it probes (None when k = 0)."""
    return {"relearn": k, "steps": RELEARN_STEPS, "lr": RELEARN_LR} if k else None


def relearn_work(k: int, models: int, rows: int, identified: list, retained: int) -> list[Work]:
    """What the attack with k examples trains, for a study's budget (none when k = 0): for each identified set
    (one per fraction) and each of `rows` rows of N = `models` models (one row after another),
    `RELEARN_STEPS` full-batch steps on each of its two sets: min(k, |set|) identified examples and
    min(k, `retained`) retained ones."""
    if not k:
        return []
    smallest = min([len(s) for s in identified] + [retained])
    if k > smallest:
        log.warning("%s is more than a relearning set holds: an attack uses all of a set smaller than "
                    "that (the smallest has %d examples; each row records its k)", option("relearn", k), smallest)
    return [Work(models, RELEARN_STEPS * rows, n) for s in identified for n in (min(k, len(s)), min(k, retained)) if n]


def relearn_curves(params, sets: dict[str, np.ndarray], loss, metric, context) -> dict:
    """The relearning attack's loop, shared by the classifier and LM studies: for each named set of
    positions, `RELEARN_STEPS` full-batch Adam steps of `loss` from `params` (through `context(positions)`,
    a method Context over them), `metric` after each. {"relearn": {set: {"curve", "max", "k"}}}."""
    out = {}
    for name, positions in sets.items():
        ctx = context(positions)
        model, carry, curve = params, {}, [metric(params)]
        for _ in range(RELEARN_STEPS):
            model = ctx.one_step(loss, f"relearn-{name}", positions, len(positions),
                                 Optim("adam", RELEARN_LR, 0.0, 0.0, "constant"), model, carry)
            curve.append(metric(model))
        out[name] = {"curve": curve, "max": max(curve), "k": len(positions)}
    return {"relearn": out}


def steps_to_half(results: dict) -> None:
    """Per row and relearning set: the first step whose metric is back halfway from the noise floor's value
    to the originals' (the `none` row's), both before any relearning; None when never (or when there is no
    `none` row). For a poison the floor's attack success is ~0, so this is half the originals'."""
    for block in results["fractions"]:
        none = next((r for r in block["rows"] if r["method"] == "none" and "relearn" in r), None)
        floor = block["noise_floor"].get("relearn")
        for r in block["rows"] + [block["noise_floor"]]:
            for name, rel in (r.get("relearn") or {}).items():
                start = none["relearn"][name]["curve"][0] if none else None
                target = None if start is None else (start + (floor[name]["curve"][0] if floor else 0.0)) / 2
                rel["steps_to_half"] = None if target is None else next(
                    (i for i, v in enumerate(rel["curve"]) if v >= target), None)


RELEARN_NOTE = (f" ½ relearn: fine-tuning steps on {{k}} identified examples until {{what}} is back halfway from the "
                f"noise floor's to the originals' (> {RELEARN_STEPS}: not within {RELEARN_STEPS}); fewer than the "
                "floor's = hidden, not removed.")


def k_relearn(results: dict) -> int:
    return next((r["relearn"]["forget"]["k"] for b in results["fractions"] for r in b["rows"] if "relearn" in r), 0)


def format_steps(rel: dict | None) -> str:
    if not rel:
        return "—"
    return f"> {RELEARN_STEPS}" if rel.get("steps_to_half") is None else str(rel["steps_to_half"])


def format_number(v, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)
