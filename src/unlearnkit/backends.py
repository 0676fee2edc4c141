"""Where a run's independent pieces of training execute: in this process (`local`, the default), or as
tasks on a Ray cluster (`ray`: Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI
Applications"), for ensembles too large for one machine.

A piece is a chunk of an arm's models (see `zoo.train`), or one method's job (`runs.run_jobs`).
Model i's training depends on its seed alone,
so chunks trained anywhere, in any order, give the models of one pass bit for bit (on the same kind of
device and precision). Only the driver writes the cache: a task returns its weights, and the driver
stores each finished chunk as it arrives, so a failed or retried task never leaves a torn entry, and a
rerun after a crash resumes from the chunks already stored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from .engine.compute import Compute, use
from .errors import UnlearnkitError, option

BACKENDS = ("local", "ray")


def local_cores() -> int:
    """The cores this process may use: how many threads the CPU-side metrics (bootstrap replicates, SVC
    attacks) spread over while the engine's device waits."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_backend(name: str, address: str | None = None) -> None:
    if name not in BACKENDS:
        raise UnlearnkitError(f"{option('backend')} must be one of {', '.join(BACKENDS)}, got {name!r}")
    if address and name != "ray":
        raise UnlearnkitError(f"{option('ray_address')} is for {option('backend', 'ray')}")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UnlearnkitError(f"{option('backend', 'ray')} needs Ray, which is not installed: "
                                  f"pip install 'unlearnkit[ray]' (or leave out {option('backend')} to train in this "
                                  "process)") from None


class Later:
    """What is left of a piece after its device work: CPU work (a row's scores and metrics) to finish it.
    On a GPU, the local backend finishes it in a thread while the next pieces' device work runs, so the
    device does not wait for the CPU (on an H200 a default-run row spent 2.8 s in its metrics and 1.5 s
    scoring its predictions, against 0.2-6 s of training). Elsewhere it is finished at once."""

    def __init__(self, finish: Callable[[], object]):
        self.finish = finish


def finished(result):
    """A piece's result, its `Later` part done."""
    return result.finish() if isinstance(result, Later) else result


class Local:
    """Runs pieces one after another in this process (each one already uses every core); on a GPU, a
    piece's `Later` part runs in a thread beside the next pieces' device work (`overlap`), up to
    `in_flight` of them at once: one row's metrics are partly single-threaded (U-LiRA's ranks, the
    histograms of its KLoM), so on a many-core host several rows' metrics keep pace with short methods."""

    name = "local"
    overlap: bool | None = None  # None: on a GPU only (on a CPU both parts want the same cores)
    in_flight = 4

    def map(self, fn: Callable, items: Iterable, compute: Compute) -> Iterator[tuple[object, object]]:
        if not (compute.is_cuda if self.overlap is None else self.overlap):
            for item in items:
                yield item, finished(fn(item))
            return
        with ThreadPoolExecutor(self.in_flight) as pool:
            pending: deque = deque()  # (item, its Later part running in the pool), in the items' order
            try:
                for item in items:
                    out = fn(item)
                    pending.append((item, pool.submit(out.finish) if isinstance(out, Later) else _ready(out)))
                    while pending and (pending[0][1].done() or len(pending) > self.in_flight):
                        yield pending[0][0], pending[0][1].result()
                        pending.popleft()  # only once handed back: an interrupt while waiting loses nothing
                while pending:
                    yield pending[0][0], pending[0][1].result()
                    pending.popleft()
            except GeneratorExit:  # the caller stopped reading
                raise
            except BaseException:
                # a failure (or Ctrl-C): every piece already under way is finished and handed back first,
                # in order (its row is kept), but one whose own part failed; then the original error
                while pending:
                    item, future = pending.popleft()
                    try:
                        result = future.result()
                    except BaseException:
                        continue
                    yield item, result
                raise


def _ready(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


class Ray:
    """Runs pieces as Ray tasks (one CPU each, or one GPU each when the run's device is a GPU), and hands
    back each result as it finishes."""

    name = "ray"

    def __init__(self, address: str | None = None):
        import ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)

    def map(self, fn: Callable, items: Iterable, compute: Compute) -> Iterator[tuple[object, object]]:
        import ray
        task = ray.remote(num_gpus=1 if compute.is_cuda else 0)(_in_compute)
        device = dataclasses.replace(compute, device="cuda:0") if compute.is_cuda else compute
        shared = ray.put(fn)  # what every task reads (a bench's models and data): stored once, not per task
        pending = {task.remote(shared, item, device): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), ray.get(done[0])


def _in_compute(fn: Callable, item, compute: Compute):
    """A task runs on the driver's kind of device and precision (a Ray worker starts with the defaults;
    on a GPU node, the one GPU Ray gave it is its cuda:0)."""
    with use(compute):
        return finished(fn(item))


_current: Local | Ray = Local()


def current() -> Local | Ray:
    return _current


@contextlib.contextmanager
def use_backend(name: str, address: str | None = None):
    """Run the zoo's pieces on backend `name` inside this context."""
    global _current
    check_backend(name, address)
    previous, _current = _current, (Ray(address) if name == "ray" else Local())
    try:
        yield _current
    finally:
        _current = previous
