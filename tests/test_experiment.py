"""End to end: task → zoo → forget set → methods → KLoM → results files, and bad input."""
import json

import numpy as np
import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run

NEGGRAD = (("neggrad+", "lr", "0.05"), ("neggrad+", "epochs", "5"), ("neggrad+", "beta", "0.95"))


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """digits-mlp, forget all of class 3, N=8 per arm (seconds on 2 cores)."""
    root = tmp_path_factory.mktemp("class_run")
    config = RunConfig(task="digits-mlp", forget="class:3", methods=("none", "retrain", "neggrad+"), models=8,
                       cache_dir=str(root / "cache"), hparams=NEGGRAD, bootstrap=20)
    return run(config, out=root / "out"), root / "out"


def _row(results, method):
    return next(r for r in results["rows"] if r["method"] == method)


def test_klom_large_for_originals_small_for_retrained(class_run):
    results, _ = class_run
    none, retrain = _row(results, "none"), _row(results, "retrain")
    assert none["klom_p95"]["forget"] > 11.0  # the originals know class 3; the oracles never saw it
    assert retrain["klom_p95"]["forget"] < none["klom_p95"]["forget"] - 2.0
    assert results["noise_floor"]["method"] == "retrain"
    assert retrain["accuracy"]["forget"] < 0.05 and none["accuracy"]["forget"] > 0.95


def test_neggrad_plus_forgets_without_wrecking_utility(class_run):
    results, _ = class_run
    ng, none = _row(results, "neggrad+"), _row(results, "none")
    assert ng["accuracy"]["forget"] < 0.2
    assert ng["accuracy"]["val"] > 0.8 and ng["accuracy"]["retain"] > 0.9
    assert ng["klom_p95"]["forget"] < none["klom_p95"]["forget"]
    assert ng["seconds"] > 0


def test_results_files(class_run):
    results, out = class_run
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk) >= {"config", "rows", "noise_floor"}
    timings = json.loads((out / "timings.json").read_text())["rows"]
    for row in on_disk["rows"]:
        assert set(row) >= {"method", "klom_p95", "klom_mean", "klom_median", "accuracy", "flops", "diverged"}
        assert "seconds" not in row and timings[row["label"]]["seconds"] > 0  # wall clock: apart, see test_reproducible
        for key in ("klom_p95", "klom_mean", "klom_median", "accuracy"):
            assert set(row[key]) == {"forget", "retain", "val"}
        lo, hi = row["klom_p95_ci"]["forget"]
        assert lo <= row["klom_p95"]["forget"] <= hi
    arrays = np.load(out / "klom.npz")
    n_train = on_disk["config"]["train_size"]
    assert arrays["klom/none"].shape == (n_train + on_disk["config"]["val_size"],)
    assert len(arrays["split/forget"]) == on_disk["forget_set"]["size"] == len(arrays["forget_ids"])
    np.testing.assert_allclose(np.percentile(arrays["klom/none"][arrays["split/forget"]], 95),
                               on_disk["rows"][0]["klom_p95"]["forget"])
    assert json.loads((out / "forget_set.json").read_text())["ids"] == on_disk["forget_set"]["ids"]


def test_noise_floor_reported_even_when_retrain_not_asked(tmp_path):
    results = run(RunConfig(task="digits-logreg", forget="random:50", methods=("none",), models=8,
                            cache_dir=str(tmp_path), bootstrap=0))
    assert [r["method"] for r in results["rows"]] == ["none"]
    assert results["noise_floor"]["method"] == "retrain"
    assert results["noise_floor"]["klom_p95"]["forget"] < results["rows"][0]["klom_p95"]["forget"]


def test_diverging_method_is_reported_and_others_still_run(tmp_path):
    results = run(RunConfig(task="digits-mlp", forget="random:30", methods=("ga", "none"), models=4,
                            cache_dir=str(tmp_path), bootstrap=0,
                            hparams=(("ga", "lr", "1000"), ("ga", "epochs", "50"))), out=tmp_path / "out")
    ga, none = results["rows"]
    assert ga["diverged"] and "non-finite" in ga["why"] and ga["klom_p95"]["forget"] is None
    assert not none["diverged"] and none["klom_p95"]["forget"] is not None
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["diverged"] is True


