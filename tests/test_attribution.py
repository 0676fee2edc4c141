"""Datamodels, clustered forget sets, OM and DMM."""
import shutil

import numpy as np
import pytest
import torch

from unlearnkit.attribution import compute_datamodels, fit_datamodels, lds, load_datamodels, save_datamodels
from unlearnkit.data import load_dataset
from unlearnkit.engine import predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import Bench, RunConfig, prepare, run
from unlearnkit.forget import build_forget_set
from unlearnkit.methods import Context, get_method, make_hparams
from unlearnkit.metrics import klom, margins
from unlearnkit.tasks import get_task
from unlearnkit.zoo import RETRAIN_SEEDS, arm_seeds, train_models


def synthetic(m=400, n=30, targets=5, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(m, n, generator=g) < 0.5).float()
    w = torch.randn(n, targets, generator=g)
    y = masks @ w + 3.0 + noise * torch.randn(m, targets, generator=g)
    return masks, y, w


def test_datamodels_recover_a_known_linear_structure():
    masks, y, w = synthetic()
    dm = fit_datamodels(masks, y)
    est = dm.target_weights(range(5))
    for t in range(5):
        assert np.corrcoef(est[:, t], w[:, t])[0, 1] > 0.98
    test_masks = (torch.rand(50, 30, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    assert lds(dm, test_masks, test_masks @ w + 3.0).mean() > 0.9
    torch.testing.assert_close(dm.removal_effect([1, 4]), est[[1, 4]].sum(0), rtol=1e-4, atol=1e-4)


def test_principal_projections_match_explicit_pca():
    masks, y, _ = synthetic(m=60, n=12, targets=12)
    dm = fit_datamodels(masks, y, ridge=0.1)
    d = dm.target_weights(range(12)).T.double()  # rows: targets
    d = d - d.mean(0)
    _, _, vh = torch.linalg.svd(d, full_matrices=False)
    explicit = d @ vh[:2].T
    got = dm.principal_projections(range(12), 2).double()
    for k in range(2):  # singular vectors are defined up to sign
        assert min((got[:, k] - explicit[:, k]).abs().max(), (got[:, k] + explicit[:, k]).abs().max()) < 1e-3


def test_fit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="share M"):
        fit_datamodels(torch.zeros(10, 5), torch.zeros(9, 3))


@pytest.fixture(scope="module")
def digits_dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    from unlearnkit.zoo import ZooCache
    task, ds = get_task("digits-mlp"), load_dataset("digits")
    report = compute_datamodels(task, ds, 20, 0.5, 0, ZooCache(root / "cache"))
    save_datamodels(root / "dm", report)
    return task, ds, report, root


def test_saved_datamodels_reload_and_refuse_another_training_set(digits_dm):
    task, ds, report, root = digits_dm
    assert -1 <= report.lds_train <= 1 and report.held_out == 10
    dm = load_datamodels(root / "dm", task, ds)
    torch.testing.assert_close(dm.removal_effect([3, 5]), report.datamodels.removal_effect([3, 5]))
    with pytest.raises(UnlearnkitError, match="another training set"):
        load_datamodels(root / "dm", task, ds.subset_train(1000, 0))
    with pytest.raises(UnlearnkitError, match="fitted for task 'digits-mlp'"):
        load_datamodels(root / "dm", get_task("digits-logreg"), ds)
    with pytest.raises(UnlearnkitError, match="no readable datamodels"):
        load_datamodels(root / "nothing", task, ds)
    # damaged copies: an edited weight, a truncated file, a manifest that is not an object
    bad = root / "bad"
    shutil.copytree(root / "dm", bad)
    weights = (bad / "datamodels.safetensors").read_bytes()
    (bad / "datamodels.safetensors").write_bytes(weights[:-12] + bytes(12))
    with pytest.raises(UnlearnkitError, match="does not match the checksum"):
        load_datamodels(bad, task, ds)
    (bad / "datamodels.safetensors").write_bytes(weights[:200])
    with pytest.raises(UnlearnkitError, match="no readable datamodels"):
        load_datamodels(bad, task, ds)
    (bad / "datamodels.json").write_text("[]")
    with pytest.raises(UnlearnkitError, match="not an object"):
        load_datamodels(bad, task, ds)


def test_pc_forget_sets_are_deterministic_and_extreme(digits_dm):
    task, ds, report, root = digits_dm
    config = RunConfig(task="digits-mlp", forget="pc:1:both:30", models=2, cache_dir=str(root / "cache"),
                       datamodels=str(root / "dm"))
    first, again = prepare(config).forget, prepare(config).forget
    assert np.array_equal(first.ids, again.ids) and len(first) == 60
    proj = report.datamodels.principal_projections(np.arange(len(ds.y_train)), 1)[:, 0].numpy()
    chosen = np.isin(np.arange(len(proj)), first.positions)
    assert proj[chosen].max() >= np.sort(proj)[-30] and proj[chosen].min() <= np.sort(proj)[29]
    top = prepare(RunConfig(**{**config.__dict__, "forget": "pc:1:top:30"})).forget
    assert set(np.argsort(-proj)[:30]) == set(top.positions)


def test_near_forget_set_is_nearest_neighbours(tmp_path):
    config = RunConfig(task="digits-logreg", forget="near:7:15", models=2, cache_dir=str(tmp_path))
    fs = prepare(config).forget
    ds = load_dataset("digits")
    anchor = int((ds.train_ids == 7).nonzero())
    assert anchor in fs.positions and len(fs) == 15
    dist = (ds.x_train - ds.x_train[anchor]).pow(2).sum(1)  # logreg's embedding is its input
    assert dist[fs.positions].max() <= dist.sort().values[14] + 1e-5
    with pytest.raises(UnlearnkitError, match="not in the training set"):
        prepare(RunConfig(**{**config.__dict__, "forget": "near:100000:5"}))
    with pytest.raises(UnlearnkitError, match="pc:K:top"):
        build_forget_set("pc:1:middle:5", ds)


def test_om_against_the_oracles_it_matched_scores_far_below_none(tmp_path):
    config = RunConfig(task="digits-mlp", forget="random:50", methods=("none",), models=8, cache_dir=str(tmp_path),
                       precision="fp32")  # in bf16 the margin depends on the machine: AMX or AVX-512 BF16 kernels
    bench = Bench(prepare(config))
    p = bench.p
    ctx = Context(p.task, p.dataset, bench.forward, bench.originals.params, bench.forget.positions, bench.retain,
                  arm_seeds(0, 8), 0, p.cache)
    matched = train_models(p.task, p.dataset, torch.as_tensor(bench.retain), arm_seeds(RETRAIN_SEEDS, 8), p.cache)
    x, y = p.dataset.x_train, p.dataset.y_train
    target = margins(predict(bench.forward, matched.params, x), y).numpy()
    unlearned = get_method("om").fn(ctx, make_hparams("om", {"epochs": 20, "lr": 3e-3}))
    f = bench.forget.positions
    score = lambda params: np.percentile(klom(margins(predict(bench.forward, params, x), y).numpy(), target)[f], 95)
    assert score(unlearned) < 0.8 * score(bench.originals.params)  # measured: 7.4 against 10.0 (8.0 against 9.9 in bf16 without AMX)


def test_dmm_runs_end_to_end_with_saved_datamodels(digits_dm):
    task, ds, report, root = digits_dm
    results = run(RunConfig(task="digits-mlp", forget="random:30", methods=("none", "dmm"), models=3,
                            cache_dir=str(root / "cache"), bootstrap=0,
                            hparams=(("dmm", "datamodels", str(root / "dm")),)))
    row = results["rows"][1]
    assert not row["diverged"] and row["hparams"]["datamodels"] == str(root / "dm")
    assert row["accuracy"]["val"] > 0.8
