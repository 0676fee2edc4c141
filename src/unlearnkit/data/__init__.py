"""Datasets: tensors with stable example ids and fixed train/validation splits (classification, and
implicit-feedback interactions for recommendation)."""
from __future__ import annotations

from ..errors import UnlearnkitError, option
from .cifar10 import load_cifar10
from .dataset import Dataset
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist, read_idx
from .interactions import Interactions
from .mnist1d import load_mnist1d
from .rec_synth import load_rec_synth

LOADERS = {
    "fashion-mnist": lambda data_dir: load_fashion_mnist(data_dir),
    "mnist1d": lambda data_dir: load_mnist1d(),
    "digits": lambda data_dir: load_digits(),
    "cifar10": lambda data_dir: load_cifar10(data_dir),
    "rec-synth": lambda data_dir: load_rec_synth("rec-synth"),
    "rec-synth-tiny": lambda data_dir: load_rec_synth("rec-synth-tiny"),
}

FILE_DATASETS = ("fashion-mnist", "cifar10")  # read from a directory (--data-dir); the others are generated or shipped


def load_dataset(name: str, data_dir: str | None = None, train_size: int | None = None,
                 seed: int = 0) -> Dataset:
    """Load dataset `name`; `train_size` keeps a fixed, seeded subset of its training set."""
    if name not in LOADERS:
        raise UnlearnkitError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if data_dir is not None and name not in FILE_DATASETS:
        raise UnlearnkitError(f"{name} is generated or shipped with a package and reads no directory; "
                              f"leave {option('data_dir')} out")
    ds = LOADERS[name](data_dir)
    return ds if train_size is None else ds.subset_train(train_size, seed)


__all__ = ["FILE_DATASETS", "LOADERS", "Dataset", "Interactions", "load_dataset", "read_idx"]
