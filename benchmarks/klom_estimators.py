"""Which KLoM estimator to trust at small N: each one's noise floor, bias and power, on real margins.

Reads a finished run's scores.npz (any run at N ≥ 100 models per arm, e.g. the default
`unlearnkit run --out runs/default`): the oracles, the retrain arm (independent oracles, other seeds) and
the originals (the do-nothing row). For N = 8, 16, 32, 64 it draws N models from each arm (without
replacement, `--repeats` times) and reports on the forget points, per estimator:

- floor: KLoM of the retrain arm against the oracles (two samples of one distribution: ideal 0);
- none: KLoM of the originals against the oracles (what a method must remove);
- bias: mean over forget points of (the N-model value − the same estimator at the run's full N) for none;
- separation: none p95 / floor p95 (how far above its noise the do-nothing row reads);
- agreement with the reference: over every row of the run, how well the N-model estimate ranks examples
  (Spearman ρ) and rows (Kendall τ of the p95s) as the histogram does at the full N.

Then, at the full N, where the Gaussian fit fails: forget and validation points whose oracle margins are
bimodal (some oracles classify them correctly, some not) against the rest, comparing each estimator with
the histogram.

    .venv/bin/python benchmarks/klom_estimators.py runs/default --repeats 5
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.stats

from unlearnkit.metrics import klom
from unlearnkit.metrics.estimators import ESTIMATORS
from unlearnkit.report.scores import read_results, read_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--floor-row", default="retrain", help="the row holding independently retrained models")
    args = ap.parse_args()
    z = read_scores(args.run_dir, read_results(args.run_dir)["run_id"])
    forget, val = z["split/forget"], z["split/val"]
    oracles = z["arm/oracles/margin"]
    second = z[f"row/{args.floor_row}/margin"]
    originals = z["arm/originals/margin"]
    full = min(len(oracles), len(second), len(originals))
    rng = np.random.default_rng(0)
    print(f"{args.run_dir}: {full} models per arm, {len(forget)} forget points; {args.repeats} draws per N; "
          "forget points only")
    print(f"{'estimator':>9} {'N':>4} {'floor mean':>11} {'floor p95':>10} {'none mean':>10} {'none p95':>9} "
          f"{'bias':>7} {'separation':>11} {'s/call':>8}")
    reference = {e: klom(originals[:full][:, forget], oracles[:full][:, forget], estimator=e) for e in ESTIMATORS}
    for e in ESTIMATORS:
        for n in [int(v) for v in args.sizes.split(",")] + [full]:
            stats = []
            for _ in range(args.repeats if n < full else 1):
                a, b, c = (rng.choice(len(x), n, replace=False) for x in (oracles, second, originals))
                start = time.perf_counter()
                floor = klom(second[b][:, forget], oracles[a][:, forget], estimator=e)
                seconds = time.perf_counter() - start
                none = klom(originals[c][:, forget], oracles[a][:, forget], estimator=e)
                stats.append((floor.mean(), np.percentile(floor, 95), none.mean(), np.percentile(none, 95),
                              (none - reference[e]).mean(), seconds))
            fm, fp, nm, np_, bias, s = np.mean(stats, 0)
            print(f"{e:>9} {n:>4} {fm:>11.3f} {fp:>10.3f} {nm:>10.3f} {np_:>9.2f} {bias:>+7.2f} "
                  f"{np_ / max(fp, 1e-9):>10.1f}× {s:>8.3f}", flush=True)
    rows = sorted(k.split("/")[1] for k in z if k.startswith("row/") and k.endswith("/margin"))
    arms = {r: z[f"row/{r}/margin"] for r in rows if len(z[f"row/{r}/margin"]) >= full}
    truth = {r: klom(m[:, forget], oracles[:, forget]) for r, m in arms.items()}
    print(f"\nAgreement with the reference histogram at N = {full}, over the rows {', '.join(arms)} (forget points): "
          "Spearman ρ per example (pooled) and Kendall τ of the rows' p95s")
    print(f"{'estimator':>9} " + " ".join(f"{'N=' + str(n) + ' ρ / τ':>15}" for n in [int(v) for v in args.sizes.split(",")]))
    for e in ESTIMATORS:
        cells = []
        for n in [int(v) for v in args.sizes.split(",")]:
            rho, tau = [], []
            for _ in range(args.repeats):
                a = rng.choice(len(oracles), n, replace=False)
                est = {r: klom(m[rng.choice(len(m), n, replace=False)][:, forget], oracles[a][:, forget], estimator=e)
                       for r, m in arms.items()}
                rho.append(scipy.stats.spearmanr(np.concatenate(list(est.values())),
                                                 np.concatenate(list(truth.values()))).statistic)
                tau.append(scipy.stats.kendalltau([np.percentile(v, 95) for v in est.values()],
                                                  [np.percentile(v, 95) for v in truth.values()]).statistic)
            cells.append(f"{np.mean(rho):>7.2f} / {np.mean(tau):>5.2f}")
        print(f"{e:>9} " + " ".join(f"{c:>15}" for c in cells), flush=True)
    points = np.concatenate([forget, val])
    m = oracles[:, points]
    mixed = (m > 0).mean(0)
    bimodal = (mixed > 0.1) & (mixed < 0.9)
    print(f"\nAt N = {full}, forget + validation points: {bimodal.sum()} with bimodal oracle margins "
          f"(10–90% of oracles correct), {(~bimodal).sum()} others. Floor (retrain vs oracles) and none vs oracles:")
    print(f"{'estimator':>9} {'floor: bimodal':>15} {'others':>8} {'none: bimodal':>14} {'others':>8} "
          f"{'corr. with hist (none)':>23}")
    hist_none = klom(originals[:, points], oracles[:, points])
    for e in ESTIMATORS:
        floor = klom(second[:, points], oracles[:, points], estimator=e)
        none = klom(originals[:, points], oracles[:, points], estimator=e)
        corr = [np.corrcoef(none[s], hist_none[s])[0, 1] if s.sum() > 2 else float("nan") for s in (bimodal, ~bimodal)]
        print(f"{e:>9} {floor[bimodal].mean():>15.3f} {floor[~bimodal].mean():>8.3f} {none[bimodal].mean():>14.3f} "
              f"{none[~bimodal].mean():>8.3f} {corr[0]:>11.2f} / {corr[1]:.2f}")


if __name__ == "__main__":
    main()