@pytest.mark.parametrize("change, message", [
    ({"task": "imagenet-vit"}, "unknown task"),
    ({"methods": ("none", "magic")}, "unknown method"),
    ({"methods": ()}, "no methods"),
    ({"models": 1}, r"^models must be in \[2,"),
    ({"forget": "random"}, "malformed forget spec"),
    ({"forget": "random:0"}, "selects no examples"),
    ({"forget": "random:5000"}, "training set has"),
    ({"forget": "class:12"}, "no training examples"),
    ({"hparams": (("ga", "learning_rate", "1"),), "methods": ("ga",)}, "valid: epochs, lr"),
    ({"hparams": (("ga", "lr", "-1"),), "methods": ("ga",)}, "out of range"),
    ({"hparams": (("ga", "lr", "fast"),), "methods": ("ga",)}, "cannot read"),
    ({"hparams": (("finetune", "lr", "1"),), "methods": ("ga",)}, "not run"),
    ({"data_dir": "/data"}, "reads no directory; leave data_dir out"),
    ({"datamodels": "/dm"}, "pc: and influence: forget sets only"),
])
def test_bad_input_fails_before_any_work(tmp_path, change, message):
    with pytest.raises(UnlearnkitError, match=message):
        run(RunConfig(**{"task": "digits-logreg", "forget": "random:10", "methods": ("none",), "models": 4,
                         "cache_dir": str(tmp_path / "cache"), **change}), out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_missing_data_directory_says_how_to_install(tmp_path):
    config = RunConfig(task="fashion-mnist-mlp", data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(UnlearnkitError, match="apt-get install dataset-fashion-mnist"):
        run(config, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_holding_another_run_is_refused_unless_overwrite(tmp_path):
    config = RunConfig(task="digits-logreg", forget="random:10", methods=("none",), models=2,
                       cache_dir=str(tmp_path / "cache"), bootstrap=0)
    run(config, tmp_path / "out")
    first = (tmp_path / "out" / "results.json").read_bytes()
    run(config, tmp_path / "out")  # the same run: refreshed
    run(RunConfig(**{**config.to_dict(), "max_hours": 48.0}), tmp_path / "out")  # settings that change no result
    assert (tmp_path / "out" / "results.json").read_bytes() != first  # (its config says max_hours 48)
    other = RunConfig(**{**config.to_dict(), "forget": "random:12"})
    run(config, tmp_path / "out")
    with pytest.raises(UnlearnkitError,
                       match=r"a run's results of other settings \(forget random:10 there, random:12 here\).*overwrite=True"):
        run(other, tmp_path / "out")
    assert (tmp_path / "out" / "results.json").read_bytes() == first
    run(other, tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["forget"] == "random:12"


def test_unwritable_out_and_cache_fail_before_training(tmp_path):
    (tmp_path / "afile").write_text("")
    base = {"task": "digits-logreg", "forget": "random:10", "methods": ("none",), "models": 2}
    with pytest.raises(UnlearnkitError, match="is a file"):
        run(RunConfig(**base, cache_dir=str(tmp_path / "cache")), tmp_path / "afile" / "out")
    with pytest.raises(UnlearnkitError, match="model cache.*is a file"):
        run(RunConfig(**base, cache_dir=str(tmp_path / "afile")), tmp_path / "out")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_runs_that_cannot_finish_or_fit_are_refused_with_the_estimate(tmp_path, monkeypatch):
    base = {"task": "digits-mlp", "forget": "random:10", "methods": ("none",), "cache_dir": str(tmp_path / "c")}
    with pytest.raises(UnlearnkitError, match=r"would train for at least about .* \(.* PFLOP at .*raise max_hours"):
        run(RunConfig(**base, models=5000, max_hours=0.01))
    monkeypatch.setattr("unlearnkit.budget.available_memory", lambda: 2 ** 14)  # arms larger than memory are
    with pytest.raises(UnlearnkitError, match="of memory to train even one model"):  # chunked; not one model
        run(RunConfig(**base, models=8))
    assert not list(tmp_path.rglob("*.safetensors"))


def test_progress_lines_off_a_terminal(tmp_path, capfd):
    run(RunConfig(task="digits-logreg", forget="random:10", methods=("none",), models=2,
                  cache_dir=str(tmp_path), bootstrap=0))
    err = capfd.readouterr().err
    assert "train originals ×2: " in err and "steps" in err


def test_out_being_written_by_another_live_run_is_refused(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".unlearnkit-claim").write_text(json.dumps({"run_id": "another", "pid": other.pid}))
        config = RunConfig(task="digits-logreg", forget="random:10", methods=("none",), models=2,
                           cache_dir=str(tmp_path / "cache"), bootstrap=0)
        with pytest.raises(UnlearnkitError, match=f"being written by another run \\(pid {other.pid}\\)"):
            run(config, out)
    finally:
        other.kill()
        other.wait()
    run(config, out)  # its owner is gone: the claim is stale
    assert sorted(p.name for p in out.iterdir()) == ["figures", "forget_set.json", "klom.npz", "report.html",
                                                     "results.json", "scores.npz", "timings.json"]


def test_cache_that_cannot_hold_the_models_is_refused_before_training(tmp_path, monkeypatch):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("unlearnkit.budget.shutil.disk_usage", lambda path: usage(10 ** 12, 10 ** 12, 1024))
    with pytest.raises(UnlearnkitError, match="free some space"):
        run(RunConfig(task="digits-mlp", forget="random:10", methods=("none",), models=4,
                      cache_dir=str(tmp_path / "cache")), tmp_path / "out")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_privacy_metrics_tell_originals_from_retrained_models(class_run):
    """U-LiRA (Hayes et al. 2024): models retrained without the forget set are indistinguishable from the
    oracles (≈ 0.5), the originals that learned class 3 are not; the NeurIPS'23 forget score F is higher for
    retraining than for doing nothing; the small-N estimator reads the originals far above the noise floor."""
    results, _ = class_run
    none, retrain = _row(results, "none"), _row(results, "retrain")
    assert none["ulira"]["accuracy"] > 0.95 and abs(retrain["ulira"]["accuracy"] - 0.5) < 0.1
    assert none["neurips23"]["forget_score"] < 0.05 < retrain["neurips23"]["forget_score"]
    gauss = {r: _row(results, r)["klom_estimators"]["gauss"]["p95"]["forget"] for r in ("none", "retrain")}
    assert gauss["none"] > 5 * gauss["retrain"] and gauss["retrain"] < 2.5
    for row in (none, retrain):
        assert set(row["mia"]) == {"correctness", "confidence", "entropy", "m_entropy"}
    # the SVC attack calls the forget class unseen under retrained models, seen under the originals
    assert none["mia"]["confidence"] < 0.2 < 0.8 < retrain["mia"]["confidence"]


def test_weights_left_non_finite_are_a_diverged_row_and_a_wrong_result_is_named(tmp_path):
    """One huge step can leave NaN weights without a NaN loss: that row is diverged, the run goes on. A
    user's method returning something else than parameters is named, and may be registered again."""
    from unlearnkit.methods import REGISTRY, register
    from unlearnkit.methods.base import HParams
    base = dict(task="digits-mlp", forget="random:30", models=3, cache_dir=str(tmp_path), bootstrap=0)
    results = run(RunConfig(**base, methods=("ga", "none"), hparams=("ga.lr=1e30", "ga.epochs=0.5")))
    logreg = dict(base, task="digits-logreg", models=2)
    ga, none = results["rows"]
    assert ga["diverged"] and "non-finite outputs" in ga["why"] and not none["diverged"]
    followed = run(config=RunConfig(**logreg, methods=("ga", "none"), hparams=("ga.lr=1e30",),
                                    trajectories=1))  # the recorder meets the NaN first; config by keyword
    assert followed["rows"][0]["diverged"] and not followed["rows"][1]["diverged"]
    try:
        register("test-not-weights", HParams)(lambda ctx, hp: {"w": 1})
        with pytest.raises(ValueError, match="replace=True"):
            register("test-not-weights", HParams)(lambda ctx, hp: None)
        with pytest.raises(UnlearnkitError, match="did not return the models' parameters"):
            run(RunConfig(**base, methods=("test-not-weights",)))
        register("test-not-weights", HParams, replace=True)(lambda ctx, hp: ctx.originals)
        assert REGISTRY["test-not-weights"].summary == ""  # no docstring: no summary, no error
        assert not run(RunConfig(**base, methods=("test-not-weights",)))["rows"][0]["diverged"]
    finally:
        REGISTRY.pop("test-not-weights", None)


def test_a_bench_used_directly_computes_as_run_does(tmp_path):
    """`prepare` and `Bench` outside `run` use the config's precision and device: they load the models
    `run` trained (the same cache entries), not new ones in another precision."""
    import numpy as np

    from unlearnkit.experiment import Bench, prepare
    config = RunConfig(task="digits-mlp", forget="random:30", methods=("none",), models=3, cache_dir=str(tmp_path),
                       bootstrap=0, precision="bf16" if RunConfig().precision == "bf16" else "fp32")
    run(config, tmp_path / "out")
    entries = sorted(p.name for p in (tmp_path / "zoo").iterdir())
    bench = Bench(prepare(config))
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == entries  # nothing new trained
    with np.load(tmp_path / "out" / "scores.npz") as z:
        np.testing.assert_array_equal(bench.originals_scores.margin, z["arm/originals/margin"])


def test_a_finished_run_is_estimated_to_train_nothing(tmp_path):
    """Arms in the cache and jobs whose cells are kept cost nothing: a rerun is never refused for work it
    will not do (a new method is still counted)."""
    from unlearnkit.engine.compute import use
    from unlearnkit.experiment import budget, prepare
    config = RunConfig(task="digits-mlp", forget="random:30", methods=("none", "ga", "finetune"), models=3,
                       cache_dir=str(tmp_path), bootstrap=0)
    with use(config.compute):
        before = budget(prepare(config))
        run(config)
        after = budget(prepare(config))
        more = budget(prepare(RunConfig(**{**config.__dict__, "methods": ("none", "ga", "finetune", "neggrad+")})))
    assert before.method_flops > 0 and after.flops == 0
    assert more.flops == more.method_flops > 0  # only neggrad+'s epochs
    rec = RunConfig(task="rec-mf-tiny", models=2, cache_dir=str(tmp_path), bootstrap=0)  # its jobs carry a probe
    with use(rec.compute):
        run(rec)
        assert budget(prepare(rec)).flops == 0
