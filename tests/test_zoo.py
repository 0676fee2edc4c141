"""The zoo: cached ensembles are reused, interrupted training resumes exactly, bad files are not trusted."""
import pytest
import torch
from conftest import Interrupted

import unlearnkit.zoo.train as zoo_train
from unlearnkit.tasks import get_task
from unlearnkit.zoo import ZooCache, arm_seeds, train_models

TASK = get_task("digits-logreg")


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


def test_interrupted_run_resumes_and_matches_uninterrupted(digits, tmp_path, interrupt_at):
    pos = torch.arange(len(digits.y_train))
    seeds = arm_seeds(0, 3)
    reference = train_models(TASK, digits, pos, seeds, None).params

    cache = ZooCache(tmp_path)
    interrupt_at(7)
    with pytest.raises(Interrupted):
        train_models(TASK, digits, pos, seeds, cache)
    assert cache.load(zoo_train.zoo_key(TASK, digits, pos, seeds)) is None  # no finished zoo was written

    saved = interrupt_at(None)
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
    manifest = cache.dir(key) / "manifest.json"
    kept = manifest.read_text()
    for junk in ("[]", "null", '"text"', "1"):  # JSON, but not a manifest: damaged, not a crash
        manifest.write_text(junk)
        assert cache.load(key) is None and cache.members(zoo_train.zoo_family(TASK, digits, pos)) == []
    manifest.write_text(kept)
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


def _key(digits, n):
    return zoo_train.zoo_key(TASK, digits, torch.arange(len(digits.y_train)), arm_seeds(0, n))


