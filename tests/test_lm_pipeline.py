"""The LM pipeline end to end on the tiny task: `run`, its rows, report, rescoring and trajectories."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from unlearnkit.cli import cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run

TASK = "tofu-synth-tiny"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tiny_lm_cache):
    return tiny_lm_cache  # the originals at N = 3 are shared with test_lm_ood.py


@pytest.fixture(scope="module")
def results(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmrun")
    config = RunConfig(task=TASK, forget="authors:0.25", methods=("none", "ga", "npo"), models=3, cache_dir=cache_dir,
                       bootstrap=10)
    return run(config, out), out


def test_run_writes_every_lm_field(results):
    res, out = results
    on_disk = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in on_disk["rows"]] == ["none", "ga", "npo"]
    assert set(json.loads((out / "timings.json").read_text())["rows"]) == {"none", "ga", "npo", "retrain"}
    for row in on_disk["rows"] + [on_disk["noise_floor"]]:
        assert set(row["mia_auc"]) == {"loss", "zlib", "mink", "minkpp", "ref", "gradnorm"}
        assert set(row["klom_p95"]) == {"forget", "retain", "val"}
        assert set(row["accuracy"]) == {"forget", "retain", "val"}
        for key in ("forget_quality", "model_utility", "forget_rouge", "flops", "cost_vs_retrain",
                    "klom_mean", "klom_median", "diverged", "budget", "tuned", "hparams"):
            assert key in row
        assert 0 <= row["forget_quality"] <= 1 and 0 <= row["model_utility"] <= 1
        assert all(0 <= row[k] <= 1 for k in ("forget_verbmem", "forget_knowmem", "retain_knowmem"))
    # MUSE's premise: models trained on the forget set continue its answers verbatim, retrained ones do not
    none, floor = on_disk["rows"][0], on_disk["noise_floor"]
    assert none["forget_verbmem"] > floor["forget_verbmem"] + 0.1
    assert none["forget_knowmem"] > floor["forget_knowmem"]
    assert set(np.load(out / "klom.npz").files) >= {"klom/none", "klom/ga", "klom/npo", "split/forget"}


def test_rescore_reproduces_an_lm_run_from_its_saved_item_scores(results, tmp_path):
    """scores.npz keeps every item set's per-model scores (sequence log-probs, truth ratios, ROUGE, the
    attacks' scores): `rescore` recomputes every LM metric from them, byte for byte."""
    import shutil

    from unlearnkit.rescore import rescore
    _, out = results
    copy = shutil.copytree(out, tmp_path / "run")
    z = np.load(copy / "scores.npz")
    assert str(z["kind"]) == "lm" and z["row/npo/forget/seq"].shape[0] == 3
    assert {"arm/oracles/forget/mia/minkpp", "arm/originals/world/prob_options", "row/ga/retain/rouge"} <= set(z.files)
    before = {n: (copy / n).read_bytes() for n in ("results.json", "klom.npz")}
    rescore(copy)
    assert {n: (copy / n).read_bytes() for n in before} == before
    again = rescore(copy, estimators=("knn",))
    assert all("knn" in r["klom_estimators"] for r in again["rows"])


def test_the_lm_table_fits_a_terminal(results):
    from unlearnkit.report import format_lm_table
    text = format_lm_table(results[0])
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "forget Q" in text and "mink++" in text and "KLoM95 forget" in text and "gauss95 forget" in text


def test_an_lm_run_writes_a_report_that_renders_without_console_errors(results, tmp_path):
    from conftest import render_in_chromium
    _, out = results
    page = (out / "report.html").read_text()
    assert "forget Q" in page and "AUC minkpp" in page and page.count("<svg") == 2
    assert (out / "figures" / "tradeoff.png").is_file()
    png, console = render_in_chromium(out / "report.html", tmp_path)
    assert len(png) > 20_000 and console == []


def test_original_models_memorised_the_forget_set_and_retraining_did_not(results):
    res, _ = results
    none = next(r for r in res["rows"] if r["method"] == "none")
    floor = res["noise_floor"]
    # TOFU's reading: the originals are told apart from the oracles, a retrained arm is not
    assert none["forget_quality"] < 0.05 < floor["forget_quality"]
    # membership inference on a set the models trained on: clearly above chance; for retrained models, near it
    assert min(none["mia_auc"].values()) > 0.9
    assert floor["mia_auc"]["loss"] < 0.75
    assert none["probability"]["forget"] > 5 * floor["probability"]["forget"]
    assert none["forget_rouge"] > floor["forget_rouge"] + 0.2
    assert none["accuracy"]["forget"] > floor["accuracy"]["forget"] + 0.2  # teacher-forced answer tokens


