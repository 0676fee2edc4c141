"""The zoo: cached ensembles are reused, interrupted training resumes exactly, bad files are not trusted."""
import pytest
import torch

import unlearnkit.zoo.train as zoo_train
from unlearnkit.tasks import get_task
from unlearnkit.zoo import ZooCache, arm_seeds, train_models

TASK = get_task("digits-logreg")


class Interrupted(Exception):
    pass


def test_cached_zoo_is_reused(digits, tmp_path, monkeypatch):
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    first = train_models(TASK, digits, pos, arm_seeds(0, 3), cache)
    assert not first.cached and first.seconds > 0

    def no_training(*a, **k):
        raise AssertionError("the zoo retrained a cached ensemble")
    monkeypatch.setattr(zoo_train, "fit", no_training)
    again = train_models(TASK, digits, pos, arm_seeds(0, 3), cache)
    assert again.cached and again.seconds == pytest.approx(first.seconds)
    for k in first.params:
        assert torch.equal(first.params[k], again.params[k])


def test_key_depends_on_what_made_the_models(digits, tmp_path):
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    other = train_models(TASK, digits, pos[1:], arm_seeds(0, 2), cache)
    assert not other.cached  # another training set
    assert not train_models(TASK, digits, pos, arm_seeds(5, 2), cache).cached  # other seeds


def test_interrupted_run_resumes_and_matches_uninterrupted(digits, tmp_path, monkeypatch):
    pos = torch.arange(len(digits.y_train))
    seeds = arm_seeds(0, 3)
    reference = train_models(TASK, digits, pos, seeds, None).params

    cache = ZooCache(tmp_path)
    real_save = ZooCache.save_checkpoint
    saved = []

    def save_then_die(self, key, ckpt, spent=None):
        real_save(self, key, ckpt, spent)
        saved.append(ckpt.epoch)
        if ckpt.epoch == 7:
            raise Interrupted
    monkeypatch.setattr(ZooCache, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        train_models(TASK, digits, pos, seeds, cache)
    assert cache.load(zoo_train.zoo_key(TASK, digits, pos, seeds)) is None  # no finished zoo was written

    saved.clear()
    resumed = train_models(TASK, digits, pos, seeds, cache)
    assert saved[0] == 8  # picked up after the last whole epoch
    for k in reference:
        torch.testing.assert_close(resumed.params[k], reference[k], rtol=1e-6, atol=1e-7)


def test_corrupt_weights_are_not_trusted(digits, tmp_path):
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    arm = train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    key = zoo_train.zoo_key(TASK, digits, pos, arm_seeds(0, 2))
    weights = cache.dir(key) / "models.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # half-written file
    assert cache.load(key) is None
    again = train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    assert not again.cached
    for k in arm.params:
        torch.testing.assert_close(again.params[k], arm.params[k])


def test_truncated_checkpoint_is_ignored(digits, tmp_path):
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    key = zoo_train.zoo_key(TASK, digits, pos, arm_seeds(0, 2))
    cache.dir(key).mkdir(parents=True)
    (cache.dir(key) / "checkpoint.pt").write_bytes(b"PK\x03\x04garbage")
    assert cache.load_checkpoint(key) is None
    assert not train_models(TASK, digits, pos, arm_seeds(0, 2), cache).cached
