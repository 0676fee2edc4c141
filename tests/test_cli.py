"""The command line is a thin layer: errors print one clear line and exit 2; `list` shows the registries."""
import json
import subprocess
import sys

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unlearnkit", *args], capture_output=True, text=True, cwd=cwd)


def test_list_shows_tasks_methods_and_forget_kinds():
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert {"fashion-mnist-mlp", "fashion-mnist-cnn", "mnist1d-mlp", "digits-logreg"} <= set(listing["tasks"])
    assert {"none", "retrain", "finetune", "ga", "neggrad+"} <= set(listing["methods"])
    assert listing["methods"]["neggrad+"]["hparams"]["beta"] == 0.95
    assert {"random", "class"} <= set(listing["forget"])


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--methods", "none,unknown"], "unknown method 'unknown'"),
    (["--models", "1"], "--models must be in [2,"),
    (["--forget", "class:x"], "not a class index"),
    (["--set", "ga.lr"], "METHOD.NAME=VALUE"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, args, message):
    out = cli("run", "--task", "digits-logreg", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o"), *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()


def test_run_prints_table_and_writes_results(tmp_path):
    out = cli("run", "--task", "digits-logreg", "--forget", "random:20", "--methods", "none,finetune",
              "--models", "3", "--bootstrap", "0", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
              "--set", "finetune.epochs=1")
    assert out.returncode == 0, out.stderr
    assert "retrain (noise floor)" in out.stdout and "finetune" in out.stdout
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["rows"][1]["hparams"]["epochs"] == 1.0


def test_datamodels_command_refuses_too_few_models(tmp_path):
    out = cli("datamodels", "--task", "digits-mlp", "--models", "5", "--cache-dir", str(tmp_path), "--out",
              str(tmp_path / "dm"))
    assert out.returncode == 2 and "at least 10 subset models" in out.stderr
    assert not (tmp_path / "dm").exists()


def test_budgets_must_be_numbers(tmp_path):
    out = cli("run", "--task", "digits-logreg", "--budgets", "1,two", "--cache-dir", str(tmp_path))
    assert out.returncode == 2 and "--budgets expects" in out.stderr


def test_a_budget_shorter_than_scrubs_max_steps_runs_them_all():
    """`--budgets 1,2,4` with SCRUB (msteps 2 by default): the 1-epoch budget is one max-steps epoch (it was
    refused as msteps > epochs), the longer ones keep msteps 2."""
    from unlearnkit.methods import REGISTRY
    from unlearnkit.runs import RunConfig, build_jobs
    jobs = build_jobs(RunConfig(task="digits-mlp", methods=("none", "scrub"), budgets=(1.0, 2.0, 4.0), models=4),
                      REGISTRY)
    scrub = {j.label: j.hparams for j in jobs if j.method == "scrub"}
    assert {k: (h.epochs, h.msteps) for k, h in scrub.items()} == {"scrub@1": (1, 1), "scrub@2": (2, 2),
                                                                  "scrub@4": (4, 2)}


def test_every_methods_listed_summary_is_a_whole_sentence():
    """`unlearnkit list` shows a docstring's first sentence, which may wrap over lines (ERA's did, and was cut
    at 'into added')."""
    from unlearnkit.methods import REGISTRY
    from unlearnkit.methods.base import summary
    from unlearnkit.methods.lm import LM_REGISTRY
    from unlearnkit.methods.rec import REC_REGISTRY
    assert summary("One line.\n    More.") == "One line."
    assert summary("A sentence that\n    wraps here.\n\n    Then more.") == "A sentence that wraps here."
    assert summary("No period\n\nafter.") == "No period"
    for registry in (REGISTRY, LM_REGISTRY, REC_REGISTRY):
        assert all(m.summary.endswith(".") for m in registry.values()), [n for n, m in registry.items()
                                                                          if not m.summary.endswith(".")]
