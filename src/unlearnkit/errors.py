"""One exception type for everything a user can get wrong, so the CLI can print it without a traceback."""


class UnlearnkitError(ValueError):
    """Bad input (unknown name, malformed spec, missing data, ...): the message says what to do."""


class Diverged(RuntimeError):
    """A training or unlearning loop met a non-finite loss and stopped."""

    def __init__(self, step: int, models: list[int], what: str | None = None):
        super().__init__(what or f"non-finite loss at step {step} in model(s) {models[:8]}")
        self.step = step
        self.models = models


_UNSET = object()


def option(name: str, value: object = _UNSET, flag: str | None = None) -> str:
    """An option as the caller spells it, for messages that say what to pass. On the command line (inside a
    click command) its flag: `--max-hours`, `--device cpu`, `--overwrite` for True; from Python the
    parameter: `max_hours`, `device='cpu'`, `overwrite=True`. `flag`: the whole flag where it is not named
    after the parameter (`--set` for `hparams`, `--no-cache` for `cache_dir=''`)."""
    import click  # deferred: only a message being built needs it

    if click.get_current_context(silent=True) is not None:
        if flag is not None:
            return flag
        spelt = "--" + name.replace("_", "-")
        return spelt if value is _UNSET or value is True else f"{spelt} {value}"
    return name if value is _UNSET else f"{name}={value!r}"
