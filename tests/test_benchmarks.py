"""The benchmarks that `benchmarks/gpu_check.sh` runs on a lent GPU, run here at toy size on the CPU: a script
that no longer matches the API it calls must fail in the suite, not in the few minutes a GPU is lent."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, args, expect", [
    ("lm_throughput.py", ["--task", "tofu-synth-tiny", "--models", "2", "--steps", "2", "--repeats", "1"],
     "zoo speed-up"),
    ("zoo_throughput.py", ["--task", "digits-mlp", "--models", "4", "--epochs", "0.5", "--loop-models", "1",
                           "--repeats", "1", "--precisions", "fp32"], "vs loop"),
])
def test_a_gpu_check_benchmark_runs_at_toy_size(script, args, expect):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
