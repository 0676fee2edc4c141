"""Fair tuning: separate tuning forget set, saved best config, `run --tuned` uses it."""
import json

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run
from unlearnkit.tuning import TuneConfig, load_tuned, tune


def test_tune_saves_best_and_run_uses_it(tmp_path):
    config = RunConfig(task="digits-logreg", forget="random:20", methods=("finetune",), models=3,
                       cache_dir=str(tmp_path), bootstrap=0)
    result = tune(config, TuneConfig("finetune", trials=3))
    assert len(result["trials"]) == 3
    assert result["score"] == min(t["score"] for t in result["trials"])
    assert result["tuning_forget"]["seed"] != config.seed  # never the reported forget set
    saved = load_tuned(str(tmp_path), "digits-logreg", "random:20", "finetune")
    assert saved == json.loads(open(result["path"]).read())["hparams"]
    results = run(RunConfig(**{**config.__dict__, "tuned": True}))
    row = results["rows"][0]
    assert row["tuned"] and row["hparams"]["lr"] == pytest.approx(saved["lr"])
    assert row["hparams"]["epochs"] == pytest.approx(saved["epochs"])


def test_tuning_refuses_the_reported_forget_set(tmp_path):
    config = RunConfig(task="digits-logreg", forget="class:3", methods=("ga",), models=2, cache_dir=str(tmp_path))
    with pytest.raises(UnlearnkitError, match="pass another with tune_forget"):
        tune(config, TuneConfig("ga", trials=1))


def test_a_fixed_hyperparameter_is_not_searched(tmp_path):
    """`--set` fixes a value: the search leaves it out and the saved config keeps it; fixing every tuned value
    leaves nothing to search, said before anything trains."""
    config = RunConfig(task="digits-logreg", forget="random:10", methods=("finetune",), models=2,
                       cache_dir=str(tmp_path), bootstrap=0, hparams=("finetune.lr=0.01",))
    result = tune(config, TuneConfig("finetune", trials=2))
    assert all(set(t["params"]) == {"epochs"} for t in result["trials"]) and result["hparams"]["lr"] == 0.01
    with pytest.raises(UnlearnkitError, match="nothing is left to search"):
        tune(RunConfig(**{**config.__dict__, "hparams": (("finetune", "lr", "0.01"), ("finetune", "epochs", "1"))}),
             TuneConfig("finetune", trials=1))


def test_tuning_needs_something_to_tune(tmp_path):
    config = RunConfig(task="digits-logreg", forget="random:10", methods=("none",), models=2, cache_dir=str(tmp_path))
    with pytest.raises(UnlearnkitError, match="no hyperparameters"):
        tune(config, TuneConfig("none", trials=1))


def test_lm_score_maximises_forget_quality_among_trials_that_keep_utility():
    from unlearnkit.tuning import INFEASIBLE, lm_score
    row = lambda fq, u: {"diverged": False, "forget_quality": fq, "model_utility": u}
    floor = 0.5
    assert lm_score(row(0.9, 0.6), floor) < lm_score(row(0.1, 0.9), floor) < lm_score(row(1e-9, 0.6), floor)
    assert lm_score(row(1e-30, 0.51), floor) < INFEASIBLE <= lm_score(row(0.99, 0.49), floor)
    assert lm_score(row(0.99, 0.49), floor) < lm_score(row(0.99, 0.2), floor)   # shortfall ranks the infeasible
    assert lm_score({"diverged": True, "forget_quality": None, "model_utility": None}, floor) > lm_score(
        row(0.99, 0.0), floor)


def test_lm_tuning_on_its_own_forget_set_saves_what_run_tuned_reads(tiny_lm_cache):
    from unlearnkit.lm_experiment import lm_jobs
    from unlearnkit.tuning import UTILITY_FLOOR
    config = RunConfig(task="tofu-synth-tiny", forget="authors:0.1", methods=("ga",), models=2, bootstrap=0,
                       cache_dir=tiny_lm_cache)
    result = tune(config, TuneConfig("ga", trials=2))
    assert len(result["trials"]) == 2 and f">= {UTILITY_FLOOR}" in result["objective"]
    assert result["tuning_forget"]["seed"] != config.seed and result["tuning_forget"]["size"] == 20
    assert all({"forget_quality", "model_utility"} <= t["row"].keys() for t in result["trials"])
    assert result["score"] == min(t["score"] for t in result["trials"])
    (job,) = [j for j in lm_jobs(RunConfig(**{**config.__dict__, "tuned": True})) if j.method == "ga"]
    assert job.tuned and job.hparams.lr == pytest.approx(result["hparams"]["lr"])


def test_a_search_budgets_the_tuning_set_it_trains_on(tmp_path, checked_budget):
    """A search's oracles and noise floor train without the tuning set, not the reported one: its estimate
    is built on the tuning set (here 30 examples where the reported set has 10)."""
    from unlearnkit.engine.compute import use
    from unlearnkit.experiment import budget, prepare
    config = RunConfig(task="digits-logreg", forget="random:10", methods=("finetune",), models=3,
                       cache_dir=str(tmp_path), bootstrap=0)
    with use(config.compute):
        arms = {k: budget(prepare(RunConfig(**{**config.__dict__, "forget": f"random:{k}"}))) for k in (10, 30)}
    arms = {k: b.flops - b.method_flops for k, b in arms.items()}  # the reference arms alone
    b = checked_budget(lambda: tune(config, TuneConfig("finetune", trials=4, tune_forget="random:30")))
    assert arms[30] < arms[10]
    assert b.flops - 4 * b.method_flops == pytest.approx(arms[30])  # the arms, and each trial's method


def test_a_damaged_tuned_file_is_named_not_taken_for_missing(tmp_path):
    from unlearnkit.tuned import tuned_path
    path = tuned_path(str(tmp_path), "digits-mlp", "random:10", "ga")
    assert load_tuned(str(tmp_path), "digits-mlp", "random:10", "ga") is None  # nothing saved: None
    path.parent.mkdir(parents=True)
    for junk in ("{bad", "[]", '{"hparams": 3}'):
        path.write_text(junk)
        with pytest.raises(UnlearnkitError, match="tuned hyperparameters of ga .* cannot be read"):
            load_tuned(str(tmp_path), "digits-mlp", "random:10", "ga")
