"""Studies: a grid of runs from a TOML spec, one folder, one table, one report; finished cells are never
recomputed (an interrupted study resumes); a bad spec fails before any training, naming its line."""
import json

import pytest
from click.testing import CliRunner

from unlearnkit.cli import cli
from unlearnkit.engine.compute import use
from unlearnkit.errors import UnlearnkitError
from unlearnkit.study import format_study, load_study, run_study

SPEC = """[run]
task = "digits-mlp"
methods = ["none", "retrain", "ga"]
models = 3
bootstrap = 0
metrics = ["klom"]
estimators = []
cache_dir = "{cache}"

[grid]
forget = ["random:20", "class:3:0.5"]
seed = [0, 1]
"""


def _spec(tmp_path, text=None):
    path = tmp_path / "spec.toml"
    path.write_text(text if text is not None else SPEC.format(cache=tmp_path / "cache"))
    return path


def test_a_study_runs_every_cell_and_resumes_without_recomputing(tmp_path, monkeypatch):
    study = load_study(_spec(tmp_path))
    assert len(study.cells) == 4 and {c.seed for _, c in study.cells} == {0, 1}
    import unlearnkit.study as S
    real, calls = S._run_cell, []

    def interrupted(item):
        calls.append(item[0].name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third cell
        return real(item)
    monkeypatch.setattr(S, "_run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "out")
    monkeypatch.setattr(S, "_run_cell", lambda item: calls.append(item[0].name) or real(item))
    summary = run_study(study, tmp_path / "out")
    # the rerun ran only the two unfinished cells: the interrupted one again, then the last
    assert len(calls) == 5 and calls[3] == calls[2] and calls[4] not in calls[:4]
    assert len(summary["cells"]) == 4
    for c in summary["cells"]:
        assert {r["label"] for r in c["rows"]} == {"none", "retrain", "ga"}
        assert (tmp_path / "out" / "cells" / c["path"].rsplit("/", 1)[1] / "report.html").is_file()
    on_disk = json.loads((tmp_path / "out" / "study.json").read_text())
    assert on_disk["study_id"] == summary["study_id"] and (tmp_path / "out" / "figures" / "study.png").is_file()
    text = format_study(summary)
    assert "forget=class_3_0.5-seed=1" in text and "4 cells over forget, seed" in text
    assert "Warning: with N = " in text and max(len(line) for line in text.splitlines()) <= 100
    again = len(calls)
    run_study(study, tmp_path / "out")  # everything finished: nothing runs
    assert len(calls) == again


@pytest.mark.parametrize("text, match", [
    ("[run]\ntask = 'digits-mlp'\nnope = 3\n[grid]\nseed = [0]\n", r"line 3 \(nope = 3\): unknown \[run\] key 'nope'"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\n", "grid] table is missing or empty"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\nseed = []\n", r"line 4 \(seed = \[\]\): grid axis 'seed' must be a non-empty"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\nmethods = [['none', 'nosuch']]\n", "nosuch"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\nmodels = [4, 1]\n", r"line 4 \(models = \[4, 1\]\)\): models must be"),
    ("[runs]\ntask = 'x'\n", r"line 1 \(\[runs\]\): unknown table"),
    ("[run\n", "not valid TOML"),
    ("[run]\ntask = 'digits-mlp'\nmodels = 'two'\n[grid]\nseed = [0]\n", "\\): models must be an int, got 'two'"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\nforget = ['random:20', 'class:42']\n", r"line 4 .*class 42"),
    ("[run]\ntask = 'digits-mlp'\n[grid]\nseed = [0, 0]\n", r"line 4 \(seed = \[0, 0\]\): .*repeats a value"),
    ("[run]\ntask = 'digits-mlp'\nhparams = [['ga', 'lr']]\n[grid]\nseed = [0]\n", r"\[METHOD, NAME, VALUE\]"),
])
def test_a_bad_spec_fails_before_any_training_naming_its_line(tmp_path, text, match):
    with pytest.raises(UnlearnkitError, match=match):
        load_study(_spec(tmp_path, text))
    assert not (tmp_path / "cache").exists()


def test_study_command(tmp_path):
    spec = _spec(tmp_path, SPEC.format(cache=tmp_path / "cache").replace('seed = [0, 1]', 'seed = [0]')
                 .replace('forget = ["random:20", "class:3:0.5"]', 'forget = ["random:20"]'))
    result = CliRunner().invoke(cli, ["study", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 cells over forget, seed" in result.output and (tmp_path / "out" / "report.html").is_file()


def test_the_common_cases_need_no_spec_file(tmp_path):
    """--run and --grid flags build the same study as a file (and override its keys); a bad flag is named."""
    flags = ("task=digits-mlp", "methods=none,retrain,ga", "models=3", "bootstrap=0", "metrics=klom",
             f"cache_dir={tmp_path / 'cache'}")
    from_flags = load_study(None, flags, ("forget=random:20,class:3:0.5", "seed=0,1"))
    from_file = load_study(_spec(tmp_path))
    assert [c.run_id for _, c in from_flags.cells] == [
        c.run_id for _, c in load_study(_spec(tmp_path), ("estimators=gauss",)).cells]
    assert len(from_file.cells) == 4 and from_file.cells[0][1].estimators == ()
    overridden = load_study(_spec(tmp_path), ("models=4",), ("seed=5",))
    assert {c.models for _, c in overridden.cells} == {4} and {c.seed for _, c in overridden.cells} == {5}
    no_methods = tuple(f for f in flags if not f.startswith("methods"))
    assert load_study(None, no_methods, ("methods=none,retrain;none,retrain,ga",)).cells[1][1].methods == (
        "none", "retrain", "ga")
    with pytest.raises(UnlearnkitError, match=r"--grid models=…\): models must be"):
        load_study(None, flags[:1], ("models=4,1",))
    with pytest.raises(UnlearnkitError, match="KEY=VALUE"):
        load_study(None, ("task",), ("seed=0",))
    # hyperparameters as the command line's --set writes them, or as a spec's lists: the same configs
    ga = load_study(None, flags + ("hparams=ga.lr=0.1,ga.epochs=2",), ("seed=0",)).cells[0][1]
    spec = _spec(tmp_path, "[run]\ntask = 'digits-mlp'\nmodels = 3\nhparams = [['ga', 'lr', 0.1], ['ga', 'epochs', 2]]"
                 "\n[grid]\nseed = [0]\n")
    assert ga.hparams == load_study(spec).cells[0][1].hparams == (("ga", "lr", "0.1"), ("ga", "epochs", "2"))
    with pytest.raises(UnlearnkitError, match="METHOD.NAME=VALUE"):
        load_study(None, flags + ("hparams=ga.lr",), ("seed=0",))


def test_max_hours_bounds_the_whole_study_and_shared_arms_count_once(tmp_path):
    """A grid of cells each under the limit but together over it is refused before any cell trains, and
    nothing is written; an arm that several cells share (cells differing only in their methods share the
    originals, oracles and noise floor) is counted once."""
    from unlearnkit.study import study_budget
    flags = ("task=digits-mlp", "models=3", "bootstrap=0", "metrics=klom", f"cache_dir={tmp_path / 'cache'}")
    one = load_study(None, flags, ("methods=none,retrain,ga",))
    two = load_study(None, flags, ("methods=none,retrain,ga;none,retrain,finetune",))
    seeds = load_study(None, flags, ("seed=0,1",))
    with use(one.cells[0][1].compute):
        single, shared, apart = (study_budget([c for _, c in s.cells]) for s in (one, two, seeds))
        limit = 1.5 * single.seconds() / 3600  # hours: one cell fits, two do not
    assert shared.flops < 1.5 * single.flops  # the three arms once, plus finetune's few epochs
    assert apart.flops == pytest.approx(2 * single.flops, rel=0.01)  # other seeds: other arms
    # ga's job is the same in both cells (the methods a cell runs are not part of a job's key): counted once
    finetune = load_study(None, flags, ("methods=none,retrain,finetune",))
    with use(one.cells[0][1].compute):
        only_finetune = study_budget([c for _, c in finetune.cells])
    assert shared.method_flops == pytest.approx(single.method_flops + only_finetune.method_flops, rel=1e-6)
    # a clustered cell's originals are the random cell's: counted once
    near, random = (load_study(None, flags, (f"forget={f}",)) for f in ("random:30,near:1:30", "random:30"))
    with use(one.cells[0][1].compute):
        mixed, alone = (study_budget([c for _, c in s.cells]) for s in (near, random))
    assert mixed.flops == pytest.approx(alone.flops, rel=1e-6)
    over = load_study(None, flags + (f"max_hours={limit}",), ("seed=0,1",))
    with pytest.raises(UnlearnkitError, match="this study would train for"):
        run_study(over, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_out_holding_another_study_is_refused_unless_overwrite(tmp_path):
    flags = ("task=digits-logreg", "models=2", "methods=none", "bootstrap=0", "metrics=klom",
             f"cache_dir={tmp_path / 'cache'}")
    first, second = (load_study(None, flags, (f"seed={s}",)) for s in (0, 3))
    run_study(first, tmp_path / "out")
    run_study(first, tmp_path / "out")  # the same study: resumed (here, nothing to do)
    before = (tmp_path / "out" / "study.json").read_text()
    with pytest.raises(UnlearnkitError, match="holds another study"):
        run_study(second, tmp_path / "out")
    assert (tmp_path / "out" / "study.json").read_text() == before
    assert run_study(second, tmp_path / "out", overwrite=True)["study_id"] == second.study_id
    both = load_study(None, flags, ("seed=0,3",))  # extends the study there: no --overwrite needed
    assert len(run_study(both, tmp_path / "out")["cells"]) == 2
