"""Fashion-MNIST (Xiao et al. 2017) from its IDX files, as Debian's `dataset-fashion-mnist` ships them."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UnlearnkitError, option
from .dataset import Dataset

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def install_hint() -> str:
    return f"sudo apt-get install dataset-fashion-mnist   (or pass {option('data_dir')} / set UNLEARNKIT_DATA)"


FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_val": "t10k-images-idx3-ubyte",
    "y_val": "t10k-labels-idx1-ubyte",
}
# Per-pixel statistics of the Fashion-MNIST training set, for standardising inputs.
MEAN, STD = 0.2860, 0.3530


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic (0, 0, dtype, ndim), big-endian dims, raw data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UnlearnkitError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UnlearnkitError(f"{path} is truncated inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UnlearnkitError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UnlearnkitError(f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install the data with: "
                          + install_hint())


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    directory = Path(data_dir or os.environ.get("UNLEARNKIT_DATA") or DEFAULT_DIR)
    if not directory.is_dir():
        raise UnlearnkitError(f"Fashion-MNIST directory {directory} does not exist; install the data with: "
                              + install_hint())
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in FILES.items()}

    def images(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a.astype(np.float32)) / 255.0 - MEAN) / STD).unsqueeze(1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset(
        name="fashion-mnist",
        x_train=images(arrays["x_train"]), y_train=labels(arrays["y_train"]),
        train_ids=torch.arange(len(arrays["y_train"])),
        x_val=images(arrays["x_val"]), y_val=labels(arrays["y_val"]),
        val_ids=torch.arange(len(arrays["y_val"])),
        num_classes=10,
    )
