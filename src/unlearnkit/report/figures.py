"""The figures of a run (matplotlib, no display needed): what a reader of a paper looks at.

- `klom_distributions`: per split, the ECDF of per-example KLoM for each method, against the noise floor's
  (independently retrained models): a method is as good as retraining on the points where its curve lies
  on or left of the floor's; the p95 (the table's headline) is where a curve crosses 0.95.
- `cost_frontier`: KLoM p95 on the forget set against cost (FLOPs relative to retraining), with the
  frontier of methods that no other method beats on both.
- `accuracy_vs_oracles`: each method's accuracy per split against the oracles'.
- `lm_tradeoff`: for language-model runs, TOFU's forget quality against model utility.

Every function takes the results dict (and per-example KLoM where it needs it) and returns a Figure.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: never a window, never a display server
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..metrics import SPLITS

FLOOR_STYLE = {"color": "0.35", "lw": 3.0, "alpha": 0.45}


def _label(r: dict) -> str:
    return r.get("label", r["method"])


def _rows(results: dict) -> tuple[list[dict], dict]:
    floor = results["noise_floor"]
    return [r for r in results["rows"] if not r["diverged"] and r is not floor and _label(r) != _label(floor)], floor


def klom_distributions(results: dict, per_example: dict[str, np.ndarray], splits: dict[str, np.ndarray]) -> Figure:
    rows, floor = _rows(results)
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.2 * len(SPLITS), 3.6), sharey=True, layout="constrained")
    for ax, split in zip(axes, SPLITS):
        idx = splits[split]
        if _label(floor) in per_example:
            v = np.sort(per_example[_label(floor)][idx])
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label="noise floor", **FLOOR_STYLE)
        for r in rows:
            if _label(r) in per_example:
                v = np.sort(per_example[_label(r)][idx])
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", lw=1.3, label=_label(r))
        ax.axhline(0.95, color="0.6", lw=0.8, ls=":")
        ax.set(title=f"{split} ({len(idx)} points)", xlabel="KLoM (nats)", xlim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of points ≤ x")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Per-example KLoM, N = {results['config']['models']} models per arm (left is better)")
    return fig


def cost_frontier(results: dict) -> Figure:
    rows, floor = _rows(results)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    points = []
    for r in rows:
        cost = (r.get("cost_vs_retrain") or {}).get("flops")
        k = r["klom_p95"]["forget"]
        if cost is None or k is None:
            continue
        cost = max(cost, 1e-4)  # doing nothing costs nothing: drawn at the axis' left edge
        points.append((cost, k, _label(r)))
        ax.scatter(cost, k, s=30, zorder=3)
        ax.annotate(_label(r), (cost, k), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front, best = [], np.inf
    for cost, k, _ in sorted(points):
        if k < best:
            front.append((cost, k))
            best = k
    if len(front) > 1:
        ax.plot(*zip(*front), color="C3", lw=1, ls="--", label="frontier")
    nf = floor["klom_p95"]["forget"]
    if nf is not None:
        ax.axhline(nf, label="noise floor (retraining)", **FLOOR_STYLE)
    ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="FLOPs relative to retraining", ylabel="KLoM p95, forget set (nats)",
           title="Unlearning quality against cost (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def accuracy_vs_oracles(results: dict) -> Figure:
    rows, floor = _rows(results)
    rows = rows + [floor]
    oracle = results["oracle"]["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.8), layout="constrained")
    width = 0.8 / len(SPLITS)
    x = np.arange(len(rows))
    for j, split in enumerate(SPLITS):
        acc = [r["accuracy"][split] or 0.0 for r in rows]
        ax.bar(x + (j - 1) * width, acc, width, label=split, color=f"C{j}")
        ax.hlines(oracle[split], x.min() - 0.5, x.max() + 0.5, colors=f"C{j}", linestyles="--", lw=1)
    ax.set_xticks(x, [_label(r) for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="Accuracy per split (dashed: the oracles')")
    ax.legend(fontsize=8, ncols=3, loc="lower left")
    return fig


def lm_tradeoff(results: dict) -> Figure:
    rows, floor = _rows(results)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    for r in rows + [floor]:
        if r.get("forget_quality") is None:
            continue
        is_floor = r is floor
        ax.scatter(r["model_utility"], max(r["forget_quality"], 1e-12), s=60 if is_floor else 30,
                   color="0.35" if is_floor else None, zorder=3)
        ax.annotate(_label(r) + (" (noise floor)" if is_floor else ""), (r["model_utility"], max(r["forget_quality"],
                    1e-12)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.05, color="0.6", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="model utility", ylabel="forget quality (KS p-value)",
           title="Forget quality against utility (upper right is better)")
    ax.grid(alpha=0.3, which="both")
    return fig


def run_figures(results: dict, per_example: dict[str, np.ndarray], splits: dict[str, np.ndarray],
                trajectory_arrays: dict[str, np.ndarray] | None = None) -> dict[str, Figure]:
    """{name: figure} for a run: the classifier's three (and the trajectories, when the run recorded
    them), or the LM trade-off and KLoM distributions."""
    if "lm_task" in results["config"]:
        out = {"tradeoff": lm_tradeoff(results), "klom": klom_distributions(results, per_example, splits)}
        if any(r.get("trajectory") for r in results["rows"]):
            out["steps"] = lm_steps(results)
        return out
    out = {"klom": klom_distributions(results, per_example, splits), "cost": cost_frontier(results),
           "accuracy": accuracy_vs_oracles(results)}
    if trajectory_arrays and any(r.get("trajectory") for r in results["rows"]):
        out["trajectories"] = trajectories(results, trajectory_arrays)
    return out


def trajectories(results: dict, arrays: dict[str, np.ndarray]) -> Figure:
    """One panel per method: each line one forget point's KLoM over unlearning steps; red, the points that
    end worse than their best step by more than the noise floor's p95 (the missing-targets picture)."""
    rows = [r for r in results["rows"] if r.get("trajectory")]
    tol = results["noise_floor"]["klom_p95"]["forget"] or 0.0
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, r in zip(axes[0], rows):
        steps = arrays[f"trajectory/{_label(r)}/steps"]
        k = arrays[f"trajectory/{_label(r)}/klom"][:, :results["forget_set"]["size"]]
        worse = k[-1] > k.min(0) + tol
        for j in np.argsort(worse):  # red lines drawn last, on top
            ax.plot(steps, k[:, j], color="C3" if worse[j] else "0.55", lw=0.9 if worse[j] else 0.5,
                    alpha=0.9 if worse[j] else 0.35)
        ax.plot(steps, k.mean(1), color="k", lw=2, label="mean")
        ax.axhline(tol, label="noise floor p95", **FLOOR_STYLE)
        ax.set(title=f"{_label(r)}: {worse.mean():.0%} end worse than their best", xlabel="unlearning step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("KLoM, forget points (nats)")
    axes[0][-1].legend(fontsize=8)
    return fig


def lm_steps(results: dict) -> Figure:
    """LM methods evaluated during unlearning: forget quality, model utility and forget-set KLoM p95 over
    the steps, one line per method, its rule's selected step circled (the last step is what the row reports)."""
    rows = [r for r in results["rows"] if r.get("trajectory")]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8), layout="constrained")
    for j, r in enumerate(rows):
        t, b = r["trajectory"], r["trajectory"]["best_step"]
        for ax, key in zip(axes, ("forget_quality", "model_utility", "klom_forget")):
            y = [np.nan if v is None else (max(v, 1e-12) if key == "forget_quality" else v) for v in t[key]]
            ax.plot(t["steps"], y, "o-", ms=3, color=f"C{j}", label=_label(r))
            if b["step"] is not None:
                ax.plot(b["step"], y[b["index"]], "o", ms=11, mfc="none", mec=f"C{j}", mew=1.6)
    floor = results["noise_floor"]
    axes[0].axhline(0.05, color="0.6", lw=0.8, ls=":")
    if floor["klom_p95"]["forget"] is not None:
        axes[2].axhline(floor["klom_p95"]["forget"], label="noise floor p95", **FLOOR_STYLE)
    axes[0].set(yscale="log", ylabel="forget quality (KS p-value)", title="Forget quality (higher: closer to oracles)")
    axes[1].set(ylabel="model utility", title="Model utility")
    axes[2].set(ylabel="seq-KLoM p95, forget", title="Forget-set KLoM p95 (lower is better)")
    for ax in axes:
        ax.set(xlabel="unlearning step")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Evaluated during unlearning; circled: the step {rows[0]['trajectory']['best_step']['rule']} "
                 "selects" if rows else "", fontsize=9)
    return fig


