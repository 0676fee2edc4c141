"""Saved scores (scores.npz) and `unlearnkit rescore`: every metric recomputed from a finished run, no
training; byte-identical results with the run's own settings; bad run folders refused, nothing written."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from unlearnkit.cli import cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run
from unlearnkit.files import savez
from unlearnkit.rescore import rescore

FILES = ("results.json", "klom.npz", "timings.json", "scores.npz")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    config = RunConfig(task="digits-mlp", forget="random:40", methods=("none", "retrain", "ga"), models=6,
                       cache_dir=str(root / "cache"), bootstrap=10)
    run(config, out=root / "out")
    return root / "out"


@pytest.fixture
def run_dir(finished, tmp_path):
    """A private copy of the finished run (rescore rewrites files in place)."""
    return shutil.copytree(finished, tmp_path / "run")


def _bytes(d):
    return {n: (d / n).read_bytes() for n in FILES}


def test_scores_hold_every_arm_per_model_and_example(finished):
    z = np.load(finished / "scores.npz")
    results = json.loads((finished / "results.json").read_text())
    n, e = 6, results["config"]["train_size"] + results["config"]["val_size"]
    assert int(z["format"]) == 1 and str(z["kind"]) == "classifier"
    for arm in ("arm/originals", "arm/oracles", "row/none", "row/retrain", "row/ga"):
        assert z[f"{arm}/margin"].shape == (n, e) and z[f"{arm}/margin"].dtype == np.float32
        assert z[f"{arm}/correct"].dtype == bool
        assert z[f"{arm}/entropy"].shape == z[f"{arm}/m_entropy"].shape == (n, e)
    assert z["labels"].shape == z["example_ids"].shape == (e,)
    assert len(z["split/forget"]) == results["forget_set"]["size"] == len(z["forget_ids"])
    np.testing.assert_array_equal(z["example_ids"][z["split/forget"]], z["forget_ids"])
    # the do-nothing row is the originals themselves
    np.testing.assert_array_equal(z["row/none/margin"], z["arm/originals/margin"])
    # accuracies in results.json are read from the saved predictions
    acc = z["row/ga/correct"][:, z["split/val"]].mean(1).mean()
    assert results["rows"][2]["accuracy"]["val"] == pytest.approx(acc)


def test_rescore_with_the_runs_settings_reproduces_its_files_exactly(run_dir):
    before = _bytes(run_dir)
    rescore(run_dir)
    assert _bytes(run_dir) == before


def test_rescore_with_other_settings_changes_only_the_metrics(run_dir):
    before = json.loads((run_dir / "results.json").read_text())
    assert "95% CI over models" in (run_dir / "report.html").read_text()
    after = rescore(run_dir, estimators=("gauss", "knn"), metrics=("klom",), bootstrap=0)
    assert after["config"]["estimators"] == ["gauss", "knn"] and after["config"]["metrics"] == ["klom"]
    assert after["run_id"] == before["run_id"]
    for old, new in zip(before["rows"], after["rows"], strict=True):
        assert new["klom_p95"] == old["klom_p95"] and new["hparams"] == old["hparams"]
        assert new["flops"] == old["flops"] and new["cost_vs_retrain"] == old["cost_vs_retrain"]
        assert set(new["klom_estimators"]) == {"gauss", "knn"}
        assert "ulira" not in new and "klom_p95_ci" not in new and "ulira" in old
    assert json.loads((run_dir / "results.json").read_text())["config"]["estimators"] == ["gauss", "knn"]
    assert "95% CI over models" not in (run_dir / "report.html").read_text()  # the report follows (bootstrap 0)


def test_rescore_command_prints_the_table(run_dir):
    result = CliRunner().invoke(cli, ["rescore", str(run_dir), "--estimators", "gauss,knn"])
    assert result.exit_code == 0, result.output
    assert "gauss p95 forget" in result.output and "U-LiRA" in result.output
    assert "knn p95 forget" in result.output  # every estimator asked for is shown, not the first alone
    assert max(len(line) for line in result.output.split("\nrewrote")[0].splitlines()) <= 100  # a terminal's width
    assert f"rewrote {run_dir}/results.json" in result.output


def _truncate(d):
    data = (d / "scores.npz").read_bytes()
    (d / "scores.npz").write_bytes(data[:len(data) // 2])


def _other_format(d):
    z = dict(np.load(d / "scores.npz"))
    z["format"] = np.array(99)
    savez(d / "scores.npz", z, compress=False)


def _another_runs(d):
    z = dict(np.load(d / "scores.npz"))
    z["run_id"] = np.array("0123456789abcdef")
    savez(d / "scores.npz", z, compress=False)


@pytest.mark.parametrize("damage, kwargs, match", [
    pytest.param(lambda d: (d / "scores.npz").unlink(), {}, "has no scores.npz", id="no-scores"),
    pytest.param(_truncate, {}, "truncated or corrupted", id="truncated"),
    pytest.param(_other_format, {}, "format 99", id="other-format"),
    pytest.param(_another_runs, {}, "belongs to run 0123456789abcdef", id="another-runs-scores"),
    pytest.param(lambda d: (d / "results.json").unlink(), {}, "has no results.json", id="no-results"),
    pytest.param(lambda d: None, {"estimators": ("histogram",)}, "unknown KLoM estimator", id="unknown-estimator"),
    pytest.param(lambda d: None, {"metrics": ("klom", "lira")}, "unknown metric", id="unknown-metric"),
    pytest.param(lambda d: None, {"metrics": ("ulira",)}, "must include klom", id="no-klom"),
    pytest.param(lambda d: None, {"bootstrap": -1}, "^bootstrap must be", id="bad-bootstrap"),
])
def test_bad_run_folders_are_refused_and_nothing_is_written(run_dir, damage, kwargs, match):
    damage(run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(UnlearnkitError, match=match):
        rescore(run_dir, **kwargs)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_cli_rescore_error_is_one_line(tmp_path, capsys, monkeypatch):
    from unlearnkit.cli import main
    monkeypatch.setattr("sys.argv", ["unlearnkit", "rescore", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "results.json" in err


def test_unknown_estimator_or_metric_in_a_run_config_is_refused():
    with pytest.raises(UnlearnkitError, match="unknown KLoM estimator"):
        RunConfig(task="digits-mlp", estimators=("kde",))
    with pytest.raises(UnlearnkitError, match="unknown metric"):
        RunConfig(task="digits-mlp", metrics=("klom", "auc"))
