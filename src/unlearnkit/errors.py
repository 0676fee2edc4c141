"""One exception type for everything a user can get wrong, so the CLI can print it without a traceback."""
import os
import shlex
from contextlib import contextmanager
from contextvars import ContextVar


class UnlearnkitError(ValueError):
    """Bad input (unknown name, malformed spec, missing data, ...): the message says what to do."""


class Diverged(RuntimeError):
    """A training or unlearning loop met a non-finite loss and stopped."""

    def __init__(self, step: int, models: list[int], what: str | None = None):
        super().__init__(what or f"non-finite loss at step {step} in model(s) {models[:8]}")
        self.step = step
        self.models = models


COMMAND_LINE = "UNLEARNKIT_COMMAND_LINE"  # set by `unlearnkit` for its worker processes (a Ray cluster's tasks)
_UNSET = object()
_as_python: ContextVar[bool] = ContextVar("unlearnkit_spelled_as_python", default=False)


def option(name: str, value: object = _UNSET, flag: str | None = None) -> str:
    """An option as the caller spells it, for messages that say what to pass. Under the `unlearnkit`
    command its flag: `--max-hours`, `--device cpu`, `--cache-dir ''`, `--overwrite` for True; from Python
    (and in a study spec's keys, `spelled_as_python`) the parameter: `max_hours`, `device='cpu'`,
    `overwrite=True`.
    `flag`: the whole flag where it is not named after the parameter (`--set` for `hparams`)."""
    if not _as_python.get() and _command_line():
        if flag is not None:
            return flag
        spelt = "--" + name.replace("_", "-")
        return spelt if value is _UNSET or value is True else f"{spelt} {shlex.quote(str(value))}"
    return name if value is _UNSET else f"{name}={value!r}"


def _command_line() -> bool:
    """Inside the `unlearnkit` command (its group marks click's context; click keeps one per thread), or in
    a worker process it started."""
    import click  # deferred: only a message being built needs it

    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(COMMAND_LINE)) or os.environ.get(COMMAND_LINE) == "1"


@contextmanager
def spelled_as_python():
    """Messages about a study's cells name their keys as the spec writes them (`max_hours = 2`), even under
    the command line: a spec's keys are the Python parameters."""
    token = _as_python.set(True)
    try:
        yield
    finally:
        _as_python.reset(token)