def corrective_curves(results: dict) -> Figure:
    """`unlearnkit corrective`: each metric against the identified fraction f, one line per method; the
    noise floor (an independent arm of corrected oracles) as a band where the metric has one."""
    kind = results["manipulation"]["kind"]
    if kind == "forget":  # a language-model forget set (`lm_corrective`)
        panels = [("forget quality (KS p, log)", ("forget_quality", None)), ("model utility", ("model_utility", None)),
                  ("answer probability, unidentified", ("probability", "unidentified")),
                  ("KLoM p95, unidentified M ∖ S_F", ("klom_p95", "unidentified")),
                  ("KLoM p95, identified S_F", ("klom_p95", "identified"))]
    else:
        panels = [("val acc", ("accuracy", "val")),
                  *{"poison": [("attack success rate", ("accuracy", "attack"))],
                    "swap": [("swap rate", ("accuracy", "swapped"))]}.get(kind, []),
                  ("KLoM p95, unidentified M ∖ S_F", ("klom_p95", "unidentified")),
                  ("KLoM p95, identified S_F", ("klom_p95", "forget"))]
    if any("relearn" in r for b in results["fractions"] for r in b["rows"]):
        panels.append(("relearning: steps to ½ (higher: removed)", ("relearn", "forget")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), layout="constrained", squeeze=False)
    blocks = results["fractions"]
    fs = [b["fraction"] for b in blocks]
    labels = [r["label"] for r in blocks[0]["rows"]]
    for ax, (title, (group, split)) in zip(axes[0], panels):
        for j, label in enumerate(labels):
            ys = [next((_panel_value(r, group, split) for r in b["rows"] if r["label"] == label), None)
                  for b in blocks]
            ax.plot(fs, [np.nan if y is None else y for y in ys], "o-" if j < 10 else "s--", ms=3,
                    color=plt.get_cmap("tab20")(j % 20), label=label)  # a study can have more than 10 methods
        floor = [_panel_value(b["noise_floor"], group, split) for b in blocks]
        if any(v is not None for v in floor):
            ax.plot(fs, [np.nan if v is None else v for v in floor], label="noise floor (oracle twin)", **FLOOR_STYLE)
        ax.set(title=title, xlabel="identified fraction f", yscale="log" if "log" in title else "linear")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncols=2)
    fig.suptitle(f"{results['manipulation']['spec']}: what each method removes as more of it is identified",
                 fontsize=9)
    return fig


