"""Does bf16 training change the science? The default run in float32 and in bfloat16 (mixed precision),
same seeds: the do-nothing row and the noise-floor (retrain) row, with their bootstrap intervals, side by
side, and whether each pair of intervals overlaps.

    .venv/bin/python benchmarks/precision_agreement.py --models 64
"""
from __future__ import annotations

import argparse
import tempfile

from unlearnkit.experiment import RunConfig, run

SPLITS = ("forget", "retain", "val")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--task", default="fashion-mnist-mlp")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: run(RunConfig(task=args.task, models=args.models, methods=("none", "retrain"), precision=p,
                                    cache_dir=args.cache_dir or tmp))
                   for p in ("fp32", "bf16")}
    print(f"{args.task}, N = {args.models}, random:100: KLoM p95 [95% bootstrap interval over models]")
    print(f"{'row':<9} {'split':<7} {'fp32':>22} {'bf16':>22}  overlap")
    agree = True
    for label in ("none", "retrain"):
        rows = {p: next(r for r in res["rows"] if r["method"] == label) for p, res in results.items()}
        for split in SPLITS:
            cells, intervals = [], []
            for p in ("fp32", "bf16"):
                lo, hi = rows[p]["klom_p95_ci"][split]
                intervals.append((lo, hi))
                cells.append(f"{rows[p]['klom_p95'][split]:.2f} [{lo:.2f},{hi:.2f}]")
            overlap = intervals[0][0] <= intervals[1][1] and intervals[1][0] <= intervals[0][1]
            agree &= overlap
            print(f"{label:<9} {split:<7} {cells[0]:>22} {cells[1]:>22}  {'yes' if overlap else 'NO'}")
        print(f"{label:<9} {'acc val':<7} {rows['fp32']['accuracy']['val']:>22.4f} {rows['bf16']['accuracy']['val']:>22.4f}")
    print("bf16 agrees with fp32 within the intervals" if agree else "bf16 and fp32 DISAGREE somewhere")


if __name__ == "__main__":
    main()
