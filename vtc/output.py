"""The output directory: checked before any work, written by one run at a time, and
replaced only as a whole.

    check_out(out, force, sources)   refuse an --out that is, holds or lies inside a
                                     source or the zoo cache, the working directory or
                                     one of its parents, a file, a dangling link, a
                                     place that cannot be written, or (without --force)
                                     a non-empty directory
    building(out, force)             context: holds the lock `.NAME.lock` beside --out
                                     for the whole run (a second run is told who holds
                                     it) and yields an empty temporary directory beside
                                     --out; on success `publish` renames it into place;
                                     on any failure or interrupt it is removed
    publish(tmp, out, replace)       never replaces a bundle that appeared during the run
                                     unless --force was given

Nothing here knows what a bundle holds; `vtc-export` and `vtc sweep` both use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vtc.errors import OutputError

__all__ = ["OutputError", "building", "check_out", "publish"]


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies under b (both resolved)."""
    return a == b or b in a.parents


def _describe(path: Path) -> str:
    return str(path) if str(path) else "."


def check_out(out: Path, force: bool, protected: Sequence[tuple[Path, str]] = ()) -> None:
    """Refuse an unusable --out before any work (module docstring); OutputError names
    the problem and the fix. `protected`: (path, what it is) pairs vtc never writes."""
    if not str(out).strip():
        raise OutputError("--out is empty; give a directory for the bundle")
    if out.is_symlink() and not out.exists():
        raise OutputError(f"--out {out} is a dangling symbolic link; give a real directory")
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, real):
        raise OutputError(f"--out {_describe(out)} is the working directory or one of its "
                          "parents, which a bundle would replace; give a new directory, e.g. "
                          "out/bundle")
    for path, label in protected:
        s = path.resolve()
        if _inside(real, s) or _inside(s, real):
            how = "is" if real == s else "lies inside" if _inside(real, s) else "contains"
            raise OutputError(f"--out {out} {how} {label} {path}, which vtc never writes; "
                              "give another directory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"--out {out} exists and is not empty; pass --force to replace it")
    if len(out.name.encode()) > 200:
        raise OutputError(f"--out {out.name[:40]}…: the name is {len(out.name.encode())} bytes "
                          "long; give a name under 200 bytes")
    parent = real.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: {existing} cannot be written by this user; give a "
                          "writable place")


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return (f"pid {info['pid']} on {info['host']}, since "
                f"{time.strftime('%H:%M:%S', time.localtime(info['since']))}: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    lock = out.with_name(f".{out.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create {lock.name} beside it ({exc.strerror})"
                          ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputError(f"--out {out} is being written by another vtc run ({_holder(lock)})"
                              "; wait for it to finish or give another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time(), "command": " ".join(sys.argv)}).encode())
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still holding it: a waiting run sees it free
    finally:
        os.close(fd)


@contextlib.contextmanager
def building(out: Path, force: bool, label: str = "tmp") -> Iterator[Path]:
    """Hold --out's lock and yield an empty temp dir beside it (removed unless published)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create {out.parent} ({exc.strerror}); give a "
                          "writable place") from exc
    with _lock(out):
        check_out(out, force)  # again, under the lock: another run may have finished
        tmp = out.with_name(f".{out.name}.{label}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as exc:
            raise OutputError(f"--out {out}: cannot create a directory beside it "
                              f"({exc.strerror})") from exc
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, replace: bool) -> None:
    """Rename a finished temp dir into place; an old `out` is removed only now, and only
    with `replace` (--force) when it is not empty."""
    if out.exists() and not replace and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out} appeared while this run was building it; nothing was "
                          "replaced (pass --force to replace it)")
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
