"""`vtc.errors.guard`: the exit codes, including an interrupt that surfaces as
another exception (a C extension's import cut short by SIGTERM raises ImportError)."""

from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

from vtc import errors
from vtc.errors import InputError, guard


def _exit_code(fn: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    try:
        with pytest.raises(SystemExit) as info:
            guard(fn)  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
        errors._signalled = False
    return int(info.value.code or 0), capsys.readouterr().err


def test_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VTC_CRASH_DIR", str(tmp_path))
    assert _exit_code(lambda: 1, capsys)[0] == 1

    def bad() -> int:
        raise InputError("x.onnx: no such file; give an .onnx file")

    code, err = _exit_code(bad, capsys)
    assert code == 2 and err.strip() == "error: x.onnx: no such file; give an .onnx file"

    def crash() -> int:
        raise RuntimeError("boom")

    code, err = _exit_code(crash, capsys)
    assert code == 3 and "internal error: RuntimeError: boom" in err
    assert len(list(tmp_path.glob("vtc-crash-*.log"))) == 1


def test_an_interrupt_turned_into_another_exception_is_still_130(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VTC_CRASH_DIR", str(tmp_path))

    def import_cut_short() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return 0
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    code, err = _exit_code(import_cut_short, capsys)
    assert code == 130 and "interrupted" in err
    assert not list(tmp_path.iterdir())  # no crash log: it was not a crash


@pytest.mark.parametrize(("raised", "says"), [
    (OSError(errno.ENOSPC, "No space left on device", "out/.b.tmp/model.onnx"),
     "no space left on the device writing out/.b.tmp/model.onnx"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left on the device"),
    # safetensors (and onnx, onnxruntime) wrap the OSError: recognised by its text
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
     r"no space left on the device \(RuntimeError\)"),
    (OSError(errno.EROFS, "Read-only file system", "/sys/x"), "/sys/x: read-only file system"),
    (MemoryError(), "out of memory"),
])
def test_the_machine_failing_is_one_line_and_exit_2(
        raised: BaseException, says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk, a read-only file system or exhausted memory is the machine, not vtc:
    exit 2 with one line naming the fix, no crash log."""
    monkeypatch.setenv("VTC_CRASH_DIR", str(tmp_path))

    def fail() -> int:
        raise raised

    code, err = _exit_code(fail, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(says, err) and err.startswith("error: "), err
    assert not list(tmp_path.iterdir())


def test_the_crash_log_falls_back_to_the_temp_dir(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VTC_CRASH_DIR", "/proc/no-such-dir")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR

    def crash() -> int:
        raise RuntimeError("boom")

    code, err = _exit_code(crash, capsys)
    logs = list(tmp_path.glob("vtc-crash-*.log"))
    assert code == 3 and len(logs) == 1 and str(logs[0]) in err, err
    assert "RuntimeError: boom" in logs[0].read_text()


def test_a_signal_after_the_outcome_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Once guard has decided the exit code (and printed its line), a signal while the
    process shuts down is ignored: no second line, no KeyboardInterrupt, no death by
    SIGTERM (at exit the handlers become SIG_IGN, which Python's shutdown keeps)."""
    old = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    try:
        with pytest.raises(SystemExit):
            guard(lambda: 0)
        errors._interrupt(signal.SIGTERM, None)  # returns: nothing raised
        assert not errors._signalled and capsys.readouterr().err == ""
        errors.install_signal_handlers()  # the next command starts afresh
        with pytest.raises(KeyboardInterrupt):
            errors._interrupt(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
        errors._signalled = False
    assert errors._at_exit
