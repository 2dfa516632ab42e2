"""`vtc.errors.guard`: the exit codes, including an interrupt that surfaces as
another exception (a C extension's import cut short by SIGTERM raises ImportError)."""

from __future__ import annotations

import os
import signal
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