def test_gradient_ascent_forgets_and_costs_utility(results):
    res, _ = results
    none, ga = (next(r for r in res["rows"] if r["method"] == m) for m in ("none", "ga"))
    assert ga["probability"]["forget"] < 0.2 * none["probability"]["forget"]
    assert ga["forget_rouge"] < none["forget_rouge"]
    assert ga["model_utility"] < none["model_utility"]
    assert 0 < ga["flops"] < res["noise_floor"]["flops"]


def test_lm_run_rejects_classifier_methods_and_bad_specs(cache_dir):
    with pytest.raises(UnlearnkitError, match="unknown language-model method"):
        run(RunConfig(task=TASK, forget="authors:0.1", methods=("neggrad+",), models=2, cache_dir=cache_dir))
    with pytest.raises(UnlearnkitError, match="fraction"):
        run(RunConfig(task=TASK, forget="authors:2.0", methods=("ga",), models=2, cache_dir=cache_dir))
    with pytest.raises(UnlearnkitError, match="not ulira, mia"):  # classifier metrics are refused, not ignored
        RunConfig(task=TASK, metrics=("klom", "ulira", "mia"))
    with pytest.raises(UnlearnkitError, match="leave data_dir out"):
        RunConfig(task=TASK, data_dir="/data")
    assert RunConfig(task=TASK).metrics == ("klom",)


def test_classifier_only_commands_name_the_lm_task_clearly():
    for command in (["generalisation", "--task", TASK], ["datamodels", "--task", TASK, "--out", "unused"]):
        result = CliRunner().invoke(cli, command, standalone_mode=False)
        assert isinstance(result.exception, UnlearnkitError), command
        assert "language-model task" in str(result.exception)


def test_lm_trajectories_evaluate_every_k_steps_and_pick_the_stated_best_step(results, cache_dir, tmp_path):
    """`--trajectories K` on an LM run: forget quality, utility and seq-KLoM at step 0 and every K steps, the
    step the stated rule selects, per-item arrays in scores.npz, and the method's cost unchanged."""
    base = dict(task=TASK, forget="authors:0.25", methods=("ga",), models=3, cache_dir=cache_dir, bootstrap=10)
    plain = next(r for r in results[0]["rows"] if r["method"] == "ga")  # the same job without trajectories
    res = run(RunConfig(**base, trajectories=12, best_step="min:forget_probability;model_utility>=0.5x"),
              tmp_path / "out")
    row = res["rows"][0]
    t = row["trajectory"]
    assert t["steps"] == [0, 12, 20]  # 20 steps of ga: every 12th, and where it stopped
    assert len(t["forget_quality"]) == len(t["steps"]) == len(t["klom_forget"])
    assert t["klom_forget"][-1] == pytest.approx(row["klom_p95"]["forget"])  # the last step is the row itself
    assert t["forget_probability"][-1] < t["forget_probability"][0]  # ascent lowers the answers' probability
    best = t["best_step"]
    allowed = [i for i, u in enumerate(t["model_utility"]) if u >= 0.5 * t["model_utility"][0]]
    assert best["index"] == min(allowed, key=lambda i: t["forget_probability"][i])
    assert best["step"] == t["steps"][best["index"]] and best["rule"] == "min:forget_probability;model_utility>=0.5x"
    assert row["flops"] == plain["flops"]  # the evaluation is not charged to the method
    with np.load(tmp_path / "out" / "scores.npz") as z:
        assert z["trajectory/ga/klom"].shape[0] == len(t["steps"]) == z["trajectory/ga/seq"].shape[0]
        assert z["trajectory/ga/seq"].shape[1] == 3
    from unlearnkit.report import format_lm_table
    assert f"selects step {best['step']}" in format_lm_table(res).replace("\n  ", " ")
    page = (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "figures" / "steps.png").is_file() and "--best-step" in page
    with pytest.raises(UnlearnkitError, match="^best_step: "):
        RunConfig(**base, best_step="max:accuracy")


def test_a_finished_lm_run_is_estimated_to_train_nothing(results, cache_dir):
    """Its arms are cached and its jobs' cells kept: a rerun's budget is 0 (a new method counts alone)."""
    from unlearnkit.engine.compute import use
    from unlearnkit.lm_experiment import lm_jobs, prepare_lm
    config = RunConfig(task=TASK, forget="authors:0.25", methods=("none", "ga", "npo"), models=3, cache_dir=cache_dir,
                       bootstrap=10)
    more = RunConfig(**{**config.__dict__, "methods": ("none", "ga", "npo", "graddiff")})
    with use(config.compute):
        assert prepare_lm(config, lm_jobs(config))[3].flops == 0
        plan = prepare_lm(more, lm_jobs(more))[3]
    assert plan.flops == plan.method_flops > 0
