"""The table a run prints: one row per method, the noise floor and the do-nothing row framing it."""
from __future__ import annotations

import textwrap

from ..errors import option
from ..metrics import SPLITS
from ..metrics.klom import SETTLED_N


def _num(v, fmt="{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


MIA_FEATURE = "confidence"


WIDTH = 100  # the terminal table fits 100 columns; results.json and report.html carry every field


def _evaluation_block(rows: list[dict]) -> list[str]:
    """The small-N KLoM estimators and the privacy metrics, one line per row (where a run computed them): the
    first estimator beside the privacy metrics, each other one in a block of its own (the width allows one)."""
    estimators = sorted({e for r in rows for e in (r.get("klom_estimators") or {})})
    lines = _estimator_block(rows, estimators[:1], first=True)
    for e in estimators[1:]:
        lines += _estimator_block(rows, [e], first=False)
    return lines


def _estimator_block(rows: list[dict], est: list[str], first: bool) -> list[str]:
    privacy = first and any(r.get(k) for r in rows for k in ("ulira", "neurips23", "mia"))
    if not est and not privacy:
        return []
    cols = [(e, stat, s) for e in est for stat, s in [("p95", "forget")] + [("mean", s) for s in SPLITS]]
    names = {("p95", "forget"): "p95 forget", ("mean", "forget"): "mean f", ("mean", "retain"): "mean r",
             ("mean", "val"): "mean v"}
    header = (f"{'method':<22}" + "".join(f"{(e + ' ' if j == 0 else '') + names[stat, s]:>{17 if j == 0 else 7}}"
                                          for j, (e, stat, s) in enumerate(cols))
              + (f"{'U-LiRA':>7}{'NeurIPS F':>10}{'score':>7}{'MIA':>7}" if privacy else "")
              + (f"{'seconds':>9}" if first else ""))
    lines = ["", header, "-" * len(header)]
    for r in rows:
        by = r.get("klom_estimators") or {}
        cells = "".join(f"{_num(by.get(e, {}).get(stat, {}).get(s)):>{17 if j == 0 else 7}}"
                        for j, (e, stat, s) in enumerate(cols))
        if privacy:
            cells += (f"{_num((r.get('ulira') or {}).get('accuracy'), '{:.3f}'):>7}"
                      f"{_num((r.get('neurips23') or {}).get('forget_score'), '{:.3f}'):>10}"
                      f"{_num((r.get('neurips23') or {}).get('score'), '{:.3f}'):>7}"
                      f"{_num((r.get('mia') or {}).get(MIA_FEATURE), '{:.3f}'):>7}")
        lines.append(f"{_name(r):<22.22}{cells}" + (f"{_num(r.get('seconds'), '{:.1f}'):>9}" if first else ""))
    return lines


def _ranking_block(rows: list[dict]) -> list[str]:
    """A recommendation run's Recall@K and NDCG@K on held-out and forgotten interactions, one line per row."""
    k = next((r["ranking"]["k"] for r in rows if r.get("ranking")), None)
    if k is None:
        return []
    header = f"{'method':<22}" + "".join(f"{f'{m}@{k} {s}':>18}" for m in ("recall", "ndcg") for s in ("val", "forget"))
    lines = ["", header, "-" * len(header)]
    for r in rows:
        g = r.get("ranking") or {}
        lines.append(f"{_name(r):<22.22}" + "".join(f"{_num((g.get(m) or {}).get(s), '{:.3f}'):>18}"
                                                    for m in ("recall", "ndcg") for s in ("val", "forget")))
    return lines


def _klom_cell(p95: float | None, ci) -> str:
    """A KLoM p95 and its interval in at most 16 characters (a space always separates the next cell): two
    decimals, one from 10 up (the cap is ≈ 11.5) where the interval would not fit beside two."""
    if not ci or p95 is None:
        return _num(p95)
    interval = f" [{ci[0]:.1f},{ci[1]:.1f}]"
    point = _num(p95)
    return (point if len(point + interval) <= 16 else f"{p95:.1f}") + interval


def _name(r: dict) -> str:
    name = r.get("label", r["method"]) + (" DIVERGED" if r["diverged"] else "")
    if r.get("reference", "oracles") != "oracles":
        name += f" (vs {r['reference']})"
    return name


def format_table(results: dict) -> str:
    """The run's rows in at most 100 columns: KLoM p95 per split [95% CI], accuracies and cost, then the
    small-N estimator and the privacy metrics, then the legend."""
    rows = list(results["rows"])
    floor = results["noise_floor"]
    if floor not in rows:
        rows.append({**floor, "label": f"{floor['method']} (noise floor)"})
    header = (f"{'method':<22}" + "".join(f"{('KLoM p95 ' if s == 'forget' else '') + s:>17}" for s in SPLITS)
              + "".join(f"{'acc ' + s[0]:>6}" for s in SPLITS) + f"{'×retrain':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = []
        for s in SPLITS:
            ci = r.get("klom_p95_ci", {}).get(s)
            cells.append(" " + f"{_klom_cell(r['klom_p95'][s], ci):>16}")
        accs = "".join(f"{_num(r['accuracy'][s], '{:.3f}'):>6}" for s in SPLITS)
        ratio = (r.get("cost_vs_retrain") or {}).get("flops")
        lines.append(f"{_name(r):<22.22}" + "".join(cells) + accs + f"{_num(ratio, '{:.3f}'):>9}")
    o = results["oracle"]["accuracy"]
    lines.append(f"{'oracles (reference)':<22}" + " " * 17 * len(SPLITS) + "".join(f"{o[s]:>6.3f}" for s in SPLITS))
    lines += _evaluation_block(rows)
    lines += _ranking_block(rows)
    lines.append("")
    lines += [textwrap.fill(line, WIDTH) for line in legend(results, rows)]
    return "\n".join(lines)


def legend(results: dict, rows: list[dict] | None = None) -> list[str]:
    """What the table's numbers mean, one sentence group per line (the report prints them too)."""
    rows = rows if rows is not None else results["rows"] + [results["noise_floor"]]
    floor = results["noise_floor"]
    n = results["config"]["models"]
    nf = floor["klom_p95"]["forget"]
    ci = "[95% CI over models]; " if results["config"].get("bootstrap") else ""
    lines = [f"KLoM = KL(unlearned ‖ oracle) of margins per example, in nats (lower is better; cap ≈ 11.5); {ci}"
             f"acc f/r/v = accuracy on forget/retain/val; ×retrain = FLOPs relative to retraining; N = {n} models "
             "per arm."]
    if nf is not None:
        lines.append(f"The noise floor (independently retrained models) reads forget p95 {nf:.2f}: no method "
                     "can be told apart from retraining below it.")
    est = [e for e in results["config"].get("estimators", []) if e != "hist"]
    if est:
        lines.append(f"{'/'.join(est)}: KLoM read by a low-variance estimator (`unlearnkit list`), for small N; the "
                     "histogram above is the reference that compares with published numbers. Its p95 reaches the cap "
                     "for any method that moves a few points far: its means rank methods.")
    if any(r.get("ulira") or r.get("neurips23") or r.get("mia") for r in rows):
        lines.append("U-LiRA: accuracy of a per-example likelihood-ratio attack telling the method's models from "
                     "oracles on forget points (0.5 ideal). NeurIPS F: the challenge's forget score, score: "
                     "F·(RA_u/RA_r)·(TA_u/TA_r) (higher is better; even exact retraining reads well below 1 at "
                     "finite N: compare with the noise-floor row). MIA: SVC MIA-efficacy on the forget set "
                     f"({MIA_FEATURE} feature; the noise-floor row's value is ideal).")
    if any(r.get("ranking") for r in rows):
        lines.append("Recommendation: an example is an interaction row (user, item, its sampled negatives); its margin "
                     "is the score of the item minus the logsumexp of the negatives' scores, acc = the item scored above "
                     "all its negatives. recall/ndcg@K val: held-out interactions ranked among every item the user "
                     "has no training interaction with; forget: the forgotten interactions ranked among the items the "
                     "user has no retained or held-out interaction with (the retrain row is what forgetting reaches).")
    for r in rows:
        t = r.get("trajectory")
        if t:
            beyond = t.get("forget_worse_after_best_beyond_floor")
            lines.append(f"Trajectory of {r.get('label', r['method'])} ({len(t['steps'])} points over {t['steps'][-1]} steps): "
                         f"{t['forget_worse_after_best']:.0%} of forget points end worse than at their best step"
                         + (f" ({beyond:.0%} by more than the noise floor's p95)" if beyond is not None else "")
                         + f"; mean KLoM at the best single stopping step {t['forget_mean_at_best_single_step']:.2f} "
                         f"vs {t['forget_mean_at_own_best_step']:.2f} with each point stopped at its own best "
                         f"(gap {t['forget_gap']:.2f}), {t['forget_mean_at_last_step']:.2f} at the last step.")
    return lines + small_n_warning(n)


def small_n_warning(n: int, width: int | None = None) -> list[str]:
    """The line every classifier table ends with when N is too small for KLoM (a run's, a study's, ...),
    wrapped to `width` if given."""
    if n >= SETTLED_N:
        return []
    line = (f"Warning: with N = {n} the noise floor is high (KLoM settles near N ≈ {SETTLED_N}; the reference "
            f"uses 100). Use {option('models', 100)} for numbers to publish.")
    return textwrap.wrap(line, width) if width else [line]