def _panel_value(row: dict, group: str, split: str | None):
    if split is None:  # a scalar field of the row
        return row.get(group)
    if group == "relearn":  # how many steps the relearning attack took to bring half of it back
        return ((row.get("relearn") or {}).get(split) or {}).get("steps_to_half")
    return (row.get(group) or {}).get(split)


def id_vs_ood_curves(results: dict) -> Figure:
    """`llm ood`: forget quality, model utility and the challenge's forget score F (dashed: its permutation
    null) over unlearning steps, in- and out-of-distribution; then each forget item's steps to reach the
    oracles against its memorisation."""
    kinds = ("in-distribution", "out-of-distribution")
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
    for j, kind in enumerate(kinds):
        r = results[kind]
        curve = [p for p in r["curve"] if not p["diverged"]]
        steps = [0] + [p["steps"] for p in curve]
        for ax, key in zip(axes[:2], ("forget_quality", "model_utility")):
            ax.plot([p["steps"] for p in curve], [p[key] for p in curve], "o-", color=f"C{j}", label=kind)
        f = [r["original"].get("epsilon_forget_score")] + [p.get("epsilon_forget_score") for p in curve]
        null = [r["original"].get("epsilon_forget_score_null")] + [p.get("epsilon_forget_score_null") for p in curve]
        if all(v is not None for v in f):
            axes[2].plot(steps, f, "o-", color=f"C{j}", label=kind)
            axes[2].plot(steps, null, "--", color=f"C{j}", lw=1)
        ex = r.get("examples") or {}
        need = [np.nan if s is None else s for s in ex.get("steps_to_oracle", [])]
        if need:
            axes[3].scatter(ex["memorisation"], need, color=f"C{j}", s=18, label=kind)
    axes[0].axhline(0.05, color="0.6", lw=0.8, ls=":")
    axes[0].set(yscale="log", title="forget quality (KS p-value)", xlabel="unlearning steps")
    axes[1].set(title="model utility", xlabel="unlearning steps")
    axes[2].set(title="challenge forget score F (dashed: null)", xlabel="unlearning steps", ylim=(0, 1))
    axes[3].set(title="steps to reach the oracles", xlabel="memorisation (nats/token)", ylabel="steps")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['config']['method']}: in- vs out-of-distribution forget sets of {results['config']['size']} items")
    return fig


def study_bars(summary: dict) -> Figure:
    """A study: each cell's KLoM p95 on the forget set per method (bars), the cell's noise floor (grey tick)."""
    cells = summary["cells"]
    labels = list(dict.fromkeys(r["label"] for c in cells for r in c["rows"]))
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(cells) * max(1, len(labels)), 4.0), layout="constrained")
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        values = [next((r["klom_p95"]["forget"] for r in c["rows"] if r["label"] == label), None) for c in cells]
        ax.bar(np.arange(len(cells)) + (j - (len(labels) - 1) / 2) * width,
               [np.nan if v is None else v for v in values], width, label=label)
    for i, c in enumerate(cells):
        nf = c["noise_floor"]["klom_p95"]["forget"]
        if nf is not None:
            ax.hlines(nf, i - 0.45, i + 0.45, label="noise floor" if i == 0 else None, **FLOOR_STYLE)
    ax.set_xticks(np.arange(len(cells)), [c["name"] for c in cells], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="KLoM p95, forget set (nats)", title="KLoM p95 on the forget set, per cell and method")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(alpha=0.3, axis="y")
    return fig
