"""The errors that reach the user, and the exit codes they end a command with.

Imports nothing from the package, so that any module (and `cli.main`, which catches
`UsageError`) can name them without importing what raises them: torch, PyAV or Ray.
"""

from __future__ import annotations

import errno
import signal
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_BUDGET = 0, 1, 2, 3
EXIT_LOCK_HELD = 75  # EX_TEMPFAIL: `vivit-batch lock`, a live run holds the output
EXIT_TIME_LIMIT = 124  # as `timeout` exits when its time runs out: `run.time_limit_s` passed


class UsageError(ValueError):
    """Bad input: a configuration, manifest, checkpoint, device or output that cannot be used
    as given. Nothing has been processed; one line says what is wrong (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        """as raised: Ray Data appends its retry advice to the text of an error raised in a
        map task (its `args`); attributes travel with a pickled error, and this one keeps it"""


class ConfigError(UsageError):
    """The configuration or the manifest is wrong."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        """One error for all `problems` (each names its key): one line for one problem."""
        if len(problems) == 1:
            return cls(f"invalid configuration: {problems[0]}", problems)
        return cls("invalid configuration:\n  " + "\n  ".join(problems), problems)


class CheckpointError(UsageError):
    """The checkpoint cannot be found, read or fitted to the model."""


class DeviceError(UsageError):
    """The planned device is not usable here, or the model does not fit it."""


class OutputLocked(UsageError):
    """Another run holds this output."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C), SIGTERM (`timeout`, `ray job stop`, a scheduler or Kubernetes) or SIGHUP
    (its terminal closed) stopped the command. A KeyboardInterrupt: no library's `except
    Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal = signal.Signals(signum)

    @property
    def by(self) -> str:
        """What stopped the command, as its messages and its report's `stopped_by` name it."""
        return self.signal.name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process that the signal ended."""
        return 128 + self.signal


class TimeLimitReached(Interrupted):
    """The run's `run.time_limit_s` passed (its SIGALRM came): it stops as a signal stops it."""

    def __init__(self) -> None:
        super().__init__(signal.SIGALRM)

    @property
    def by(self) -> str:
        return "run.time_limit_s"

    @property
    def exit_code(self) -> int:
        return EXIT_TIME_LIMIT


class LockLost(RuntimeError):
    """This run no longer holds the output's lock: it must not commit anything more."""


class StorageError(OSError):
    """A storage backend failed in a way that is not already an `OSError`."""


class SourceRefused(PermissionError):
    """An http(s) source resolved to an address the source policy refuses (`source_policy`).
    aiohttp raises it wrapped in its own connection error: look along `__cause__`."""


ENVIRONMENT_ERRORS = (
    ("botocore.exceptions", "BotoCoreError"),
    ("botocore.exceptions", "ClientError"),
    ("ray.exceptions", "RayError"),
    ("torch", "AcceleratorError"),
    ("torch", "OutOfMemoryError"),
)
"""Besides `OSError` and `MemoryError`: a store's, the cluster's and a GPU's failures, named
rather than imported (a command that never loaded them cannot have met them)"""
ADVICE: dict[int, str] = {
    errno.ENOSPC: "free space there",
    errno.EDQUOT: "free space there or raise the quota",
    errno.EACCES: "give this user access to it",
    errno.EPERM: "give this user access to it",
    errno.EROFS: "make it writable",
}


def from_environment(error: BaseException) -> bool:
    """Whether `error` is the machine's, the network's, a store's or the cluster's (a full disk,
    a refused request, a lost node, a GPU fault), rather than a bug of this tool."""
    cause = getattr(error, "cause", None)  # Ray's RayTaskError: what the task raised
    if isinstance(cause, BaseException) and cause is not error:
        return from_environment(cause)
    loaded = tuple(
        getattr(sys.modules[module], name)
        for module, name in ENVIRONMENT_ERRORS
        if module in sys.modules
    )
    return isinstance(error, (OSError, MemoryError, *loaded))


def advice_for(error: BaseException) -> str:
    """What to do before running the command again, where the error says ("" where not)."""
    number = getattr(error, "errno", None)
    return ADVICE.get(number, "") if isinstance(number, int) else ""
