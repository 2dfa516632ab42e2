"""The one error module: what counts as bad input, and the guard every command runs in.

Exit codes (README, `--help`):

    0    success
    1    a recipe gate failed (a line names the gate, its value and its limit)
    2    a usage or input error: one line naming the problem and the fix (the disk
         full, a read-only file system or memory exhausted too: `environment_problem`)
    3    an internal error vtc did not expect: one line with the exception type and
         where the full traceback was written
    130  interrupted (Ctrl-C or SIGTERM, however many arrive)

Every error a user can fix subclasses :class:`InputError`; the guard turns it into
exit 2. Nothing else in vtc decides exit codes.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class InputError(ValueError):
    """Bad input the user can fix (exit 2). The message names the problem and the fix."""


class OutputError(InputError):
    """The output path cannot be used."""


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_line(msg: object) -> str:
    """An error message on a single line (newlines of wrapped library errors folded)."""
    text = " ".join(str(msg).split())
    return text or "(no message)"


_signalled = False  # set by the first signal: whatever exception follows is the interrupt
_finished = False  # set once `guard` has decided the exit code: later signals change nothing
_at_exit = False  # `_ignore_at_exit` registered


def _interrupt(signum: int, frame: Any) -> None:
    # The first signal unwinds (temp dirs are removed in `finally` blocks); later ones
    # are ignored so that the clean-up is not cut short and the exit code stays 130.
    global _signalled
    if _finished:  # the outcome is printed; the process is only shutting down
        return
    _signalled = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM (kill, CI timeouts) unwind like Ctrl-C, once.

    The entry points (`vtc.cli.main`, `vtc.cli.export_main`) call it first, before any
    command module or heavy library is imported, so a signal during start-up exits 130 too.
    """
    global _finished, _at_exit
    _finished = False
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if not _at_exit:
        atexit.register(_ignore_at_exit)
        _at_exit = True


def _ignore_at_exit() -> None:
    """While Python shuts down it restores the default handlers of those it set (not of
    ignored ones): a signal then would kill a process whose outcome is already printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def install_startup_handlers() -> None:
    """For a `python -m` entry point, from the top of its package, before its heavy imports:
    a signal that arrives while Python is still importing exits 130 with the one line at
    once (nothing has been written yet, and no `guard` is there to catch an interrupt
    inside the import machinery). Its `main` then calls `install_signal_handlers`."""
    def _now(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _exit_interrupted()

    signal.signal(signal.SIGINT, _now)
    signal.signal(signal.SIGTERM, _now)


def _exit_interrupted() -> NoReturn:
    _echo("interrupted: nothing was written")
    sys.exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def interrupts_exit() -> Iterator[None]:
    """An interrupt inside the block exits 130 with the one line `guard` prints: a
    KeyboardInterrupt, or any exception once a signal has arrived (a C extension whose import
    was cut short raises e.g. "ImportError: initialization failed"). The entry points wrap
    their start-up (option parsing, importing the command's module) in it; command bodies
    run in `guard`, which does the same."""
    try:
        yield
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception:
        if _signalled:
            _exit_interrupted()
        raise


def crash_log(exc: BaseException) -> Path:
    """Write the full traceback of an unexpected exception; returns the file
    ($VTC_CRASH_DIR, or the system temp dir when that is unset or cannot be written)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(exc))
    folders = [os.environ.get("VTC_CRASH_DIR"), tempfile.gettempdir()]
    for folder in filter(None, folders):
        path = Path(folder) / f"vtc-crash-{stamp}-{os.getpid()}.log"
        try:
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return Path("(could not be written)")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def environment_problem(exc: BaseException) -> str | None:
    """The one line for a failure of the machine rather than of vtc or its input: the disk
    (or quota) full, a read-only file system, memory exhausted (exit 2: the user can fix
    it); None for anything else. Libraries that wrap the OSError (safetensors, onnx,
    onnxruntime) are recognised by its text."""
    text = one_line(exc)
    if (isinstance(exc, OSError) and exc.errno in _DISK_FULL) or \
            "No space left on device" in text or "Disk quota exceeded" in text:
        name = getattr(exc, "filename", None)
        where = f" writing {name}" if name else ""
        return (f"no space left on the device{where} ({type(exc).__name__}); free some space "
                "or give an --out (or TMPDIR) on another disk; nothing was kept")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return (f"{exc.filename or 'a path'}: read-only file system; give an --out (or TMPDIR) "
                "on a writable one")
    if isinstance(exc, MemoryError):
        return ("out of memory (MemoryError); lower --batch or validate.samples, or free "
                "memory; nothing was kept")
    return None


def _finish(code: int) -> NoReturn:
    """Exit with the outcome already decided (and its line already printed): a signal from
    here on is ignored (`_interrupt`, then `_ignore_at_exit`), so that it neither adds a
    second line nor, arriving while Python shuts down, kills the process."""
    global _finished
    _finished = True
    sys.exit(code)


def guard(fn: Callable[[], int]) -> NoReturn:
    """Run a command body and exit with the code the README promises (module doc)."""
    install_signal_handlers()
    try:
        code = fn()
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception as exc:
        if _signalled:  # the interrupt surfaced as another exception (e.g. a C extension's
            # import cut short turns it into "ImportError: initialization failed", which a
            # check for an optional package may turn into an input error)
            _exit_interrupted()
        if isinstance(exc, InputError):
            _echo(f"error: {one_line(exc)}")
            _finish(EXIT_INPUT)
        if (problem := environment_problem(exc)) is not None:
            _echo(f"error: {problem}")
            _finish(EXIT_INPUT)
        log = crash_log(exc)
        _echo(f"internal error: {type(exc).__name__}: {one_line(exc)} (at {_where(exc)}); "
              f"the full traceback is in {log}; please report it")
        _finish(EXIT_INTERNAL)
    _finish(code)
