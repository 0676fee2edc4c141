"""One exception type for everything a user can get wrong, so the CLI can print it without a traceback."""


class UnlearnkitError(ValueError):
    """Bad input (unknown name, malformed spec, missing data, ...): the message says what to do."""


class Diverged(RuntimeError):
    """A training or unlearning loop met a non-finite loss and stopped."""

    def __init__(self, step: int, models: list[int], what: str | None = None):
        super().__init__(what or f"non-finite loss at step {step} in model(s) {models[:8]}")
        self.step = step
        self.models = models
