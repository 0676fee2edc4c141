"""report.html and the figures: written by every run with --out and by `unlearnkit report`, rendered by a real
browser (headless Chromium) with no console errors; a folder that is not a run is refused."""
import json
import re

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


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(UnlearnkitError, match="has no results.json"):
        write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(UnlearnkitError, match="not an unlearnkit run"):
        write_report(tmp_path)
