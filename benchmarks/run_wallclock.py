"""Wall-clock time of the whole default run (`unlearnkit run`: fashion-mnist-mlp, random:100, the five
default methods) from an empty cache, at several N: what a user waits for, arms and methods included.

    .venv/bin/python benchmarks/run_wallclock.py --models 16,64,100

Each N runs in a fresh temporary cache (nothing reused between them) and prints the seconds, the
models trained (three arms of N), their rate, and the estimate `budget` made before training, so the
estimate's error is visible beside the measurement.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

from unlearnkit.backends import local_cores
from unlearnkit.budget import training_rate
from unlearnkit.engine.compute import use
from unlearnkit.experiment import RunConfig, budget, prepare, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="16,64,100", help="comma-separated N per arm")
    parser.add_argument("--task", default="fashion-mnist-mlp")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--verbose", action="store_true", help="log each stage (pipe through a timestamper)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    for n in (int(v) for v in args.models.split(",")):
        with tempfile.TemporaryDirectory() as cache:
            config = RunConfig(task=args.task, models=n, cache_dir=cache, device=args.device, precision=args.precision)
            with use(config.compute):
                estimate = budget(prepare(config)).seconds()
                if n == int(args.models.split(",")[0]):
                    print(f"{config.compute.describe()}; expected training rate {training_rate() / 1e9:.0f} GFLOP/s; "
                          f"{local_cores()} CPU cores for the metrics")
                    print(f"{'N':>5} {'seconds':>9} {'models/s':>9} {'estimated s':>12}")
            start = time.perf_counter()
            run(config)
            seconds = time.perf_counter() - start
        print(f"{n:>5} {seconds:>9.1f} {3 * n / seconds:>9.2f} {estimate:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
