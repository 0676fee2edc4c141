"""`unlearnkit rescore RUN_DIR`: every metric of a finished run, recomputed from its scores.npz.

No model is trained or loaded. With the run's own settings the rewritten results.json and klom.npz are
byte-identical to the run's (the run computed them with the same functions from the same arrays);
with other estimators, metrics, binning or bootstrap replicates, the rows' metric fields and those
settings in the config change, and everything else stays (the run id: the models are the same; cost,
hyperparameters, timings.json, scores.npz).
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

from .errors import UnlearnkitError, option
from .metrics import SPLITS
from .report.html import write_report
from .report.results import rewrite_results
from .report.scores import read_results, read_scores, with_seconds
from .scoring import ArmScores, Settings, check_settings, row_metrics

# the row fields a run's metrics write (scoring.row_metrics, lm.scoring.lm_row): a rescore replaces them, and
# drops those its settings no longer produce (intervals without a bootstrap); everything else in a row (cost,
# hyperparameters) is kept as it is
METRIC_KEYS = ("klom_p95", "klom_mean", "klom_median", "klom_p95_ci", "accuracy", "klom_estimators", "ulira",
               "neurips23", "mia", "forget_quality", "forget_quality_per_model", "model_utility",
               "utility_components", "forget_rouge", "forget_verbmem", "forget_knowmem", "retain_knowmem",
               "forget_truth_ratio", "forget_truth_ratio_prob", "extraction_strength", "exact_memorization",
               "probability", "mia_auc", "privleak", "probe_rouge", "probe_rouge_by_type", "neighbour_rouge", "fluency")


def rescore(run_dir: str | os.PathLike, estimators: tuple[str, ...] | None = None,
            metrics: tuple[str, ...] | None = None, bootstrap: int | None = None,
            reference_binning: bool | None = None) -> dict:
    """Recompute `run_dir`'s results from its scores (None: the run's own setting) and rewrite
    results.json and klom.npz (and report.html, where the run wrote one); return the new results. Every input
    is checked before anything is written."""
    results = read_results(run_dir)
    arrays = read_scores(run_dir, results["run_id"])
    config = dict(results["config"])
    lm = "lm_task" in config
    if str(arrays["kind"]) != ("lm" if lm else "classifier"):
        raise UnlearnkitError(f"{run_dir}: scores.npz is of a {arrays['kind']} run, results.json of another kind; "
                              "run the job again")
    for key, value in (("estimators", estimators), ("metrics", metrics)):
        if isinstance(value, str):
            raise UnlearnkitError(f"{option(key)} must be a sequence of names, e.g. a tuple or a list, got {value!r}")
    for key, value in (("estimators", estimators), ("metrics", metrics), ("bootstrap", bootstrap),
                       ("reference_binning", reference_binning)):
        if value is not None:
            config[key] = list(value) if isinstance(value, (tuple, list)) else value
    b = config.get("bootstrap", 0)
    if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 0 <= b <= 10_000:
        raise UnlearnkitError(f"{option('bootstrap')} must be a whole number of replicates in [0, 10000], got {b!r}")
    config["bootstrap"] = int(b)
    settings = Settings(tuple(config.get("estimators", ())), tuple(config.get("metrics", ("klom",))),
                        bool(config.get("reference_binning")), int(config.get("bootstrap", 0)),
                        int(config.get("seed", 0)))
    check_settings(settings.estimators, settings.metrics)
    if lm and set(metrics or ()) - {"klom"}:
        raise UnlearnkitError(f"{run_dir} is a language model's run: it has KLoM and the TOFU/MUSE metrics, not "
                              f"{', '.join(m for m in metrics if m != 'klom')} (classifier metrics)")
    splits = {k: arrays[f"split/{k}"] for k in SPLITS}
    score = _lm_scorer(arrays, settings) if lm else _classifier_scorer(arrays, splits, settings)
    per_example, new_rows = {}, {}
    labelled = results["rows"] + ([results["noise_floor"]] if results["noise_floor"] not in results["rows"] else [])
    for r in labelled:
        label = r.get("label", r["method"])
        if r.get("diverged"):
            new_rows[label] = r
            continue
        try:
            fresh, values = score(label)
        except KeyError:
            raise UnlearnkitError(f"{run_dir}: scores.npz has no scores for row {label!r}; run the job again") from None
        per_example[label] = values
        new_rows[label] = _merged(r, fresh)
    out = {**results, "config": config,
           "rows": [new_rows[r.get("label", r["method"])] for r in results["rows"]],
           "noise_floor": new_rows[results["noise_floor"].get("label", results["noise_floor"]["method"])]}
    if not lm:
        out["oracle"] = {"accuracy": ArmScores.read(arrays, "arm/oracles").accuracies(splits)}
    rewrite_results(run_dir, out, per_example, splits, arrays["forget_ids"])
    out = with_seconds(out, run_dir)
    if (Path(run_dir) / "report.html").is_file():  # a report of the old settings would contradict results.json
        write_report(run_dir, out)
    return out


def _merged(old: dict, fresh: dict) -> dict:
    """`old` with `fresh`'s fields, in place (same key order as the run wrote); a metric field `fresh` lacks
    is dropped."""
    out = {}
    for k, v in old.items():
        if k in fresh:
            out[k] = fresh[k]
        elif k not in METRIC_KEYS:
            out[k] = v
    out.update({k: v for k, v in fresh.items() if k not in out})
    return out


def _classifier_scorer(arrays, splits, settings: Settings):
    oracles = ArmScores.read(arrays, "arm/oracles")

    def score(label: str):
        arm = ArmScores.read(arrays, f"row/{label}")
        reference = ArmScores.read(arrays, f"reference/{label}") if f"reference/{label}/margin" in arrays else None
        return row_metrics(arm, reference or oracles, oracles, splits, settings)
    return score


def _lm_scorer(arrays, settings: Settings):
    from .lm.scoring import lm_row, read_item_scores
    oracles = read_item_scores(arrays, "arm/oracles")

    def score(label: str):
        return lm_row(read_item_scores(arrays, f"row/{label}"), oracles, settings)
    return score
