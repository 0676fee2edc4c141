"""Corrective unlearning: manipulated training sets, identified fractions, oracles on the corrected data.
Filtering everything that is manipulated is exact (it sits at the noise floor); the originals learn the
poison and the corrected oracles do not; bad specs fail before any training."""
import json

import numpy as np
import pytest
import torch

from unlearnkit.corrective import corrective, format_corrective
from unlearnkit.data import load_dataset
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig
from unlearnkit.forget.manipulate import identified, manipulate

METHODS = ("none", "filter", "finetune", "acdc", "nablatau", "llmu", "potion-lf")
FAST = (("acdc", "iterations", "20"), ("acdc", "eval_every", "5"), ("nablatau", "epochs", "2"),
        ("llmu", "epochs", "5"), ("finetune", "epochs", "2"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _study_config(root) -> RunConfig:
    return RunConfig(task="digits-mlp", forget="poison:80", methods=METHODS, models=4, cache_dir=str(root / "cache"),
                     bootstrap=0, metrics=("klom",), estimators=(), hparams=FAST)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrective")
    return corrective(_study_config(root), "poison:80:target=0", (0.5, 1.0), root / "out"), root


def test_a_finished_study_is_estimated_to_train_nothing(study, checked_budget):
    """Every arm is cached and every fraction's job cells are kept (the estimate keys them as each fraction's
    Bench does): a rerun is estimated at 0, never refused under --max-hours for work it will not do."""
    _, root = study
    budget = checked_budget(lambda: corrective(_study_config(root), "poison:80:target=0", (0.5, 1.0)))
    assert budget.flops == budget.method_flops == 0


def test_manipulations_change_only_what_they_say(digits):
    p = manipulate("poison:50:target=2:patch=3", digits, 0)
    m = torch.as_tensor(p.positions)
    assert len(m) == 50 and (p.dataset.y_train[m] == 2).all()
    untouched = torch.ones(len(digits.y_train), dtype=torch.bool)
    untouched[m] = False
    assert torch.equal(p.dataset.x_train[untouched], digits.x_train[untouched])
    corner = p.dataset.x_train[m].reshape(-1, 8, 8)[:, 5:, 5:]
    assert torch.equal(corner, p.trigger(digits.x_train[:1]).reshape(8, 8)[5:, 5:].expand_as(corner))
    s = manipulate("swap:1:7:40", digits, 0)
    changed = (s.dataset.y_train != digits.y_train).nonzero().flatten()
    assert len(changed) == 40 and set(digits.y_train[changed].tolist()) == {1, 7}
    assert (s.dataset.y_train[changed] == 8 - digits.y_train[changed]).all()  # 1 ↔ 7
    n = manipulate("noise:30", digits, 0)
    assert ((n.dataset.y_train != digits.y_train).sum() == 30) and np.array_equal(n.positions, np.sort(n.positions))
    sets = identified(p.positions, [0.1, 0.5, 1.0], 0)
    assert set(sets[0.1]) < set(sets[0.5]) < set(sets[1.0]) == set(p.positions)  # nested


@pytest.mark.parametrize("spec, match", [
    ("poison:100000", "only"), ("poison:10:target=12", "out of range"), ("poison:10:patch=9", "patch"),
    ("swap:3:3:10", "differ"), ("swap:1:2", "swap:A:B:K"), ("noise", "noise:K"), ("flip:3", "unknown manipulation"),
    ("poison:10:colour=3", "not an option")])
def test_impossible_manipulations_are_refused(digits, spec, match):
    with pytest.raises(UnlearnkitError, match=match):
        manipulate(spec, digits, 0)


def test_fractions_outside_zero_one_are_refused(tmp_path):
    config = RunConfig(task="digits-mlp", models=2, cache_dir=str(tmp_path), methods=("none",))
    for bad in ((0.0,), (1.5,), (-0.1, 0.5)):
        with pytest.raises(UnlearnkitError, match="identified"):
            corrective(config, "poison:20", bad)
    with pytest.raises(UnlearnkitError, match="^relearn must be"):
        corrective(config, "poison:20", (1.0,), relearn=-1)
    with pytest.raises(UnlearnkitError, match="more than once"):
        corrective(config, "poison:20", (0.5, 1.0, 0.5))
    assert not any(tmp_path.iterdir())  # nothing trained or cached


def test_filtering_everything_is_exact_and_the_poison_is_learned_then_removed(study):
    results, root = study
    by_f = {b["fraction"]: {r["label"]: r for r in b["rows"]} | {"floor": b["noise_floor"]}
            for b in results["fractions"]}
    full, half = by_f[1.0], by_f[0.5]
    assert full["filter"]["klom_p95"] == full["floor"]["klom_p95"]  # the same arm: exact by construction
    asr = {k: r["accuracy"]["attack"] for k, r in full.items()}
    assert asr["none"] > 0.5 > 0.2 > asr["floor"]  # the originals learned the trigger, the corrected oracles not
    assert asr["filter"] == asr["floor"]
    assert half["filter"]["accuracy"]["attack"] > asr["floor"]  # half identified: the rest still poisons
    assert "unidentified" in half["none"]["klom_p95"] and "unidentified" not in full["none"]["klom_p95"]
    for name in ("acdc", "nablatau", "llmu", "potion-lf"):  # each method moves the forget set, keeps utility
        r = full[name]
        assert r["accuracy"]["forget"] < full["none"]["accuracy"]["forget"], name
        assert r["accuracy"]["val"] > full["none"]["accuracy"]["val"] - 0.15, name
    text = format_corrective(results)
    assert "identified f = 0.5" in text and "ASR" in text and max(len(line) for line in text.splitlines()) <= 100
    assert "Warning: with N = " in text  # as a run's table warns at small N
    on_disk = json.loads((root / "out" / "corrective.json").read_text())
    assert on_disk["run_id"] == results["run_id"] and (root / "out" / "figures" / "corrective.png").is_file()
    assert "<svg" in (root / "out" / "report.html").read_text()


def test_era_routes_the_poison_into_units_it_then_removes_and_its_control_does_not(study):
    """Gradient routing (Cloud et al. 2024) with the whole poison identified: ablating the routed units
    removes the trigger; the same expansion, L1, ablation and fine-tune without routing leave it in place."""
    _, root = study
    config = RunConfig(task="digits-mlp", forget="poison:80", methods=("none", "era", "era-control"), models=4,
                       cache_dir=str(root / "cache"), bootstrap=0, metrics=("klom",), estimators=())
    block = corrective(config, "poison:80:target=0", (1.0,), relearn=16)["fractions"][0]
    rows = {r["label"]: r for r in block["rows"]}
    asr = {k: r["accuracy"]["attack"] for k, r in rows.items()}
    assert asr["era"] < 0.1 < 0.9 < asr["era-control"]
    assert abs(asr["era-control"] - asr["none"]) < 0.05
    assert rows["era"]["accuracy"]["val"] > rows["none"]["accuracy"]["val"] - 0.05
    # the relearning attack: 16 poisoned examples bring the trigger back no faster after ERA than after
    # exact retraining on the corrected data (it was removed, not hidden); the originals never lost it
    half = {k: r["relearn"]["forget"]["steps_to_half"] for k, r in rows.items()}
    floor = block["noise_floor"]["relearn"]["forget"]["steps_to_half"]
    assert half["none"] == half["era-control"] == 0 and floor > 5
    assert half["era"] is None or half["era"] >= floor - 3
    assert len(rows["era"]["relearn"]["retain"]["curve"]) == 41


def test_era_needs_hidden_layers(tmp_path):
    config = RunConfig(task="digits-logreg", models=2, cache_dir=str(tmp_path), methods=("era",))
    with pytest.raises(UnlearnkitError, match="hidden layers"):
        corrective(config, "poison:20", (1.0,))
    assert not (tmp_path / "zoo").exists()


def _budget(checked_budget, tmp_path, methods, fractions, relearn=0, cache=True):
    """The Budget a corrective study checks before it trains anything (the check is stopped there)."""
    config = RunConfig(task="digits-mlp", forget="poison:80", methods=methods, models=4, bootstrap=0,
                       cache_dir=str(tmp_path / "cache") if cache else "", metrics=("klom",), estimators=())
    return checked_budget(lambda: corrective(config, "poison:80:target=0", fractions, relearn=relearn))


def test_budget_counts_every_fraction_the_arms_methods_retrain_and_the_attack(checked_budget, tmp_path):
    """A study's estimate counts each fraction's method runs, the arms its methods train from scratch (filter
    on D ∖ S_F: the corrected oracles' arm when all of M is identified, another arm below that; ERA's
    widened arm), and the relearning attack on every row; each arm once."""
    from unlearnkit.methods.finetune import FinetuneParams
    from unlearnkit.relearn import RELEARN_STEPS
    from unlearnkit.tasks import get_task
    task = get_task("digits-mlp")
    n, m, models, epochs = len(load_dataset("digits").y_train), 80, 4, task.recipe.epochs

    def flops(methods, fractions, relearn=0):
        return _budget(checked_budget, tmp_path, methods, fractions, relearn).flops

    reference = flops(("none",), (0.5,))  # originals on D, oracles and the noise floor on D ∖ M
    per_example = reference / (models * epochs * (n + 2 * (n - m)))  # one model's training FLOPs per example
    assert flops(("none",), (0.5, 1.0)) == reference  # the reference arms are shared by every fraction
    arm = lambda examples, scale=1.0: per_example * models * epochs * examples * scale  # noqa: E731
    finetune = per_example * models * FinetuneParams().epochs  # per forget example
    assert flops(("none", "finetune"), (0.5,)) == pytest.approx(reference + finetune * 40)
    assert flops(("none", "finetune"), (0.5, 1.0)) == pytest.approx(reference + finetune * (40 + 80))
    assert flops(("none", "filter"), (1.0,)) == pytest.approx(reference)  # filter at f = 1 is the floor's arm
    assert flops(("none", "filter"), (0.5, 1.0)) == pytest.approx(reference + arm(n - 40))
    era = flops(("none", "era", "era-control"), (0.5,)) - reference
    assert era > 2 * arm(n)  # two widened arms on D (routed and not), each costlier than the task's model
    k = 10
    rows = 2  # `none` and the noise floor
    attack = per_example * models * RELEARN_STEPS * rows * 2 * k  # k identified and k retained, per row
    assert flops(("none",), (0.5, 1.0), relearn=k) == pytest.approx(reference + 2 * attack)
    sisa = flops(("none", "sisa"), (0.5,))  # an ensemble's row is not probed: the attack runs on two rows still
    assert flops(("none", "sisa"), (0.5,), relearn=k) == pytest.approx(sisa + attack)
