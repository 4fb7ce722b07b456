"""User-facing errors.

`UserError` derives from `SystemExit` on purpose: nerfstudio's `ns-train` / `ns-eval` / `ns-render` entry points
do not catch exceptions, so an ordinary exception raised from inside our datamanager or model would print a long
traceback. A `SystemExit` carrying a string prints exactly that one line to stderr and exits with status 1, which
is what a user who mistyped a path needs. Library callers and tests can still catch `UserError` by type.
"""

from __future__ import annotations

import sys


class UserError(SystemExit):
    """Bad input from the user: printed as one line (`ed-nerf: error: ...`), exit status 1."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"ed-nerf: error: {message}")

    def __str__(self) -> str:
        return self.message


def warn(message: str) -> None:
    """One-line warning in nerfstudio's console style (imported lazily: this module must stay import-light)."""
    try:
        from nerfstudio.utils.rich_utils import CONSOLE
    except ImportError:  # nerfstudio absent (e.g. a bare benchmark environment)
        print(f"ed-nerf: warning: {message}", file=sys.stderr)
        return
    CONSOLE.print(f"[bold yellow]ed-nerf: warning:[/bold yellow] {message}", highlight=False)


def info(message: str) -> None:
    """A log line in nerfstudio's console style (stderr without nerfstudio)."""
    try:
        from nerfstudio.utils.rich_utils import CONSOLE
    except ImportError:
        print(message, file=sys.stderr)
        return
    CONSOLE.log(message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), to quote inside a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
