"""report.html and the figures: written by every run with --out and by `unlearnkit report`, rendered by a real
browser (headless Chromium) with no console errors; a folder that is not a run is refused."""
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import render_in_chromium

from unlearnkit.cli import cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, run
from unlearnkit.report import write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run(RunConfig(task="digits-mlp", forget="random:40", methods=("none", "retrain", "ga"), models=4,
                  cache_dir=str(root / "cache"), bootstrap=10), out=root / "out")
    return root / "out"


def test_a_run_writes_a_self_contained_report_and_its_figures(run_dir):
    page = (run_dir / "report.html").read_text()
    for name in ("klom", "cost", "accuracy"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000
        assert (run_dir / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert page.count("<svg") == 3 and "<script" not in page
    assert not re.search(r"""(src|href)=["'](?!#|data:)""", page)  # nothing loaded from elsewhere
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run_id"] in page and results["provenance"]["cache_keys"]["oracles"] in page
    for text in ("KLoM p95 forget", "U-LiRA", "noise floor", "random:40", "Provenance", "unlearnkit run --task digits-mlp"):
        assert text in page


def test_the_report_renders_in_a_browser_without_console_errors(run_dir, tmp_path):
    png, console = render_in_chromium(run_dir / "report.html", tmp_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page with figures, not a blank one
    assert console == []


def test_report_command_rewrites_it_from_the_files(run_dir):
    (run_dir / "report.html").unlink()
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file() and "report.html" in result.output


def test_array_files_of_another_run_are_refused(run_dir, tmp_path):
    """klom.npz (and scores.npz) name their run: one copied from another run's folder is not drawn."""
    import shutil
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    results = json.loads((other / "results.json").read_text())
    (other / "results.json").write_text(json.dumps({**results, "run_id": "0123456789abcdef"}))
    with pytest.raises(UnlearnkitError, match=r"klom.npz belongs to run \w+, but results.json beside it to run 0123"):
        write_report(other)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(UnlearnkitError, match="has no results.json"):
        write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []
    study = tmp_path / "study"  # the run index lists studies too: `runs show` says what the folder is
    study.mkdir()
    (study / "study.json").write_text("{}")
    with pytest.raises(UnlearnkitError, match=r"holds a study \(study.json\), not a run's results"):
        write_report(study)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(UnlearnkitError, match="not an unlearnkit run"):
        write_report(tmp_path)


def test_trajectories_follow_every_forget_point_and_are_not_charged(tmp_path):
    """--trajectories K: the forget points' KLoM every K steps of a training method (step 0 = the originals,
    the last = where it stopped), margins kept in scores.npz, a summary in the row, a figure in the report;
    the method's FLOPs are the same as without them."""
    import numpy as np
    common = dict(task="digits-mlp", forget="random:30", methods=("none", "ga"), models=4,
                  cache_dir=str(tmp_path / "cache"), bootstrap=0, metrics=("klom",), estimators=())
    plain = run(RunConfig(**common))
    traced = run(RunConfig(**common, trajectories=3), out=tmp_path / "out")
    ga = next(r for r in traced["rows"] if r["method"] == "ga")
    assert ga["flops"] == next(r for r in plain["rows"] if r["method"] == "ga")["flops"]
    assert ga["klom_p95"] == next(r for r in plain["rows"] if r["method"] == "ga")["klom_p95"]
    t = ga["trajectory"]
    assert t["steps"][0] == 0 and t["steps"][1] == 3 and t["steps"] == sorted(set(t["steps"]))
    assert 0 <= t["forget_worse_after_best"] <= 1 and t["forget_gap"] >= 0
    assert "trajectory" not in next(r for r in traced["rows"] if r["method"] == "none")  # nothing to follow
    z = np.load(tmp_path / "out" / "scores.npz")
    k, m = z["trajectory/ga/klom"], z["trajectory/ga/margins"]
    assert k.shape == (len(t["steps"]), len(z["trajectory/positions"])) and m.shape[:2] == (len(t["steps"]), 4)
    # the last point is the method's result: its KLoM there is the row's own, on the followed forget points
    forget = z["split/forget"]
    np.testing.assert_array_equal(z["trajectory/positions"][:len(forget)], forget)
    np.testing.assert_allclose(z["row/ga/margin"][:, forget], m[-1][:, :len(forget)], atol=1e-4)
    assert (tmp_path / "out" / "figures" / "trajectories.png").is_file()
    assert "end worse than their best" in (tmp_path / "out" / "report.html").read_text()


def test_worse_after_best_and_stopping_gap():
    import numpy as np

    from unlearnkit.metrics.trajectory import stopping_gap, worse_after_best
    k = np.array([[5.0, 5.0, 5.0], [1.0, 3.0, 4.0], [2.0, 1.0, 3.0]])  # steps × points
    np.testing.assert_array_equal(worse_after_best(k), [True, False, False])
    np.testing.assert_array_equal(worse_after_best(k, tolerance=1.0), [False, False, False])
    gap = stopping_gap(k)
    assert gap["best_single_step_index"] == 2 and gap["mean_at_own_best_step"] == pytest.approx(5 / 3)
    assert gap["gap"] == pytest.approx(2.0 - 5 / 3)
    with pytest.raises(ValueError, match="steps ≥ 2"):
        worse_after_best(np.zeros((1, 3)))


def test_run_index_lists_shows_and_compares_runs(run_dir, tmp_path):
    other = tmp_path / "other"
    run(RunConfig(task="digits-mlp", forget="random:40", methods=("none", "retrain", "ga"), models=4, seed=1,
                  cache_dir=str(tmp_path / "cache"), bootstrap=0), out=other)
    ids = [json.loads((d / "results.json").read_text())["run_id"] for d in (run_dir, other)]
    runner = CliRunner()
    listing = runner.invoke(cli, ["runs", "list", "--task", "digits-mlp"]).output
    assert all(i in listing for i in ids) and str(other.resolve()) in listing
    typo = runner.invoke(cli, ["runs", "list", "--task", "digts-mlp"])  # not "no runs yet": the task is named
    assert isinstance(typo.exception, UnlearnkitError) and "digits-mlp" in str(typo.exception)
    shown = runner.invoke(cli, ["runs", "show", ids[1][:8]])
    assert shown.exit_code == 0 and "KLoM p95 forget" in shown.output and str(other.resolve()) in shown.output
    compared = runner.invoke(cli, ["runs", "compare", ids[0], str(other)])
    assert compared.exit_code == 0, compared.output
    assert "seed: 0 → 1" in compared.output and "bootstrap: 10 → 0" in compared.output
    assert "ga" in compared.output and "B − A" in compared.output


def test_run_index_refuses_unknown_or_vanished_runs(tmp_path, monkeypatch):
    from unlearnkit.report import index
    with pytest.raises(UnlearnkitError, match="no run 'zzzz'"):
        index.find("zzzz")
    gone = tmp_path / "gone"
    gone.mkdir()
    index.record(gone, {"run_id": "feedbeef00000000", "config": {"task": "digits-mlp", "methods": ["none"]}})
    gone.rmdir()
    with pytest.raises(UnlearnkitError, match="no longer exists"):
        index.find("feedbeef")
    assert "(folder deleted)" in index.format_list(index.entries())
    again = tmp_path / "again"  # the same run written to a second folder: its id finds the folder that exists
    again.mkdir()
    index.record(again, {"run_id": "feedbeef00000000", "config": {"task": "digits-mlp", "methods": ["none"]}})
    assert index.find("feedbeef00000000") == Path(str(again.resolve()))
    monkeypatch.setenv("UNLEARNKIT_INDEX", str(tmp_path / "garbage.sqlite"))
    index.index_path().write_text("not a database")
    with pytest.raises(UnlearnkitError, match="cannot be read .*UNLEARNKIT_INDEX"):
        index.entries()


def test_a_klom_cell_always_fits_its_column():
    """Up to the cap (≈ 11.5) with its interval, a cell takes at most 16 characters, so the space before it
    always separates it from its neighbour (two decimals below 10, one from 10 up where needed)."""
    from unlearnkit.report.table import _klom_cell
    assert _klom_cell(9.83, [9.7, 9.9]) == "9.83 [9.7,9.9]" and _klom_cell(10.88, [10.8, 11.5]) == "10.9 [10.8,11.5]"
    assert _klom_cell(10.88, [9.9, 11.5]) == "10.88 [9.9,11.5]" and _klom_cell(11.51, None) == "11.51"
    assert all(len(_klom_cell(p, [lo, 11.51])) <= 16 for p in (0.01, 9.99, 10.0, 11.51) for lo in (0.0, 9.9, 10.5))
