"""CIFAR-10 binary loader and the resnet9 family under the vectorised engine (fake data, small widths)."""
import importlib
import json

import numpy as np
import pytest
import torch

from unlearnkit.data import LOADERS, Dataset
from unlearnkit.data import cifar10 as c10
from unlearnkit.engine import EpochStream, Forward, Optim, fit, predict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models import FAMILIES, build_model, init_params
from unlearnkit.tasks import TASKS, Recipe, Task
from unlearnkit.zoo.train import cross_entropy_loss, template

r9 = importlib.import_module("unlearnkit.models.resnet9")  # the module (`models.resnet9` is the family)
SHAPE = (3, 32, 32)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: one thread is faster
SMALL = (8, 16, 32, 16)


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test sees its own calibration registry (the loader registers "cifar10")."""
    monkeypatch.setattr(r9, "CALIBRATIONS", {})
    monkeypatch.delenv("UNLEARNKIT_DATA", raising=False)
    return r9


def write_fake(directory, records=4, seed=0, skip=()):
    """Fake cifar-10-batches-bin files: `records` random records each. Returns {file name: raw records}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = {}
    for name in c10.TRAIN_FILES + [c10.VAL_FILE]:
        rec = rng.integers(0, 256, size=(records, c10.RECORD), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, size=records)
        raw[name] = rec
        if name not in skip:
            (directory / name).write_bytes(rec.tobytes())
    return raw


def test_loader_reads_the_binary_format(tmp_path, registry):
    raw = write_fake(tmp_path / "cifar-10-batches-bin", records=4)
    ds = c10.load_cifar10(tmp_path, records_per_file=4)  # the parent directory is accepted too
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.input_shape == SHAPE
    assert ds.x_train.shape == (20, *SHAPE) and ds.x_val.shape == (4, *SHAPE) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64
    train = np.concatenate([raw[n] for n in c10.TRAIN_FILES])
    assert ds.y_train.tolist() == train[:, 0].tolist() and ds.y_val.tolist() == raw[c10.VAL_FILE][:, 0].tolist()
    assert ds.train_ids.tolist() == list(range(20)) and ds.val_ids.tolist() == list(range(4))
    # record 7 (file 2, record 3): red plane first, row-major; then standardised per channel
    for c in range(3):
        pixel = train[7, 1 + c * 1024 + 5 * 32 + 9]
        expected = (pixel / 255.0 - c10.MEAN[c]) / c10.STD[c]
        assert ds.x_train[7, c, 5, 9].item() == pytest.approx(expected, abs=1e-5)
    # constant images standardise to (v/255 - mean)/std in every pixel of their channel
    same = c10.load_cifar10(tmp_path / "cifar-10-batches-bin", records_per_file=4)
    torch.testing.assert_close(same.x_val, ds.x_val, rtol=0, atol=0)
    torch.testing.assert_close(registry.CALIBRATIONS["cifar10"], ds.x_train[:c10.CALIBRATION_SIZE])
    assert "cifar10" in LOADERS


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch):
    write_fake(tmp_path, skip=("data_batch_3.bin",))
    with pytest.raises(UnlearnkitError, match=r"data_batch_3\.bin not found in .*CIFAR-10 binary version.*kriz/cifar\.html"
                                              ) as err:
        c10.load_cifar10(tmp_path, records_per_file=4)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(UnlearnkitError, match="no CIFAR-10 directory given.*pass data_dir"):
        c10.load_cifar10(None)
    with pytest.raises(UnlearnkitError, match="nowhere does not exist"):
        c10.load_cifar10(tmp_path / "nowhere")
    monkeypatch.setenv("UNLEARNKIT_DATA", str(tmp_path))  # $UNLEARNKIT_DATA is where it looks by default
    with pytest.raises(UnlearnkitError, match=r"data_batch_3\.bin not found"):
        c10.load_cifar10()


def test_wrong_sizes_are_one_clear_line(tmp_path):
    write_fake(tmp_path, records=4)
    with pytest.raises(UnlearnkitError, match=r"data_batch_1\.bin holds 4 records, a CIFAR-10 binary batch holds "
                                              "10000") as err:
        c10.load_cifar10(tmp_path)  # the real record count is checked by default
    assert "\n" not in str(err.value)
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"12345")
    with pytest.raises(UnlearnkitError, match=r"test_batch\.bin is not a CIFAR-10 binary batch: its 12297 bytes"):
        c10.load_cifar10(tmp_path, records_per_file=4)


def fake_dataset(n=64, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)
    r9.register_calibration("cifar10", x[:16])  # what load_cifar10 does with its first 1000 inputs
    return Dataset("cifar10", x, y, torch.arange(n), x[:8], y[:8], torch.arange(8), 10)


