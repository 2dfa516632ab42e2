from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.data.conftest import write_fmnist
from vtc.cli import main
from vtc.data import fashion_mnist as fm


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_help_has_examples() -> None:
    code, out, _ = _run("data", "--help")
    assert code == 0 and "vtc data install fashion-mnist" in out and "list" in out
    code, out, _ = _run("data", "install", "-h")
    assert code == 0 and "Example" in out


def test_list(small_fm: Path) -> None:
    code, out, _ = _run("data", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "classes", "train", "test"]
    fashion = next(line for line in lines if line.startswith("fashion-mnist"))
    assert "not installed: vtc data install fashion-mnist" in fashion
    assert " 60 " in fashion and " 30 " in fashion  # the expected counts (patched small)
    assert any(line.startswith("lfw-subset") and " 2 " in line for line in lines)
    write_fmnist(fm.SYSTEM_DIR)
    code, out, _ = _run("data", "list")
    fashion = next(line for line in out.splitlines() if line.startswith("fashion-mnist"))
    assert str(fm.SYSTEM_DIR) in fashion and " 60 " in fashion and " 30 " in fashion


def test_install(small_fm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = _run("data", "install", "lfw-subset")
    assert code == 0 and "nothing to install" in out
    code, _, err = _run("data", "install", "imagenet")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: unknown dataset 'imagenet'")

    monkeypatch.setattr(fm.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(fm, "_is_root", lambda: False)
    code, out, err = _run("data", "install", "fashion-mnist")
    assert code == 2 and out == ""
    assert err == ("error: Fashion-MNIST is not installed; run by hand: "
                   "sudo apt-get install -y dataset-fashion-mnist\n")

    def fake_run(cmd: list[str], progress: object) -> int:
        assert callable(progress)
        progress("Setting up dataset-fashion-mnist ...")
        write_fmnist(fm.SYSTEM_DIR)
        return 0

    monkeypatch.setattr(fm, "_is_root", lambda: True)
    monkeypatch.setattr(fm, "_run_streaming", fake_run)
    code, out, err = _run("data", "install", "fashion-mnist")
    assert code == 0, err
    assert "Setting up dataset-fashion-mnist" in err  # progress on stderr
    assert out.strip() == (f"fashion-mnist: installed in {fm.SYSTEM_DIR} "
                           "(60 train / 30 test, 10 classes)")
    code, out, _ = _run("data", "install", "fashion-mnist")
    assert code == 0 and "already installed" in out


def test_corrupt_install_is_exit_2(small_fm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_fmnist(small_fm / "env")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    monkeypatch.setenv(fm.ENV_VAR, str(folder))
    code, _, err = _run("data", "install", "fashion-mnist")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "corrupt or truncated gzip" in err
