"""Inference-time LM methods (`sae-clamp`, `guard`) scored as rows by the bench itself: every metric,
teacher-forced and generated, goes through the method (`lm.steering`), and KLoM still sees the knowledge."""
import pytest

from unlearnkit.methods.base import make_hparams
from unlearnkit.methods.lm import LM_REGISTRY
from unlearnkit.runs import Job

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tiny_lm_bench):
    return tiny_lm_bench


def _row(bench, method):
    row, extra = bench.run_job(Job(method, method, make_hparams(method, None, LM_REGISTRY)))
    assert not row["diverged"], row.get("why")
    return row


@pytest.mark.parametrize("method", ["guard", "sae-clamp"])
def test_inference_time_methods_suppress_what_the_weights_still_know(bench, method):
    none, row = _row(bench, "none"), _row(bench, method)
    assert "weights untouched" in row["mechanism"] and "mechanism" not in none
    assert row["probability"]["forget"] < none["probability"]["forget"] - 0.3   # teacher-forced, through it
    assert row["forget_rouge"] < none["forget_rouge"] - 0.2                     # generated, through it
    assert row["model_utility"] > none["model_utility"] - 0.1
    assert row["klom_p95"]["forget"] > 5.0   # far from the oracles: suppressed, not removed
    if method == "guard":  # its classifier, reported with the row: forget questions flagged, retained ones not
        assert row["steering"]["forget_recall"] >= 0.9 and row["steering"]["retain_flag_rate"] < 0.1
        assert set(row["steering"]) == {"accuracy", "forget_recall", "retain_flag_rate", "val_flag_rate",
                                        "neighbour_count"}
    else:
        assert "steering" not in row
