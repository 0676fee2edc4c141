"""`unlearnkit generalisation`: random-label forgetting of one class, its spread to held-out examples, its
collateral damage, and the linear probe that still finds the class (Zhang, Choshen & Andreas 2024)."""
import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig
from unlearnkit.generalisation import FORGET_ONLY, format_generalisation, generalisation, generalisation_ratio


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("gen-cache"))
    config = RunConfig(task="digits-mlp", methods=("none", "retrain", "random-labels"), models=2, bootstrap=0,
                       cache_dir=cache)
    return generalisation(config, 3, "0.5", tmp_path_factory.mktemp("gen-out"))


def _row(results, label):
    return next(r for r in results["rows"] if r["label"] == label)


def test_random_labels_forget_the_relabelled_examples_and_the_probe_still_finds_the_class(results):
    none = _row(results, "none")
    assert none["accuracy"]["forget"] > 0.95 and none["probe_accuracy"]["forget"] > 0.9
    for label in ("random-labels", FORGET_ONLY):
        r = _row(results, label)
        assert r["accuracy"]["forget"] < 0.2              # the relabelled examples are forgotten
        assert r["probe_accuracy"]["forget"] > 0.8        # ... but a linear probe still reads their class
        assert r["accuracy"]["val_other"] > 0.8           # collateral damage is measured, and small here
        assert r["generalisation"] == pytest.approx(
            (none["accuracy"]["val_class"] - r["accuracy"]["val_class"])
            / (none["accuracy"]["forget"] - r["accuracy"]["forget"]))
    assert none["generalisation"] is None
    assert results["forget"]["held_out"] > 0 and results["forget"]["size"] > 0
    table = format_generalisation(results)
    assert FORGET_ONLY in table and "probe" in table and "Warning: with N = " in table


def test_the_forget_only_setting_trains_on_the_forget_set_alone(results):
    assert _row(results, FORGET_ONLY)["hparams"]["retain_weight"] == 0
    assert _row(results, "random-labels")["hparams"]["retain_weight"] == 1


def test_no_ratio_when_nothing_was_forgotten():
    none = {"accuracy": {"forget": 1.0, "val_class": 0.9}}
    assert generalisation_ratio({"accuracy": {"forget": 0.98, "val_class": 0.5}}, none) is None


def test_bad_input_fails_before_training(tmp_path):
    config = RunConfig(task="digits-mlp", methods=("none",), models=2, bootstrap=0, cache_dir=str(tmp_path))
    with pytest.raises(UnlearnkitError, match="class"):
        generalisation(config, 10, "0.5")
    with pytest.raises(UnlearnkitError, match="held out"):
        generalisation(config, 3, "1.0")
