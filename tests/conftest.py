import logging
import os

import pytest
import torch

from unlearnkit.data import load_dataset
from unlearnkit.zoo import ZooCache


def pytest_configure(config):
    """Under pytest-xdist, each worker computes on its share of the cores (and so do the processes its tests
    start): two workers with every core each would fight over them and both run slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _private_run_index(tmp_path_factory):
    """Tests add their runs to a run index of their own, never the user's (session scope: set before any
    module's fixtures run)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNLEARNKIT_INDEX", str(tmp_path_factory.getbasetemp() / "runs.sqlite"))
        yield


@pytest.fixture(autouse=True)
def _quiet_and_seeded(monkeypatch):
    torch.manual_seed(0)
    logging.getLogger("unlearnkit").setLevel(logging.INFO)
    monkeypatch.setattr("unlearnkit.zoo.train.CHECKPOINT_SECONDS", 0.0)  # tiny arms: a checkpoint every epoch


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_lm_cache(tmp_path_factory) -> str:
    """One model cache for the tests that train tofu-synth-tiny arms (most at N = 2 with authors:0.1 forgotten;
    the LM pipeline's run and ID-vs-OOD tests share originals at N = 3): each arm is trained once for all of
    them — under pytest-xdist, once for all workers (the session's folder above theirs; the zoo's locks make
    the others wait and load)."""
    root = tmp_path_factory.getbasetemp()
    path = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "tiny-lm-cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny language models: one thread is as fast and does not stall when the machine's cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Stopped(Exception):
    """What `checked_budget` raises in place of a budget check, so that nothing trains."""


@pytest.fixture
def checked_budget():
    """checked_budget(call): the Budget that call() checks before it trains anything (stopped there)."""
    from unlearnkit.budget import Budget

    def capture(call):
        seen = {}

        def stop(self, *args, **kwargs):
            seen["budget"] = self
            raise _Stopped
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Budget, "check", stop)
            with pytest.raises(_Stopped):
                call()
        return seen["budget"]
    return capture


class Interrupted(Exception):
    """What `interrupt_at` raises in place of a kill."""


@pytest.fixture
def interrupt_at(monkeypatch):
    """interrupt_at(epoch): from now on, the zoo dies (raises Interrupted) right after it saves that epoch's
    checkpoint, as a run killed there would; interrupt_at(None) lets it run. Returns the list of epochs
    checkpointed since the call."""
    real = ZooCache.save_checkpoint
    state = {"epoch": None, "saved": []}

    def save_then_die(self, key, ckpt, spent=None):
        real(self, key, ckpt, spent)
        state["saved"].append(ckpt.epoch)
        if ckpt.epoch == state["epoch"]:
            raise Interrupted
    monkeypatch.setattr(ZooCache, "save_checkpoint", save_then_die)

    def arm(epoch: int | None) -> list[int]:
        state["epoch"], state["saved"] = epoch, []
        return state["saved"]
    return arm


def render_in_chromium(html_path, tmp_path):
    """Open `html_path` in headless Chromium (Debian's package, installed by scripts/setup.sh): a screenshot's
    PNG bytes and the page's console messages. Skipped where Chromium is missing, except under CI."""
    import os
    import shutil
    import subprocess
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/setup.sh installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "screenshot.png"
    proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1400,2400", f"file://{html_path}"],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    return shot.read_bytes(), console


@pytest.fixture(scope="session")
def tiny_lm_bench(tiny_lm_cache):
    """tofu-synth-tiny at N = 2 with authors:0.1 forgotten: the LMBench (arms trained, oracles scored) that
    the method tests share; built once per session."""
    from unlearnkit.experiment import RunConfig
    from unlearnkit.lm.task import get_lm_task, load_tofu
    from unlearnkit.lm_experiment import LMBench
    from unlearnkit.zoo import ZooCache
    config = RunConfig(task="tofu-synth-tiny", forget="authors:0.1", models=2, bootstrap=0)
    return LMBench(config, load_tofu(get_lm_task("tofu-synth-tiny")), ZooCache(tiny_lm_cache))
