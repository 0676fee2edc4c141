"""CIFAR-10 (Krizhevsky 2009) from its binary version (cifar-10-batches-bin), never downloaded.

Each file is 10,000 records of 3073 bytes: one label byte (0-9), then the 32×32 image as 1024 red,
1024 green and 1024 blue bytes (rows top to bottom). Training set: data_batch_1..5.bin (50,000 images,
ids 0-49999 in file order); validation set: test_batch.bin (10,000, ids 0-9999).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UnlearnkitError, option
from ..models.resnet9 import register_calibration
from .dataset import Dataset

SUBDIR = "cifar-10-batches-bin"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
VAL_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32
RECORDS_PER_FILE = 10_000
def get_hint() -> str:
    return ('download the "CIFAR-10 binary version" from https://www.cs.toronto.edu/~kriz/cifar.html, '
            f"unpack it and pass {option('data_dir')} (or set UNLEARNKIT_DATA) to the directory holding {SUBDIR}/")
# Per-channel (R, G, B) mean and std the inputs are standardised with: those of EasyDUB's loader (and of
# most CIFAR-10 code since kuangliu/pytorch-cifar). The mean is the training set's; the std is not quite
# (its per-pixel std is 0.2470, 0.2435, 0.2616) — the first conv's BatchNorm makes the difference moot.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
# The resnet9 family's calibration set (see models/resnet9.py): the first training images (ids 0-999).
CALIBRATION_SIZE = 1000


def _directory(data_dir: str | os.PathLike | None) -> Path:
    given = data_dir or os.environ.get("UNLEARNKIT_DATA")
    if not given:
        raise UnlearnkitError(f"no CIFAR-10 directory given; {get_hint()}")
    directory = Path(given)
    if not directory.is_dir():
        raise UnlearnkitError(f"CIFAR-10 directory {directory} does not exist; {get_hint()}")
    return directory / SUBDIR if (directory / SUBDIR).is_dir() else directory


def read_batch(path: Path, records: int = RECORDS_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,) uint8) of one binary batch file."""
    size = path.stat().st_size
    if size % RECORD:
        raise UnlearnkitError(f"{path} is not a CIFAR-10 binary batch: its {size} bytes are not a whole "
                              f"number of {RECORD}-byte records (truncated or the wrong file?)")
    if size // RECORD != records:
        raise UnlearnkitError(f"{path} holds {size // RECORD} records, a CIFAR-10 binary batch holds {records} "
                              "(truncated or the wrong file?)")
    raw = np.fromfile(path, dtype=np.uint8).reshape(records, RECORD)
    labels = raw[:, 0]
    if labels.max(initial=0) > 9:
        raise UnlearnkitError(f"{path} is not a CIFAR-10 binary batch: label {int(labels.max())} is not 0-9")
    return raw[:, 1:].reshape(records, 3, 32, 32), labels


def load_cifar10(data_dir: str | os.PathLike | None = None, records_per_file: int = RECORDS_PER_FILE) -> Dataset:
    """CIFAR-10 from `data_dir` (or $UNLEARNKIT_DATA): the directory holding the .bin files, or the one
    holding cifar-10-batches-bin/. `records_per_file` is 10,000 for the real files (tests use fakes).

    Also registers the first CALIBRATION_SIZE training inputs as the resnet9 calibration set "cifar10"."""
    directory = _directory(data_dir)
    for name in TRAIN_FILES + [VAL_FILE]:
        if not (directory / name).is_file():
            where = str(directory) if directory.name == SUBDIR else f"{directory} (nor in {directory / SUBDIR})"
            raise UnlearnkitError(f"CIFAR-10 file {name} not found in {where}; {get_hint()}")
    train = [read_batch(directory / name, records_per_file) for name in TRAIN_FILES]
    val = read_batch(directory / VAL_FILE, records_per_file)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).float().div_(255.0).sub_(mean).div_(std)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    x_train = images(np.concatenate([x for x, _ in train]))
    y_train = labels(np.concatenate([y for _, y in train]))
    register_calibration("cifar10", x_train[:CALIBRATION_SIZE].clone())
    return Dataset(
        name="cifar10",
        x_train=x_train, y_train=y_train, train_ids=torch.arange(len(y_train)),
        x_val=images(val[0]), y_val=labels(val[1]), val_ids=torch.arange(len(val[1])),
        num_classes=10,
    )
