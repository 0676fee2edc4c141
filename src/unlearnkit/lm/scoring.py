"""A language-model run's rows, computed from saved per-item scores: TOFU's forget quality and model
utility (Maini et al. 2024), MUSE's PrivLeak (Shi et al. 2024), OpenUnlearning's extraction strength and
exact memorisation, RWKU's probes and fluency, and sequence-level KLoM per split against the oracles.

The LM twin of `unlearnkit.scoring`: pure functions of `ItemScores` (`lm.evaluate` computes those
from models), so a finished run, a trajectory step and `rescore` compute every number the same way.
"""
from __future__ import annotations

import numpy as np

from ..data.probes import PROBE_TYPES
from ..metrics import bootstrap_p95, klom, summarize
from ..metrics import llm as M
from .evaluate import MIA_ATTACKS, ItemScores

KLOM_SPLITS = ("forget", "retain", "val")


def item_score_arrays(scores: dict[str, ItemScores], prefix: str) -> dict[str, np.ndarray]:
    return {k: v for name, s in scores.items() for k, v in s.arrays(f"{prefix}/{name}").items()}


def read_item_scores(arrays, prefix: str) -> dict[str, ItemScores]:
    """The item sets' scores saved under `prefix` (see `report.scores`)."""
    names = {k[len(prefix) + 1:].split("/")[0] for k in arrays if k.startswith(prefix + "/")}
    if not names:
        raise KeyError(prefix)
    return {name: ItemScores.read(arrays, f"{prefix}/{name}") for name in sorted(names)}


