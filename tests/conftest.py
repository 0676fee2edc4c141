import logging

import pytest
import torch

from unlearnkit.data import load_dataset


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    logging.getLogger("unlearnkit").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny language models: one thread is as fast and does not stall when the machine's cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