def test_a_second_run_waits_for_the_first_and_loads(digits, tmp_path, caplog):
    """Two runs, one cache: while one trains an entry (holds its lock), the other waits, then loads it."""
    import threading
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    done = {}
    with cache.lock(_key(digits, 2)):
        trained = train_models(TASK, digits, pos, arm_seeds(0, 2), None)
        worker = threading.Thread(target=lambda: done.setdefault("arm", train_models(TASK, digits, pos,
                                                                                     arm_seeds(0, 2), cache)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive()  # blocked on the lock, not training a second copy
        cache.save(_key(digits, 2), trained.params, {"label": "models"})
    worker.join(timeout=60)
    assert done["arm"].cached and "waiting" in caplog.text
    for k in trained.params:
        assert torch.equal(done["arm"].params[k], trained.params[k])


def test_lock_of_a_killed_run_is_recovered_and_its_temporaries_removed(digits, tmp_path):
    import subprocess
    import sys
    cache = ZooCache(tmp_path)
    d = cache.dir(_key(digits, 2))
    d.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, time, sys; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(d / "lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # dies holding the lock, as a run killed mid-training does
    holder.wait()
    stale = d / f".checkpoint.pt.tmp-{holder.pid}"
    stale.write_bytes(b"half a checkpoint")
    arm = train_models(TASK, digits, torch.arange(len(digits.y_train)), arm_seeds(0, 2), cache)
    assert not arm.cached and not stale.exists() and cache.load(_key(digits, 2)) is not None


def test_entry_with_another_model_count_is_reported_and_retrained(digits, tmp_path, caplog):
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    three = train_models(TASK, digits, pos, arm_seeds(0, 3), None)
    cache.save(_key(digits, 2), three.params, {"label": "models"})  # e.g. an entry copied by hand
    arm = train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    assert not arm.cached and all(v.shape[0] == 2 for v in arm.params.values())
    assert "damaged" in caplog.text and "does not hold 2 models" in caplog.text


def test_full_disk_is_one_clear_error_and_keeps_finished_entries(digits, tmp_path, monkeypatch):
    import errno

    from unlearnkit.errors import UnlearnkitError
    cache = ZooCache(tmp_path)
    pos = torch.arange(len(digits.y_train))
    train_models(TASK, digits, pos, arm_seeds(0, 2), cache)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("unlearnkit.zoo.cache.save_file", full)
    with pytest.raises(UnlearnkitError, match="is full"):
        train_models(TASK, digits, pos, arm_seeds(5, 2), cache)
    assert cache.load(_key(digits, 2)) is not None  # what was finished before is kept
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_resumed_arm_costs_what_the_uninterrupted_one_did(digits, tmp_path, interrupt_at):
    pos = torch.arange(len(digits.y_train))
    whole = train_models(TASK, digits, pos, arm_seeds(0, 2), None)
    cache = ZooCache(tmp_path)
    interrupt_at(5)
    with pytest.raises(Interrupted):
        train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    interrupt_at(None)
    resumed = train_models(TASK, digits, pos, arm_seeds(0, 2), cache)
    assert resumed.flops == whole.flops and resumed.earlier_flops > 0


@pytest.mark.parametrize("task", ["digits-logreg", "digits-mlp"])
def test_an_arm_is_assembled_from_the_cached_arms_of_its_family(digits, tmp_path, monkeypatch, task):
    """Model i depends on its seed alone, so N = 3 after N = 5 trains nothing (the first 3 models), and
    N = 8 after them trains only the 3 models no cached arm holds: bit for bit the arms trained afresh,
    each reused model charged its arm's cost per model."""
    TASK = get_task(task)
    pos = torch.arange(len(digits.y_train))
    fresh = {n: train_models(TASK, digits, pos, arm_seeds(0, n), None).params for n in (3, 8)}
    trained = []
    real = zoo_train._train
    monkeypatch.setattr(zoo_train, "_train", lambda *a, **k: trained.append(list(a[2].seeds)) or real(*a, **k))
    cache = ZooCache(tmp_path)
    five = train_models(TASK, digits, pos, arm_seeds(0, 5), cache)
    three = train_models(TASK, digits, pos, arm_seeds(0, 3), cache)
    assert trained == [arm_seeds(0, 5)] and three.cached
    assert three.flops == pytest.approx(five.flops * 3 / 5, rel=1e-6)
    eight = train_models(TASK, digits, pos, arm_seeds(0, 8), cache)
    assert trained[1:] == [arm_seeds(0, 8)[5:]] and not eight.cached
    for n, arm in ((3, three), (8, eight)):
        for k in arm.params:
            assert torch.equal(arm.params[k], fresh[n][k]), (n, k)
    assert train_models(TASK, digits, pos, arm_seeds(0, 8), cache).cached  # stored under its own key now
    assert len(trained) == 2
    other = train_models(TASK, digits, pos[1:], arm_seeds(0, 2), cache)  # another training set: another family
    assert not other.cached and trained[-1] == arm_seeds(0, 2)


def test_a_runs_budget_counts_only_the_models_no_cached_arm_holds(tmp_path):
    from unlearnkit.engine.compute import use
    from unlearnkit.experiment import RunConfig, budget, prepare, run

    def config(n):
        return RunConfig(task="digits-logreg", methods=("none",), models=n, cache_dir=str(tmp_path), bootstrap=0)

    def flops(n):  # as `run` estimates it, on the run's compute
        with use(config(n).compute):
            return budget(prepare(config(n))).flops
    fresh = flops(5)
    run(config(3))
    assert flops(5) == pytest.approx(fresh * 2 / 5)  # 2 new models in each of the 3 arms
    assert flops(3) == 0


def test_a_runs_budget_counts_the_arms_its_methods_train_from_scratch(tmp_path):
    """Retrain is the noise floor's arm and filter the same arm (counted once); SISA trains its deployed
    shards, the affected shards again without S_F, and its sharded oracles (the unaffected shards' second
    training is their first: counted once); IAU its restricted originals and oracles."""
    from unlearnkit.engine.compute import use
    from unlearnkit.experiment import RunConfig, budget, prepare
    from unlearnkit.methods.sisa import shard_partition

    def flops(methods, hparams=()):
        config = RunConfig(task="digits-logreg", methods=methods, models=3, forget="random:10",
                           cache_dir=str(tmp_path), bootstrap=0, hparams=hparams)
        with use(config.compute):
            p = prepare(config)
            return budget(p).flops, p
    reference, p = flops(("none",))
    n = len(p.dataset.y_train)
    per_example = reference / (n + 2 * (n - 10))  # per model and epoch: every arm has the same N and recipe
    assert flops(("none", "retrain", "filter"))[0] == reference
    forget = set(p.forget.positions.tolist())
    parts = shard_partition(n, 5, 0)
    affected = sum(len(part) - len(forget & set(part.tolist())) for part in parts if forget & set(part.tolist()))
    sisa = n + affected + (n - 10)
    assert 0 < affected < n - 10  # some shards hold no forget example
    assert flops(("none", "sisa"))[0] == pytest.approx(reference + per_example * sisa)
    # IAU's deployed models and oracles: the restricted recipe's (double backpropagation: at least twice a
    # step's cost); unrestricted (α = 0), they are the run's own originals and oracles
    assert flops(("none", "iau"))[0] == pytest.approx(reference + 2 * per_example * (n + n - 10))
    assert flops(("none", "iau"), (("iau", "alpha", "0"),))[0] == reference


def test_a_datamodels_budget_counts_the_subset_models_and_uncached_trak_originals(tmp_path, digits):
    """`unlearnkit datamodels` trains M + max(10, 20% of M) subset models on `subset` of the training set,
    and TRAK's originals on all of it unless the cache holds them."""
    from unlearnkit.engine.compute import resolve, use
    from unlearnkit.experiment import datamodels_budget
    task, cache = get_task("digits-logreg"), ZooCache(tmp_path)
    n = len(digits.y_train)
    with use(resolve("cpu", "fp32")):
        subsets = datamodels_budget(task, digits, 20, 0.5, 0, 0, cache).flops
        with_trak = datamodels_budget(task, digits, 20, 0.5, 2, 0, cache).flops
        per_example = subsets / (30 * round(0.5 * n))  # 20 subset models and 10 held out
        assert with_trak == pytest.approx(subsets + 2 * n * per_example)
        train_models(task, digits, torch.arange(n), arm_seeds(0, 2), cache, "originals")
        assert datamodels_budget(task, digits, 20, 0.5, 2, 0, cache).flops == pytest.approx(subsets)
