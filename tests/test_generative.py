"""Generative unlearning quality from sequence scores (metrics.generative); its wiring into `llm ood` is
tested in test_lm_pipeline."""

import numpy as np
import pytest

from unlearnkit.metrics.generative import (
    difficulty,
    forget_score_null,
    memorisation,
    speed_correlations,
    steps_to_oracle,
)
from unlearnkit.metrics.mia import neurips23_epsilons as epsilons
from unlearnkit.metrics.mia import neurips23_forget_score


def forget_score(eps, n):
    return neurips23_forget_score(eps, n_models=n)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_the_null_score_is_what_an_exact_unlearner_gets(rng):
    a, b = rng.normal(size=(8, 40)), rng.normal(size=(8, 40))
    null = forget_score_null(a, b, reps=10)
    assert 0.1 < null < 0.7  # far below 1: chance separations with few models
    assert abs(forget_score(epsilons(a, b), 8) - null) < 0.2
    assert forget_score_null(a, b + 5.0, reps=10) > forget_score(epsilons(a, b + 5.0), 8)


def test_memorisation_and_difficulty(rng):
    without = rng.normal(-4.0, 0.2, size=(5, 7))            # oracles: never saw the items
    with_ = without[:4] + np.linspace(0.5, 3.0, 7)          # originals: trained on them, likelier
    mem = memorisation(with_, without)
    assert mem.shape == (7,) and (mem > 0).all()
    assert np.all(np.diff(mem) > 0)
    np.testing.assert_allclose(memorisation(without, without), 0.0, atol=1e-12)
    dif = difficulty(without)
    np.testing.assert_allclose(dif, -without.mean(0))
    assert (dif > 0).all()  # a mean NLL


def test_steps_to_oracle_and_speed_correlations():
    oracle = np.array([[-5.0, -5.0, -5.0, -5.0], [-4.0, -4.0, -4.0, -4.0]])  # oracles' highest: -4
    start = np.array([-1.0, -2.0, -3.0, -6.0])  # item 3 starts below: reached at 0 steps
    per_step = np.array([1.0, 1.0, 1.0, 1.0])   # one nat per step for every item
    steps = [0, 1, 2, 3]
    u = np.stack([np.tile(start - per_step * s, (3, 1)) for s in steps])
    need = steps_to_oracle(steps, u, oracle)
    np.testing.assert_array_equal(need, [3, 2, 1, 0])
    assert np.isnan(steps_to_oracle([0, 1], u[:2], oracle)[0])  # item 0 needs 3 steps: not within 1
    mem = np.array([3.0, 2.0, 1.0, -1.0])  # the more memorised, the slower
    corr = speed_correlations(need, memorisation=mem, difficulty=-mem)
    assert corr["memorisation"]["rho"] == pytest.approx(1.0)
    assert corr["difficulty"]["rho"] == pytest.approx(-1.0)
    censored = speed_correlations([np.nan, 2, 1, 0], memorisation=mem)  # unreached ranks slowest
    assert censored["memorisation"]["rho"] == pytest.approx(1.0)
    flat = speed_correlations([2, 2, 2, 2], memorisation=mem)
    assert flat["memorisation"]["rho"] is None and flat["memorisation"]["items"] == 4


@pytest.mark.parametrize("call, match", [
    (lambda: memorisation(np.zeros((3, 4)), np.zeros((3, 5))), "same items"),
    (lambda: difficulty(np.zeros((0, 4))), "at least 1 model"),
    (lambda: steps_to_oracle([2, 1], np.zeros((2, 3, 4)), np.zeros((3, 4))), "strictly increasing"),
    (lambda: steps_to_oracle([0, 1], np.zeros((3, 3, 4)), np.zeros((3, 4))), "one point per step"),
    (lambda: speed_correlations([1, 2, 3], memorisation=[1, 2]), "one value per item"),
])
def test_bad_input_is_refused_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()
