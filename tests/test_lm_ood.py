"""Forgetting in-distribution vs out-of-distribution items on the tiny task (`lm_ood.id_vs_ood`)."""
import json

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig
from unlearnkit.lm_ood import id_vs_ood

TASK = "tofu-synth-tiny"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ood(tiny_lm_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "out"
    config = RunConfig(task=TASK, models=3, cache_dir=tiny_lm_cache, bootstrap=0)
    return config, id_vs_ood(config, "ga", authors=2, steps=(1, 6), out=out), out


def test_id_vs_ood_records_a_curve_per_kind(ood):
    """Per kind: the curve, and the NeurIPS'23 ε over sequence scores with its permutation null, each forget
    item's memorisation and the step it reached the oracles (metrics.generative)."""
    from unlearnkit.lm_ood import format_id_vs_ood
    config, res, out = ood
    assert json.loads((out / "id_vs_ood.json").read_text()) == json.loads(json.dumps(res))
    for kind, spec in (("in-distribution", "authors:0.05"), ("out-of-distribution", "canaries:10")):
        r = res[kind]
        assert r["spec"] == spec and [p["steps"] for p in r["curve"]] == [1, 6]
        first, last = r["curve"]
        assert last["forget_probability"] < first["forget_probability"]  # more ascent, less likely answers
        size = len(r["examples"]["ids"])
        assert size == res["config"]["size"]
        # the originals were trained on the forget items: memorised, and told apart from the oracles
        assert all(m > 0 for m in r["examples"]["memorisation"])
        assert r["original"]["epsilon_forget_score"] < r["original"]["epsilon_forget_score_null"]
        for p in r["curve"]:
            assert len(p["epsilon_per_item"]) == size
            assert 0.0 <= p["epsilon_forget_score"] <= 1.0 and 0.0 <= p["epsilon_forget_score_null"] <= 1.0
        assert r["speed"]["reached"] >= 1 and r["speed"]["items"] == size  # ascent reaches the oracles
        assert set(r["examples"]["steps_to_oracle"]) <= {0, 1, 6, None}
    text = format_id_vs_ood(res)
    assert "F (null)" in text and "memorisation" in text and "forget Q" in text
    page = (out / "report.html").read_text()  # the curves as a figure, in a report of its own
    assert page.count("<svg") == 1 and (out / "figures" / "id_vs_ood.png").is_file()
    with pytest.raises(UnlearnkitError, match="canaries"):
        id_vs_ood(config, "ga", authors=5, steps=(1,))


def test_id_vs_ood_points_are_cells_a_rerun_reads_back(ood, monkeypatch):
    """The curve's points are cells (cells.run_cells): the same curve again computes no point and reads
    the same numbers."""
    from unlearnkit.lm_experiment import LMBench
    config, first, _ = ood
    monkeypatch.setattr(LMBench, "run_job", lambda self, job: pytest.fail(f"{job.label} was computed again"))
    monkeypatch.setattr(LMBench, "reference_seq", property(lambda self: pytest.fail("the curves read no MIA")))
    assert id_vs_ood(config, "ga", authors=2, steps=(1, 6)) == first


def test_the_curves_budget_no_retrain_arm():
    """The curves read no MIA AUC, so neither the study nor its budget trains the Reference attack's retrain
    arm: the budget is the originals (n items) and the oracles (n − f), where a run's adds a second n − f."""
    from unlearnkit.lm.task import get_lm_task, load_tofu
    from unlearnkit.lm_experiment import lm_budget
    data = load_tofu(get_lm_task(TASK))
    config = RunConfig(task=TASK, forget="authors:0.05", models=3, bootstrap=0)
    n, f = len(data.items), len(data.forget_positions(config.forget, config.seed))
    run, curves = (lm_budget(config, data, [], None, reference=r).flops for r in (True, False))
    retrain_arm = run - curves
    assert retrain_arm / (curves - retrain_arm) == pytest.approx((n - f) / n)


def test_a_step_count_given_twice_is_refused(tmp_path):
    config = RunConfig(task=TASK, models=3, cache_dir=str(tmp_path / "cache"), bootstrap=0)
    with pytest.raises(UnlearnkitError, match="more than once"):
        id_vs_ood(config, "ga", authors=2, steps=(1, 6, 1), out=tmp_path / "out")
    assert not any(tmp_path.iterdir())
