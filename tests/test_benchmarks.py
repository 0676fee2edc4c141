"""The benchmarks that `benchmarks/gpu_check.sh` runs on a lent GPU, run here at toy size on the CPU: a script
that no longer matches the API it calls must fail in the suite, not in the few minutes a GPU is lent."""
import os
import re
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
    ("gpu_consistency.py", ["--task", "digits-mlp", "--models", "3", "--device", "cpu"], "in chunks"),
    ("run_wallclock.py", ["--task", "digits-mlp", "--models", "3"], "models/s"),
    ("optimizer_update.py", ["--task", "digits-mlp", "--models", "3", "--steps", "2", "--device", "cpu"],
     "op by op"),
    # the tests' tiny originals (N = 2, the precision an LMBench resolves to) are the ones it unlearns from;
    # its own live-reference NPO, and the method with LoRA adapters (a process each: the other two add nothing)
    ("lm_memory.py", ["--task", "tofu-synth-tiny", "--models", "2", "--epochs", "0.1", "--device", "cpu",
                      "--precision", "auto", "--threads", "1", "--variants", "live,cached+lora"], "cached+lora"),
])
def test_a_gpu_check_benchmark_runs_at_toy_size(script, args, expect, tmp_path, tiny_lm_cache):
    cache = tiny_lm_cache if script == "lm_memory.py" else str(tmp_path)
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "UNLEARNKIT_CACHE": cache})
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout


def test_the_gpu_check_runs_every_language_model_method():
    """Step 6 names the LM methods (step 8 reads the classifier registry): a method added to the registry
    must be added there too, or a GPU session never runs it. `retrain` and `filter` only train an arm, which
    step 6's originals already do on the device."""
    from unlearnkit.methods.lm import LM_REGISTRY
    named = re.search(r"--methods (none,[\w,+-]+)", (BENCHMARKS / "gpu_check.sh").read_text()).group(1)
    assert set(LM_REGISTRY) - set(named.split(",")) == {"retrain", "filter"}
