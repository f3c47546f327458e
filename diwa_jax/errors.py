"""The failures a run is expected to meet: bad input, not bugs. ``launch.py`` ends each in one line, its message
naming the culprit (a config key, a file, a checkpoint folder) and what to do."""


class ExpectedFailure(Exception):
    """Base of the failures that end a run with one line instead of a traceback."""


class ConfigError(ExpectedFailure, ValueError):
    """A config value, or a relation between values, that cannot work; the message names the key."""


class DataError(ExpectedFailure):
    """A data file is missing, truncated, corrupt or inconsistent; the message names it and the fix."""


class CheckpointError(ExpectedFailure, RuntimeError):
    """A checkpoint that is missing or does not match what restores it."""


class TrainingDiverged(ExpectedFailure, RuntimeError):
    """A training loop met non-finite values; ``last_finite_step`` is its last checkpoint (None: none yet)."""

    def __init__(self, message: str, last_finite_step: int | None = None):
        super().__init__(message)
        self.last_finite_step = last_finite_step