def concat_splits(scores: dict[str, ItemScores]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    blocks = [scores[s].seq for s in KLOM_SPLITS]
    bounds = np.cumsum([0] + [b.shape[1] for b in blocks])
    return np.concatenate(blocks, 1), {s: np.arange(a, b) for s, a, b in zip(KLOM_SPLITS, bounds[:-1], bounds[1:])}


def utility_components(s: dict[str, ItemScores], i: int) -> dict[str, float]:
    """TOFU's model-utility components of model i on the retain and world-facts sets (no real-authors
    set exists here, so 6 of TOFU's 9)."""
    r, w = s["retain"], s["world"]
    return {"retain_Q_A_Prob": float(np.exp(r.seq[i]).mean()), "retain_Q_A_ROUGE": float(r.rouge[i].mean()),
            "retain_Truth_Ratio": M.truth_ratio_retain_score(r.truth_ratio[i]),
            "wf_Q_A_Prob_normalised": float(w.prob_options[i].mean()), "wf_Q_A_ROUGE": float(w.rouge[i].mean()),
            "wf_Truth_Ratio": M.truth_ratio_retain_score(w.truth_ratio[i])}


def mia_aucs(s: dict[str, ItemScores]) -> dict[str, float]:
    """AUC of each attack separating the forget items (members) from held-out ones, mean over models (the
    attacks scored on both: scores saved before the Reference and GradNorm attacks existed lack them)."""
    f, v = s["forget"].mia, s["val"].mia
    return {a: float(np.mean([M.mia_auc(f[a][i], v[a][i]) for i in range(len(f[a]))]))
            for a in MIA_ATTACKS if a in f and a in v}


def memorisation(s: ItemScores) -> dict[str, float | None]:
    """OpenUnlearning's extraction strength and exact memorisation of an item set (its forget set in a
    row), mean over items (exact memorisation: over the items where it is defined) and then over models;
    {} for scores saved before they existed."""
    out = {}
    for key in ("extraction_strength", "exact_memorization"):
        v = getattr(s, key)
        if v is not None:
            per_model = [float(np.mean(m[np.isfinite(m)])) for m in v if np.isfinite(m).any()]
            out[key] = float(np.mean(per_model)) if per_model else None
    return out


def probe_metrics(s: dict[str, ItemScores]) -> dict:
    """RWKU-style probe ROUGE-L recall on the forget authors (per type, and `probe_rouge` = the mean of
    the types' means), on their neighbours (`neighbour_rouge`: locality), and RWKU's `fluency` (mean
    weighted n-gram entropy of the generic prompts' generations); each averaged over the N models. {}
    for scores saved before they existed, None where a forget set has no such probes (canaries)."""
    if "fluency" not in s:
        return {}
    by_type = {t: float(s[f"probe_{t}"].rouge.mean()) for t in PROBE_TYPES if f"probe_{t}" in s}
    return {"probe_rouge": float(np.mean(list(by_type.values()))) if by_type else None,
            "probe_rouge_by_type": by_type,
            "neighbour_rouge": float(s["neighbour"].rouge.mean()) if "neighbour" in s else None,
            "fluency": float(s["fluency"].fluency.mean())}


def lm_row(s: dict[str, ItemScores], o: dict[str, ItemScores], config,
           subsets: dict[str, np.ndarray] | None = None) -> tuple[dict, np.ndarray]:
    """One results row: the method's scores `s` judged against the oracles' `o`. `config`: a RunConfig
    or `scoring.Settings` (binning, bootstrap, seed, extra KLoM estimators). `subsets` name parts of the
    forget items (corrective unlearning's identified and unidentified items): KLoM, probability and
    accuracy are also reported on each."""
    u, splits = concat_splits(s)
    subsets = subsets or {}
    splits.update({k: splits["forget"][v] for k, v in subsets.items()})
    ref, _ = concat_splits(o)
    kw = {"reference_binning": config.reference_binning}
    values = klom(u, ref, **kw)
    by_estimator = {e: {k.removeprefix("klom_"): v for k, v in summarize(klom(u, ref, estimator=e), splits).items()}
                    for e in config.estimators if e != "hist"}
    fq = [M.forget_quality(tu, to) for tu, to in zip(s["forget"].truth_ratio, o["forget"].truth_ratio, strict=True)]
    comps = [utility_components(s, i) for i in range(len(u))]
    aucs, oracle_aucs = mia_aucs(s), mia_aucs(o)
    row = {**summarize(values, splits),
           "forget_quality": float(np.median(fq)), "forget_quality_per_model": fq,
           "model_utility": float(np.mean([M.model_utility(c) for c in comps])),
           "utility_components": {k: float(np.mean([c[k] for c in comps])) for k in comps[0]},
           "forget_rouge": float(s["forget"].rouge.mean()), **muse_memorisation(s),
           "forget_truth_ratio": float(np.mean([M.truth_ratio_forget_score(t) for t in s["forget"].truth_ratio])),
           **({"forget_truth_ratio_prob": float(s["forget"].truth_prob.mean())}
              if s["forget"].truth_prob is not None else {}),
           **memorisation(s["forget"]),
           "probability": {k: float(np.exp(s[k].seq).mean()) for k in KLOM_SPLITS}
           | {k: float(np.exp(s["forget"].seq[:, v]).mean()) for k, v in subsets.items()},
           "accuracy": {k: float(s[k].accuracy.mean()) for k in KLOM_SPLITS}
           | {k: float(s["forget"].accuracy[:, v].mean()) for k, v in subsets.items()},
           "mia_auc": aucs, "privleak": M.privleak(aucs["mink"], oracle_aucs["mink"]), **probe_metrics(s)}
    if config.bootstrap:
        row["klom_p95_ci"] = bootstrap_p95(u, ref, splits, reps=config.bootstrap, seed=config.seed, values=values,
                                           **kw)
    if by_estimator:
        row["klom_estimators"] = by_estimator
    return row, values


def muse_memorisation(s: dict[str, ItemScores]) -> dict[str, float]:
    """MUSE's VerbMem on the forget items and KnowMem on the forget and retain items (`metrics.llm.rouge_l_f1`;
    lower on forget is better, retain KnowMem should stay): what scores.npz holds of them (runs written before
    they existed have none)."""
    out = {}
    if s["forget"].verbmem is not None:
        out["forget_verbmem"] = float(np.nanmean(s["forget"].verbmem))
    for split in ("forget", "retain"):
        if s[split].knowmem is not None:
            out[f"{split}_knowmem"] = float(s[split].knowmem.mean())
    return out


def diverged_lm_row(seconds: float, why: str) -> dict:
    nan = {"forget": None, "retain": None, "val": None}
    return {"klom_p95": nan, "klom_mean": dict(nan), "klom_median": dict(nan), "forget_quality": None,
            "model_utility": None, "forget_rouge": None, "forget_truth_ratio_prob": None, "extraction_strength": None,
            "exact_memorization": None, "mia_auc": {a: None for a in MIA_ATTACKS}, "probe_rouge": None,
            "neighbour_rouge": None, "fluency": None, "forget_verbmem": None, "forget_knowmem": None,
            "retain_knowmem": None,
            "probability": dict(nan), "accuracy": dict(nan), "seconds": seconds, "flops": None, "diverged": True, "why": why}