TASK = Task("tiny-resnet9", "cifar10", "resnet9", Recipe(epochs=1, batch_size=16, lr=0.05),
            {"widths": SMALL, "calibration": "cifar10"})


def test_resnet9_trains_as_an_ensemble():
    ds = fake_dataset()
    forward = template(TASK, ds)  # built on the meta device, its calibration kept on the CPU
    assert next(forward.module.parameters()).device.type == "meta"
    params = init_params("resnet9", SHAPE, 10, [0, 1], **TASK.model_kwargs)
    assert set(params) == {n for n, _ in forward.module.named_parameters()}
    assert not list(forward.module.buffers()) and not any("calibration" in n for n in params)
    assert not torch.equal(params["head.weight"][0], params["head.weight"][1])  # seeded apart
    stream = EpochStream(torch.arange(64), [0, 1], batch_size=16)
    trained = fit(cross_entropy_loss(forward), params, {"train": stream}, (ds.x_train, ds.y_train), steps=4,
                  optim=Optim("sgd", 0.05, 0.9, 5e-4, "linear"))
    for k in params:
        assert not torch.equal(trained[k], params[k]), k
    batch = {"train": (ds.x_train[:16], ds.y_train[:16], torch.arange(16))}
    losses = torch.vmap(cross_entropy_loss(forward), in_dims=(0, None, None))(trained, batch, {})
    assert losses.shape == (2,) and torch.isfinite(losses).all()


def test_predictions_do_not_depend_on_the_batch():
    ds = fake_dataset()
    params = init_params("resnet9", SHAPE, 10, [0, 1], **TASK.model_kwargs)
    stream = EpochStream(torch.arange(64), [0, 1], batch_size=16)
    forward = template(TASK, ds)
    params = fit(cross_entropy_loss(forward), params, {"train": stream}, (ds.x_train, ds.y_train), steps=2,
                 optim=Optim("sgd", 0.05, 0.9, 0.0, "constant"))  # BN weights away from their init
    x = ds.x_train[16:56]
    together = predict(forward, params, x)
    assert together.shape == (2, 40, 10) and torch.isfinite(together).all()
    torch.testing.assert_close(predict(forward, params, x, chunk=7), together)
    torch.testing.assert_close(predict(forward, params, x[5:6]), together[:, 5:6])
    torch.testing.assert_close(predict(forward, params, torch.cat([x[5:6], -x]))[:, :1], together[:, 5:6])
    # without calibration (batch statistics) an example's logits depend on its company: what this avoids
    plain = Forward(build_model("resnet9", SHAPE, 10, widths=SMALL).to("meta"))
    assert not torch.allclose(predict(plain, params, x[5:6]), predict(plain, params, x)[:, 5:6], atol=1e-3)
    # Forward.embed (model[:-1], parameter names kept): penultimate features, which the head turns into the logits
    one = {k: v[0] for k, v in params.items()}
    assert forward.head_names == {"head.weight"}
    with torch.no_grad():
        feats = forward.embed(one, x)
    assert feats.shape == (40, SMALL[-1])
    torch.testing.assert_close(feats @ one["head.weight"].T * 0.2, together[0])
    # the calibration normalises: as if each layer had BatchNorm with the calibration rows' statistics
    torch.testing.assert_close(predict(forward, params, ds.x_train[:16]), predict(plain, params, ds.x_train[:16]))


def test_calibration_given_as_a_tensor_and_errors():
    x = torch.randn(10, *SHAPE)
    model = build_model("resnet9", SHAPE, 10, widths=SMALL, calibration=x[:4])
    with torch.no_grad():
        alone, among = model(x[4:5]), model(x[4:])[:1]
    torch.testing.assert_close(alone, among)
    unloaded = build_model("resnet9", SHAPE, 10, widths=SMALL, calibration="cifar10")  # no loader registered it
    with torch.no_grad(), pytest.raises(UnlearnkitError, match="calibration set 'cifar10' is not loaded"):
        unloaded(x)  # fails only when it is needed: a Ray worker that only trains never needs it
    with pytest.raises(UnlearnkitError, match="resnet9 needs"):
        build_model("resnet9", (3, 8, 8), 10)


def test_task_is_registered_with_plain_model_kwargs():
    task = TASKS["cifar10-resnet9"]
    assert (task.dataset, task.model) == ("cifar10", "resnet9") and task.model in FAMILIES
    assert task.recipe.epochs == 24 and task.recipe.batch_size == 256 and task.recipe.optimizer == "sgd"
    text = json.dumps(task.describe(), sort_keys=True, default=str)
    assert "tensor" not in text and '"calibration": "cifar10"' in text
    full = init_params("resnet9", SHAPE, 10, [0], **{**task.model_kwargs, "calibration": None})
    assert sum(v.numel() for v in full.values()) == 2_274_880  # EasyDUB's ResNet-9 at (64, 128, 256, 128)
