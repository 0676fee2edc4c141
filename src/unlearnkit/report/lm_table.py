"""The table an LM run prints: TOFU's forget quality and model utility, forget ROUGE, MIA AUCs and
sequence-level KLoM, one row per method, with the noise floor and the oracles' own values."""
from __future__ import annotations

from ..metrics.klom import SETTLED_N
from .table import _num

ATTACKS = ("loss", "zlib", "mink", "minkpp")


def format_lm_table(results: dict) -> str:
    rows = list(results["rows"])
    floor = results["noise_floor"]
    if floor not in rows:
        rows.append({**floor, "label": f"{floor['method']} (noise floor)"})
    est = sorted({e for r in rows for e in (r.get("klom_estimators") or {})})
    header = (f"{'method':<18}{'forget Q':>10}{'utility':>9}{'f-ROUGE':>9}{'p(forget)':>10}"
              + "".join(f"{'AUC ' + a:>12}" for a in ATTACKS)
              + "".join(f"{'KLoM95 ' + s:>14}" for s in ("forget", "retain", "val"))
              + "".join(f"{e + '95 forget':>14}" for e in est)
              + f"{'seconds':>9}{'GFLOP':>9}{'×retrain':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r.get("label", r["method"]) + (" DIVERGED" if r["diverged"] else "")
        ratio = (r.get("cost_vs_retrain") or {}).get("flops")
        flops = r.get("flops")
        lines.append(f"{name:<18}{_num(r['forget_quality'], '{:.3g}'):>10}{_num(r['model_utility'], '{:.3f}'):>9}"
                     f"{_num(r['forget_rouge'], '{:.3f}'):>9}{_num(r['probability']['forget'], '{:.3f}'):>10}"
                     + "".join(f"{_num(r['mia_auc'][a], '{:.3f}'):>12}" for a in ATTACKS)
                     + "".join(f"{_num(r['klom_p95'][s]):>14}" for s in ("forget", "retain", "val"))
                     + "".join(f"{_num(((r.get('klom_estimators') or {}).get(e) or {}).get('p95', {}).get('forget')):>14}"
                               for e in est)
                     + f"{_num(r.get('seconds'), '{:.1f}'):>9}{_num(flops and flops / 1e9, '{:.0f}'):>9}{_num(ratio, '{:.3f}'):>9}")
    o = results["oracle"]
    lines.append(f"{'oracles (reference)':<18}{'':>10}{o['model_utility']:>9.3f}{o['forget_rouge']:>9.3f}"
                 f"{o['probability']['forget']:>10.3f}" + "".join(f"{o['mia_auc'][a]:>12.3f}" for a in ATTACKS))
    n = results["config"]["models"]
    lines += ["",
              "forget Q = TOFU forget quality: KS-test p-value between the truth ratios of unlearned model i and "
              "oracle i on the forget set, median over the N pairs (higher is better; < 0.05: told apart).",
              "utility = TOFU model utility (harmonic mean of probability, ROUGE-L and truth ratio on retain items "
              "and world facts); f-ROUGE = ROUGE-L recall of greedy answers to forget questions;",
              "AUC = membership inference, forget vs held-out items (0.5 = no signal; compare with the oracles' row); "
              "KLoM95 = p95 of sequence-level KLoM (mean answer log-prob); "
              + (f"{'/'.join(est)}95 = the same from a low-variance estimator (usable at small N); " if est else "")
              + f"N = {n} models per arm."]
    if n < SETTLED_N:
        lines.append(f"Warning: with N = {n}, per-example KLoM sits near its cap for every method (histograms of "
                     f"{n} values); read it only with --models {SETTLED_N} or more.")
    return "\n".join(lines)
