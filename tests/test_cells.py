"""Every grid runs as cells that are kept as they finish: a run's jobs (methods × budgets), tuning trials
and the LM in- vs out-of-distribution curve resume after an interruption without recomputing what
finished, and read the same as if never interrupted; a damaged cell is computed again, never trusted."""
import json

import numpy as np
import pytest

import unlearnkit.experiment as E
from unlearnkit.backends import Local
from unlearnkit.cells import CellStore, run_cells
from unlearnkit.experiment import RunConfig, run
from unlearnkit.tuning import TuneConfig, tune

BASE = dict(task="digits-logreg", forget="random:20", models=2, bootstrap=0)


def _count_jobs(monkeypatch, interrupt_at=None):
    """Patch Bench.start_job (what run_job and a run call) to record each job it computes (and raise
    KeyboardInterrupt at call k)."""
    real, calls = E.Bench.start_job, []

    def counted(self, job):
        calls.append(job.label)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt  # killed during this job
        return real(self, job)
    monkeypatch.setattr(E.Bench, "start_job", counted)
    return calls


def _rows(results):
    return [{k: v for k, v in r.items() if k not in ("seconds", "cost_vs_retrain")} for r in results["rows"]]


@pytest.mark.parametrize("overlap", [None, True])
def test_an_interrupted_run_resumes_at_its_first_unfinished_job(tmp_path, monkeypatch, overlap):
    """Also with a row's metrics finished beside the next job's training (a GPU's way, forced here): the
    job before the one interrupted is kept."""
    monkeypatch.setattr(Local, "overlap", overlap)
    config = RunConfig(**BASE, methods=("none", "retrain", "ga", "finetune"), budgets=(1.0, 2.0),
                       cache_dir=str(tmp_path / "cache"))
    calls = _count_jobs(monkeypatch, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "out")
    finished = calls[:3]
    calls.clear()
    monkeypatch.undo()
    calls = _count_jobs(monkeypatch)
    resumed = run(config, tmp_path / "out", overwrite=True)
    assert calls and not set(calls) & set(finished)  # nothing that finished ran again
    assert len(finished) + len(calls) == len(resumed["rows"])  # every job once
    fresh = run(RunConfig(**{**config.__dict__, "cache_dir": str(tmp_path / "fresh")}))
    assert _rows(resumed) == _rows(json.loads(json.dumps(fresh)))  # as if never interrupted
    calls.clear()
    run(config)  # all finished: no job runs, not even in a run that adds nothing
    assert calls == []
    run(RunConfig(**{**config.__dict__, "methods": ("none", "retrain", "ga", "finetune", "neggrad+")}))
    assert calls == ["neggrad+@1", "neggrad+@2"]  # a run that adds a method reuses the others' jobs


def test_tuning_resumes_its_trials(tmp_path, monkeypatch):
    config = RunConfig(**BASE, methods=("finetune",), cache_dir=str(tmp_path))
    calls = _count_jobs(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        tune(config, TuneConfig("finetune", trials=4))
    monkeypatch.undo()
    calls = _count_jobs(monkeypatch)
    result = tune(config, TuneConfig("finetune", trials=4))
    assert len(calls) == 2 and len(result["trials"]) == 4  # the seeded sampler re-proposed the first two


def test_a_damaged_cell_is_computed_again(tmp_path):
    store, computed = CellStore(tmp_path), []

    def compute(item):
        computed.append(item)
        return {"value": item}, {"klom": [1.0, 2.0], "scores": {"row/x/margin": [[0.5]]}}
    first = run_cells(store, [("k1", 1), ("k2", 2)], compute)
    second = run_cells(store, [("k1", 1), ("k2", 2)], compute)
    assert computed == [1, 2] and [r for r, _ in second] == [{"value": 1}, {"value": 2}]
    assert (second[1][1]["scores"]["row/x/margin"] == [[0.5]]).all()
    (tmp_path / "k1.npz").write_bytes(b"not a zip")
    (tmp_path / "k2.json").write_text('{"key": "k2", "arr')  # torn by hand (atomic writes never leave one)
    again = run_cells(store, [("k1", 1), ("k2", 2)], compute)
    assert computed == [1, 2, 1, 2] and again[0][0] == first[0][0]
    assert (again[0][1]["klom"] == first[0][1]["klom"]).all()
    # valid JSON that is not an entry, an edited number, edited arrays: each computed again, never trusted
    (tmp_path / "k1.json").write_text("null")
    entry = json.loads((tmp_path / "k2.json").read_text())
    (tmp_path / "k2.json").write_text(json.dumps({**entry, "row": {"value": 3}}))
    run_cells(store, [("k1", 1), ("k2", 2)], compute)
    assert computed == [1, 2, 1, 2, 1, 2]
    npz = (tmp_path / "k1.npz").read_bytes()
    (tmp_path / "k1.npz").write_bytes(npz.replace(np.float64(2.0).tobytes(), np.float64(7.0).tobytes()))
    assert run_cells(store, [("k1", 1)], compute)[0][1]["klom"].tolist() == [1.0, 2.0] and computed[-1] == 1


def test_a_users_method_is_keyed_by_its_code_and_its_modules(tmp_path, monkeypatch):
    """An edited helper beside a user's method, or an edited method made by exec (no source to read),
    changes the key its cells are stored under: the method is computed again, not read stale."""
    import importlib
    import sys

    from unlearnkit.runs import method_code
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "my_method_mod.py"
    keys = []
    for scale in ("-1.0", "1.0"):
        module.write_text(f"SCALE = {scale}\n\ndef helper(x):\n    return SCALE * x\n\n"
                          "def method(ctx, hp):\n    return helper(ctx)\n")
        sys.modules.pop("my_method_mod", None)
        importlib.invalidate_caches()
        keys.append(method_code(importlib.import_module("my_method_mod").method))
    assert keys[0] != keys[1]
    made = [{} for _ in range(3)]
    for ns, body in zip(made, ("x * 2", "x * 3", "x * 2")):
        exec(f"def method(x):\n    return {body}\n", ns)
    a, b, c = (method_code(ns["method"]) for ns in made)
    assert a != b and a == c
