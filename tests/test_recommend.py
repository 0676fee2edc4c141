"""Recommendation unlearning (the MMRecUn setting): generated interactions, BPR matrix factorisation trained
by the zoo, interaction/user/item forget requests, Recall@K and NDCG@K, and the run end to end."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearnkit.data import Interactions, load_dataset
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiment import RunConfig, prepare, run
from unlearnkit.forget import build_forget_set
from unlearnkit.methods.rec.mmrecun import reverse_bpr_loss
from unlearnkit.metrics import recall_ndcg_at_k
from unlearnkit.models import bpr_loss
from unlearnkit.report import format_table


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("rec-synth-tiny")


def test_generated_interactions_are_seeded_and_well_formed(tiny):
    again = load_dataset("rec-synth-tiny")
    assert isinstance(tiny, Interactions) and again.fingerprint == tiny.fingerprint
    assert torch.equal(again.x_train, tiny.x_train) and torch.equal(again.item_features, tiny.item_features)
    assert not set(tiny.train_ids.tolist()) & set(tiny.val_ids.tolist())
    known = tiny.matrix() | tiny.matrix(val=True)
    for x in (tiny.x_train, tiny.x_val):  # a row's negatives are items its user never interacted with
        assert not known[x[:, :1].expand(-1, x.shape[1] - 2).numpy(), x[:, 2:].numpy()].any()
    assert tiny.matrix(val=True).any(1).all() and tiny.matrix().any(1).all()  # every user in both splits
    assert tiny.x_train.shape[1] == tiny.num_classes + 1 and (tiny.y_train == 0).all()


def test_bpr_is_cross_entropy_over_the_positive_and_one_negative_and_reverse_swaps_them():
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.0]])
    expected = -torch.log(torch.sigmoid(scores[:, :1] - scores[:, 1:])).mean()
    assert torch.allclose(bpr_loss(scores), expected)
    pair = scores[:, :2]  # K = 1: BPR is the classifier's cross-entropy with the positive as the label
    assert torch.allclose(bpr_loss(pair), F.cross_entropy(pair, torch.zeros(2, dtype=torch.long)))
    assert torch.allclose(reverse_bpr_loss(pair), bpr_loss(pair.flip(1)))
    assert torch.allclose(reverse_bpr_loss(scores), -torch.log(torch.sigmoid(scores[:, 1:] - scores[:, :1])).mean())


def test_recall_and_ndcg_on_a_hand_computed_case():
    scores = np.array([[[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]]])  # 1 model, 2 users, 5 items
    relevant = np.array([[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=bool)  # the second user has none: skipped
    exclude = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    out = recall_ndcg_at_k(scores, relevant, exclude, k=2)  # ranked: items 1, 2 (item 0 excluded): one hit at rank 0
    assert out["recall"][0] == pytest.approx(0.5)
    assert out["ndcg"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert recall_ndcg_at_k(scores, relevant, exclude, k=4)["recall"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both relevant and excluded"):
        recall_ndcg_at_k(scores, relevant, relevant, k=2)
    with pytest.raises(ValueError, match="k must be"):
        recall_ndcg_at_k(scores, relevant, exclude, k=5)


def test_user_item_and_interaction_requests(tiny):
    users = tiny.users_of(build_forget_set("users:3", tiny, seed=0).positions)
    assert len(np.unique(users)) == 3
    assert (np.isin(tiny.x_train[:, 0].numpy(), users) == np.isin(
        np.arange(len(tiny.y_train)), build_forget_set("users:3", tiny, seed=0).positions)).all()  # all of theirs
    named = build_forget_set("user:7,11", tiny)
    assert set(tiny.users_of(named.positions)) == {7, 11}
    assert len(named) == int(np.isin(tiny.x_train[:, 0].numpy(), [7, 11]).sum())
    items = build_forget_set("item:3", tiny)
    assert set(tiny.items_of(items.positions)) == {3} and len(items) == int((tiny.x_train[:, 1] == 3).sum())
    assert len(np.unique(tiny.items_of(build_forget_set("items:2", tiny, seed=1).positions))) == 2
    assert len(build_forget_set("interactions:0.1", tiny)) == round(0.1 * len(tiny.y_train))


@pytest.mark.parametrize("spec, needle", [
    ("user:9999", "user 9999 does not exist: rec-synth-tiny has users 0..59"),
    ("item:80", "item 80 does not exist: rec-synth-tiny has items 0..79"),
    ("user:-1", "user -1 does not exist"),
    ("users:61", "asks for 61 users; 60 have training interactions"),
    ("class:0", "malformed forget spec"),          # a classifier's kind: not for interactions
])
def test_bad_recommendation_requests_raise(tiny, spec, needle):
    with pytest.raises(UnlearnkitError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        build_forget_set(spec, tiny)


def test_recommendation_kinds_are_refused_on_a_classifier_dataset(digits):
    with pytest.raises(UnlearnkitError, match="malformed forget spec 'users:2'"):
        build_forget_set("users:2", digits)


def test_recommendation_tasks_get_their_own_defaults_and_methods():
    config = RunConfig(task="rec-mf-tiny", models=2)
    assert config.forget == "interactions:0.05" and config.methods == ("none", "retrain", "finetune", "mmrecun")
    with pytest.raises(UnlearnkitError, match="unknown method 'ga'; known methods: .*mmrecun"):
        prepare(RunConfig(task="rec-mf-tiny", methods=("none", "ga"), models=2, cache_dir=""))


def test_unknown_user_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(UnlearnkitError, match="user 500 does not exist"):
        run(RunConfig(task="rec-mf-tiny", forget="user:500", models=2, cache_dir=str(tmp_path), bootstrap=0))
    assert not (tmp_path / "zoo").exists()


MMRECUN = (("mmrecun", "batch_size", "16"), ("mmrecun", "lr", "3e-3"))


@pytest.fixture(scope="module")
def rec_run(tmp_path_factory):
    """rec-mf-tiny, 10% of the interactions forgotten, N = 4 per arm (seconds)."""
    root = tmp_path_factory.mktemp("rec_run")
    config = RunConfig(task="rec-mf-tiny", forget="interactions:0.1", models=4, cache_dir=str(root / "cache"),
                       bootstrap=0, metrics=("klom",), hparams=MMRECUN)
    return run(config, out=root / "out")


def _row(results, method):
    return next(r for r in results["rows"] if r["method"] == method)


def test_run_defaults_and_table(rec_run):
    assert [r["method"] for r in rec_run["rows"]] == ["none", "retrain", "finetune", "mmrecun"]
    assert rec_run["forget_set"]["size"] == 58
    assert "recall@20 forget" in format_table(rec_run)


def test_none_far_retrain_at_the_floor_bpr_methods_between(rec_run):
    """Forget KLoM (Gaussian-fit means: the histogram's floor is ~10 nats at N = 4): the originals are far
    from the oracles, the retrain arm is no farther on forgotten interactions than on retained ones, and
    both BPR methods land in between."""
    mean = {r["method"]: r["klom_estimators"]["gauss"]["mean"] for r in rec_run["rows"]}
    assert mean["none"]["forget"] > 3 * mean["retrain"]["forget"]
    assert mean["retrain"]["forget"] < 1.5 * max(mean["retrain"]["retain"], mean["retrain"]["val"])
    for method in ("finetune", "mmrecun"):
        assert mean["retrain"]["forget"] < mean[method]["forget"] < mean["none"]["forget"], method


def test_mmrecun_lowers_forget_recall_and_keeps_held_out_recall(rec_run):
    rank = {r["method"]: r["ranking"] for r in rec_run["rows"]}
    assert rank["none"]["k"] == 20
    assert rank["none"]["recall"]["forget"] > rank["retrain"]["recall"]["forget"] + 0.15  # the originals memorised
    assert rank["mmrecun"]["recall"]["forget"] < rank["none"]["recall"]["forget"] - 0.1
    assert abs(rank["mmrecun"]["recall"]["val"] - rank["none"]["recall"]["val"]) < 0.05
    assert rank["mmrecun"]["ndcg"]["forget"] < rank["none"]["ndcg"]["forget"]
