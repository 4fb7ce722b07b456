"""User-facing errors: one line `<command>: error: <what is wrong>; <what to do>`, never a traceback.

`UserError` derives from `SystemExit` on purpose: nerfstudio's `ns-train` / `ns-eval` / `ns-render` entry points
do not catch exceptions, so an ordinary exception raised from inside our datamanager or model would print a long
traceback. A `SystemExit` carrying a string prints exactly that one line to stderr and exits with status 1, which
is what a user who mistyped a path needs. Library callers and tests can still catch `UserError` by type.

Where one of our functions is the outermost frame a command runs (our own entry points; the trainer hooks that
`ns-train` calls), `one_line_errors` prints the line itself and exits with the error's status: 2 for a bad
command-line value (`ArgumentError`, as argparse does), 1 for bad data.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_command: dict[str, str | None] = {"entry": None, "method": None}


def set_command(name: str, method: bool = False) -> None:
    """Name the command in error lines. An entry point (`ednerf-eval`) wins over the method a trainer runs
    (`ed-nerf`), so a demo's in-process trainings still report as `ednerf-demo`."""
    _command["method" if method else "entry"] = name


def command() -> str:
    return _command["entry"] or _command["method"] or "ed-nerf"


class UserError(SystemExit):
    """Bad data from the user (a file's content): one line, exit status 1."""

    status = 1

    def __init__(self, message: str) -> None:
        self.message = message
        self.line = f"{command()}: error: {message}"
        self.printed = False
        super().__init__(self.line)

    def __str__(self) -> str:
        return self.message


class ArgumentError(UserError):
    """A bad command-line value (out of range, empty, a path that does not exist): one line, exit status 2."""

    status = 2


class Interrupted(SystemExit):
    """Ctrl-C: the line saying what was kept and how to go on has been printed; exit status 130 (128 + SIGINT)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(130)

    def __str__(self) -> str:
        return self.message


def os_error_line(exc: OSError, what: str, name_file: bool = True) -> str:
    """`what` failed because of `exc`, with the fix for the usual causes (full disk, permissions)."""
    reason = exc.strerror or first_line(exc)
    hint = {
        errno.ENOSPC: "free some disk space or pass another --output-dir",
        errno.EDQUOT: "free some disk space or pass another --output-dir",
        errno.EFBIG: "free some disk space or pass another --output-dir",
        errno.EACCES: "pass an --output-dir you can write to",
        errno.EPERM: "pass an --output-dir you can write to",
        errno.EROFS: "pass an --output-dir on a writable disk",
    }.get(exc.errno or 0, "check the path and the disk")
    where = f" '{exc.filename}'" if exc.filename and name_file else ""
    return f"{what}{where}: {reason}; {hint}"


@contextmanager
def one_line_errors(interrupt: bool = False) -> Iterator[None]:
    """Around the outermost call of a command: a UserError prints its one line and exits with its status; an
    OSError (full disk, no permission), running out of memory, and any other exception become one such line too
    (`EDNERF_TRACEBACK=1` shows the traceback of the last kind, which is a bug or an input not checked yet).
    With `interrupt`, Ctrl-C prints one line and exits with status 130 (the trainer handles it itself)."""
    try:
        yield
    except KeyboardInterrupt:
        if not interrupt:
            raise
        message = "interrupted (Ctrl-C); the files written so far are complete, nothing else was written"
        print(f"{command()}: {message}", file=sys.stderr, flush=True)
        raise Interrupted(message) from None
    except UserError as exc:
        _exit_with(exc)
    except MemoryError as exc:  # torch.cuda.OutOfMemoryError is not one: see below
        _exit_with(UserError(f"out of memory ({first_line(exc)}); {_MEMORY_HINT}"), exc)
    except OSError as exc:
        _exit_with(UserError(os_error_line(exc, "could not read or write a file")), exc)
    except Exception as exc:
        if os.environ.get("EDNERF_TRACEBACK"):
            raise
        if "out of memory" in str(exc).lower():
            _exit_with(UserError(f"out of memory ({first_line(exc, 120)}); {_MEMORY_HINT}"), exc)
        _exit_with(
            UserError(
                f"unexpected {type(exc).__name__}: {first_line(exc)}; please report it (EDNERF_TRACEBACK=1 shows "
                "where it happened)"
            ),
            exc,
        )


_MEMORY_HINT = "lower --pipeline.datamanager.max-image-size or --pipeline.model.eval-num-rays-per-chunk"


def _exit_with(exc: UserError, cause: BaseException | None = None) -> None:
    if not exc.printed:
        sys.stdout.flush()
        print(exc.line, file=sys.stderr, flush=True)
        exc.printed = True
    exc.code = exc.status  # an int code: the interpreter exits with it and prints nothing more
    raise exc from cause  # in-process callers (tests) still see the original exception as the cause


def warn(message: str) -> None:
    """One-line warning in nerfstudio's console style (imported lazily: this module must stay import-light)."""
    try:
        from nerfstudio.utils.rich_utils import CONSOLE
    except ImportError:  # nerfstudio absent (e.g. a bare benchmark environment)
        print(f"{command()}: warning: {message}", file=sys.stderr)
        return
    CONSOLE.print(f"[bold yellow]{command()}: warning:[/bold yellow] {message}", highlight=False)


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


def check_writable_folder(folder: os.PathLike | str, flag: str) -> None:
    """Refuse an output folder that cannot be created or written, before any work (and leave nothing behind)."""
    import tempfile
    from pathlib import Path

    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentError(f"{flag} '{folder}' lies under '{existing}', which is a file; pass a folder")
    try:  # really write: os.access says yes to root on a read-only disk
        fd, probe = tempfile.mkstemp(prefix=".ednerf-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        raise ArgumentError(f"{flag} '{folder}' is not writable ({reason}); pass a folder you can write to") from None


def run_command(name: str, config_class: type, main) -> None:
    """A console command's entry point: parse `config_class` from the command line (tyro) and run `main` on it,
    every refusal and fault ending in one line under this command's name."""
    import tyro

    set_command(name)
    tyro.extras.set_accent_color("bright_yellow")
    config = tyro.cli(config_class)
    with one_line_errors(interrupt=True):
        main(config)
