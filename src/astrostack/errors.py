"""One exception tree for astrostack.

Every error a user can cause or meet derives from :class:`AstrostackError` and
carries the process exit code the CLI turns it into. Messages say what failed,
why, and what the user can do next, on one line.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Union

# Documented exit codes (README "Exit codes"); every exit status of the CLI is one of these
# (or, for `exec` and `run`, the job's own).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2
EXIT_ROLLED_BACK = 3
EXIT_FAILED_KEPT = 4
EXIT_BUSY = 5
EXIT_DEGRADED = 6
EXIT_INTERRUPTED = 130


class AstrostackError(Exception):
    """Base of every astrostack error."""

    exit_code = EXIT_FAILURE
    # Set when a --json command already put this error into its JSON answer on stdout.
    json_reported = False

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidInput(AstrostackError):
    """Bad spec, bad CLI argument, bad file: exit 2."""

    exit_code = EXIT_INVALID_INPUT


class SpecError(InvalidInput):
    """The cluster spec does not validate."""


class TemplateError(InvalidInput):
    """A rendered template or user-data is not valid."""


class CloudError(AstrostackError):
    """The cloud answered with an error or not at all.

    ``transient``: the retries of one call gave up on an outage (no answer,
    5xx or 429) that a longer wait may see through; a waiter rides it out until
    its deadline instead of failing at once.
    """

    transient = False

    def __init__(self, message: str, *, hint: str | None = None, transient: bool | None = None):
        super().__init__(message, hint=hint)
        if transient is not None:
            self.transient = transient


class CloudUnreachable(CloudError):
    """No answer from the cloud's API."""

    transient = True


class NotFound(CloudError):
    """A named cluster, stack or resource does not exist."""


class UnknownCluster(InvalidInput):
    """No record, no stack and no resource with the cluster's mark: the same exit code in every command."""


class PrecheckFailed(InvalidInput):
    """Image, flavor, network, keypair or quota would make the stack fail."""


class DeployFailed(AstrostackError):
    """A deployment failed; ``rolled_back`` says which exit code applies."""

    def __init__(self, message: str, *, phase: str, evidence: str | None = None,
                 rolled_back: bool = True, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.phase = phase
        self.evidence = evidence
        self.rolled_back = rolled_back

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return EXIT_ROLLED_BACK if self.rolled_back else EXIT_FAILED_KEPT


class WaitTimeout(AstrostackError):
    """A wait reached its deadline."""


class LocalCloudError(AstrostackError):
    """The local cloud (Docker engine, local Heat engine) is missing or broken."""


class JobFailed(AstrostackError):
    """A job ran and returned non-zero; its exit code is the job's."""

    def __init__(self, message: str, *, job_exit_code: int, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.job_exit_code = job_exit_code

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return self.job_exit_code or EXIT_FAILURE


class DataDirError(InvalidInput):
    """ASTROSTACK_HOME (or the default data folder) is not a folder astrostack can write in."""


class Busy(AstrostackError):
    """Another astrostack run holds the lock: exit 5, nothing was done."""

    exit_code = EXIT_BUSY


class BenchBusy(Busy):
    """Another bench run holds the bench lock: nothing recorded."""


class BenchFailed(AstrostackError):
    """A bench run finished, and at least one point failed."""


class ScheduleError(AstrostackError):
    """The scheduler (cron, systemd) is missing or refused the entry."""


# Quoting what the user wrote ---------------------------------------------------------------

MAX_QUOTED = 80
MAX_ERROR_LINE = 1000


def quote(value: object, limit: int = MAX_QUOTED) -> str:
    """VALUE as it goes into an error line: Python-quoted (so control characters and
    terminal escapes are shown, never sent) and at most LIMIT characters of it."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else printable(text)
    shown = repr(text[:limit]) if isinstance(value, str) else printable(text[:limit])
    return f"{shown}... ({len(text)} characters)"


def show_path(path: Union[str, PurePath]) -> str:
    """A path for an error line: as it is when plain, quoted when it holds odd characters or is long."""
    text = str(path)
    if text.isprintable() and len(text) <= 200:
        return text
    return quote(text, limit=200)


def printable(text: str) -> str:
    """TEXT with every non-printable character (newline, ESC, bidi controls, ...) written as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(message: str, limit: int = MAX_ERROR_LINE) -> str:
    """MESSAGE as one safe terminal line of at most LIMIT characters."""
    line = printable(message)
    return line if len(line) <= limit else line[: limit - 3] + "..."
