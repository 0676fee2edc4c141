"""The same config and seed give the same results.json, bit for bit: whether the models were trained in
this process, loaded from the cache (here or in another process), retrained, or resumed after an
interruption (and so are klom.npz and forget_set.json). Wall-clock seconds, the one thing that differs,
live in timings.json."""
import json
import shutil
import subprocess
import sys

import pytest
from conftest import Interrupted

from unlearnkit.experiment import RunConfig, run


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    config = RunConfig(task="digits-mlp", forget="random:40", methods=("none", "retrain", "finetune", "neggrad+"),
                       models=4, cache_dir=str(root / "cache"), bootstrap=10,
                       hparams=(("finetune", "epochs", "1"), ("neggrad+", "epochs", "1")))
    run(config, root / "first")
    return config, root


def _bytes(out) -> list[bytes]:
    return [(out / name).read_bytes() for name in ("results.json", "klom.npz", "forget_set.json")]


def _drop(cache_dir, *labels):
    """Remove the arms labelled `labels`, and every finished job (cells.py), so that the run trains them again."""
    for manifest in (cache_dir / "zoo").glob("*/manifest.json"):
        if json.loads(manifest.read_text())["label"] in labels:
            shutil.rmtree(manifest.parent)
    shutil.rmtree(cache_dir / "cells", ignore_errors=True)


def _same(out, first) -> None:
    """The three files equal the first run's byte for byte (on failure, the results that differ)."""
    a, b = _bytes(out), _bytes(first)
    if a[0] != b[0]:
        x, y = json.loads(a[0]), json.loads(b[0])
        diff = {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)}
        pytest.fail(f"results.json differs from the first run's: {str(diff)[:3000]}")
    assert a == b


def test_loaded_from_the_cache_equals_trained_here(setting):
    config, root = setting
    run(config, root / "loaded")
    _same(root / "loaded", root / "first")
    timings = json.loads((root / "first" / "timings.json").read_text())["rows"]
    assert set(timings) == {"none", "retrain", "finetune", "neggrad+"}


def test_another_process_reads_the_same(setting):
    config, root = setting
    code = (f"from unlearnkit.experiment import RunConfig, run; "
            f"run(RunConfig(**{config.to_dict()!r}), {str(root / 'other')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    _same(root / "other", root / "first")


def test_retrained_and_resumed_arms_equal_uninterrupted(setting, interrupt_at):
    config, root = setting
    cache = root / "cache"
    _drop(cache, "originals", "retrain")
    run(config, root / "retrained")
    _same(root / "retrained", root / "first")

    _drop(cache, "originals", "retrain")
    interrupt_at(11)
    for _ in range(2):  # the originals, then (on the rerun) the retrain arm are interrupted mid-training
        with pytest.raises(Interrupted):
            run(config, root / "resumed")
    interrupt_at(None)
    run(config, root / "resumed")
    _same(root / "resumed", root / "first")  # the retrain row's FLOPs include the first part
