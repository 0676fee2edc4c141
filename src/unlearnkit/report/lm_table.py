"""The table an LM run prints: TOFU's forget quality and model utility, forget ROUGE, MIA AUCs and
sequence-level KLoM, one row per method, with the noise floor and the oracles' own values; then RWKU-style
probe ROUGE, neighbour ROUGE and fluency."""
from __future__ import annotations

import textwrap

from ..data.probes import PROBE_TYPES
from ..errors import option
from ..metrics import SPLITS
from ..metrics.klom import SETTLED_N
from .table import WIDTH, _name, _num

ATTACKS = ("loss", "zlib", "mink", "minkpp")
PROBE_HEADERS = {"cloze": "cloze", "paraphrase": "para", "alias": "alias", "reverse": "rev", "hint": "hint",
                 "icl": "icl", "mc": "mc"}


def format_lm_table(results: dict) -> str:
    """The LM run's rows in at most 100 columns: TOFU's metrics and the attacks' AUCs, then sequence-level
    KLoM (and the small-N estimator) with the cost, then the RWKU-style probes, then the legend."""
    rows = list(results["rows"])
    floor = results["noise_floor"]
    if floor not in rows:
        rows.append({**floor, "label": f"{floor['method']} (noise floor)"})
    estimators = sorted({e for r in rows for e in (r.get("klom_estimators") or {})})
    est, more = estimators[:1], estimators[1:]  # one beside the histogram's (the width), the others below
    names = {"loss": "AUC loss", "zlib": "zlib", "mink": "mink", "minkpp": "mink++"}
    header = (f"{'method':<21}{'forget Q':>9}{'utility':>8}{'f-ROUGE':>8}{'p(forget)':>10}"
              + "".join(f"{names[a]:>{9 if a == 'loss' else 8}}" for a in ATTACKS) + f"{'×retrain':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = (r.get("cost_vs_retrain") or {}).get("flops")
        lines.append(f"{_name(r):<21.21}{_num(r['forget_quality'], '{:.3g}'):>9}{_num(r['model_utility'], '{:.3f}'):>8}"
                     f"{_num(r['forget_rouge'], '{:.3f}'):>8}{_num(r['probability']['forget'], '{:.3f}'):>10}"
                     + "".join(f"{_num(r['mia_auc'][a], '{:.3f}'):>{9 if a == 'loss' else 8}}" for a in ATTACKS)
                     + f"{_num(ratio, '{:.3f}'):>9}")
    o = results["oracle"]
    lines.append(f"{'oracles (reference)':<21}{'':>9}{o['model_utility']:>8.3f}{o['forget_rouge']:>8.3f}"
                 f"{o['probability']['forget']:>10.3f}" + "".join(f"{o['mia_auc'][a]:>{9 if a == 'loss' else 8}.3f}" for a in ATTACKS))
    header = (f"{'method':<21}" + "".join(f"{('KLoM95 ' if s == 'forget' else '') + s:>18}" for s in SPLITS)
              + "".join(f"{e + '95 forget':>15}" for e in est) + f"{'seconds':>9}")
    lines += ["", header, "-" * len(header)]
    for r in rows:
        cells = ""
        for s in SPLITS:
            ci = (r.get("klom_p95_ci") or {}).get(s)
            cells += f"{_num(r['klom_p95'][s]) + (f' [{ci[0]:.1f},{ci[1]:.1f}]' if ci else ''):>18}"
        cells += "".join(f"{_num(((r.get('klom_estimators') or {}).get(e) or {}).get('p95', {}).get('forget')):>15}"
                         for e in est)
        lines.append(f"{_name(r):<21.21}{cells}{_num(r.get('seconds'), '{:.1f}'):>9}")
    for e in more:
        header = f"{'method':<21}" + "".join(f"{e + '95 ' + s:>18}" for s in SPLITS)
        lines += ["", header, "-" * len(header)]
        lines += [f"{_name(r):<21.21}" + "".join(
            f"{_num(((r.get('klom_estimators') or {}).get(e) or {}).get('p95', {}).get(s)):>18}" for s in SPLITS)
            for r in rows]
    lines += probe_lines(rows, o)
    lines += step_lines(results["rows"])
    lines.append("")
    lines += [textwrap.fill(line, WIDTH) for line in lm_legend(results)]
    return "\n".join(lines)


def probe_lines(rows: list[dict], oracle: dict) -> list[str]:
    """RWKU-style probes, one line per row and the oracles': probe ROUGE (mean over types), neighbour ROUGE,
    fluency, then each type's probe ROUGE ([] for results from before the probes)."""
    if not any("probe_rouge" in r for r in rows):
        return []
    header = (f"{'method':<21}{'probe':>7}{'neighb':>7}{'fluency':>8}"
              + "".join(f"{PROBE_HEADERS[t]:>7}" for t in PROBE_TYPES))
    lines = ["", header, "-" * len(header)]
    for name, r in [(_name(r), r) for r in rows] + [("oracles (reference)", oracle)]:
        by_type = r.get("probe_rouge_by_type") or {}
        lines.append(f"{name:<21.21}{_num(r.get('probe_rouge'), '{:.3f}'):>7}"
                     f"{_num(r.get('neighbour_rouge'), '{:.3f}'):>7}{_num(r.get('fluency'), '{:.2f}'):>8}"
                     + "".join(f"{_num(by_type.get(t), '{:.3f}'):>7}" for t in PROBE_TYPES))
    return lines


def step_lines(rows: list[dict]) -> list[str]:
    """Per method evaluated during unlearning (--trajectories): the step its rule selects against the last."""
    out = []
    for r in rows:
        t = r.get("trajectory")
        if not t:
            continue
        b = t["best_step"]
        head = f"{_name(r)}: evaluated at {len(t['steps'])} steps (0–{t['steps'][-1]}); {b['rule']}"
        if b["step"] is None:
            out.append(textwrap.fill(f"{head}: no step meets it", WIDTH))
            continue
        parts = [f"{name} {_num(b[key], fmt)} (last {_num(t[key][-1], fmt)})" for name, key, fmt in (
            ("forget Q", "forget_quality", "{:.3g}"), ("utility", "model_utility", "{:.3f}"),
            ("KLoM95 forget", "klom_forget", "{:.2f}"))]
        out.append(textwrap.fill(f"{head} selects step {b['step']}: " + ", ".join(parts), WIDTH,
                                 subsequent_indent="  "))
    return [""] + out if out else []


def lm_legend(results: dict) -> list[str]:
    """What the LM table's numbers mean, one sentence group per line (the report prints them too)."""
    rows = results["rows"] + [results["noise_floor"]]
    est = sorted({e for r in rows for e in (r.get("klom_estimators") or {})})
    n = results["config"]["models"]
    legend = [
        "forget Q = TOFU forget quality: KS-test p-value between the truth ratios of unlearned model i and oracle i "
        "on the forget set, median over the N pairs (higher is better; < 0.05: told apart).",
        "utility = TOFU model utility (harmonic mean of probability, ROUGE-L and truth ratio on retain items and world "
        "facts); f-ROUGE = ROUGE-L recall of greedy answers to forget questions; p(forget) = mean answer probability.",
        "AUC = membership inference, forget vs held-out items (0.5 = no signal; compare with the oracles' row); "
        "KLoM95 = p95 of sequence-level KLoM (mean answer log-prob)"
        + (" [95% CI]" if results["config"].get("bootstrap") else "")
        + (f"; {'/'.join(est)}95 = the same from a low-variance estimator (usable at small N)" if est else "")
        + f"; N = {n} models per arm.",
        "Conventions are OpenUnlearning's (truth ratio P_pert/(P_para + 1e-10); Min-K%, Min-K%++, GradNorm, "
        "extraction strength and exact memorisation without the EOS prediction, a one-token answer scoring 0 "
        "(exact memorisation: left out); zlib of the decoded scored tokens), except: forget Q is a median and "
        "each AUC a mean over N model pairs "
        "(OpenUnlearning: one model); utility has 6 of TOFU's 9 terms (no real-authors set); ROUGE-L is not "
        "stemmed; the Reference attack's reference models are the retrain arm (OpenUnlearning: the retain model "
        "that also judges forget quality). results.json also holds the Reference and GradNorm AUCs, extraction "
        "strength, exact memorisation and the prob_mean truth ratio."]
    if any("probe_rouge" in r for r in rows):
        legend.append(
            "probe = ROUGE-L recall of greedy generations to RWKU-style probes of the forget authors' facts against "
            "the fact (lower = more forgotten), the mean of the types: cloze (the fact's sentence to complete), "
            "para(phrased question), alias (the name replaced), rev(erse query: the name from a book or birth "
            "date), hint (a sentence of background first), icl (an answered question about another author "
            "first), mc (three options); neighb = the same on retained authors sharing a fact's value with a "
            "forget author (locality: higher = kept); fluency = RWKU's weighted bi-/tri-gram entropy (bits) of "
            "generations for 16 generic questions (tofu-synth has no AlpacaEval; compare with the oracles'). "
            "Probes: a fixed sample, at most 8 per type and 16 neighbour probes.")
    if n < SETTLED_N:
        legend.append(f"Warning: with N = {n}, per-example KLoM sits near its cap for every method (histograms of "
                      f"{n} values); read it only with {option('models', SETTLED_N)} or more.")
    return legend
