from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import vtc.data
from tests.data.conftest import N_TEST, N_TRAIN, idx_bytes, write_fmnist
from vtc.data import DatasetError
from vtc.data import fashion_mnist as fm


def test_parse_idx_round_trip_and_dtypes() -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(fm.parse_idx(idx_bytes(arr)), arr)
    big = np.array([1, -2, 70000], dtype=">i4")
    data = bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + big.tobytes()
    out = fm.parse_idx(data)
    assert out.dtype == np.dtype("int32") and out.tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + bytes(8), "not an IDX file"),
        (b"\x00\x00\x07\x01" + bytes(8), "not an IDX file"),
        (b"\x00\x00\x08\x03" + bytes(6), "truncated IDX header"),
        (idx_bytes(np.zeros((4, 5), np.uint8))[:-1], "truncated"),
        (idx_bytes(np.zeros((4, 5), np.uint8)) + b"x", "trailing bytes"),
    ],
)
def test_parse_idx_rejects(data: bytes, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        fm.parse_idx(data, "f.idx")


def test_read_idx_gz_raw_and_truncated_gzip(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "a.gz"), arr)
    blob = gzip.compress(idx_bytes(np.zeros((100, 100), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"cut\.gz: corrupt or truncated gzip"):
        fm.read_idx(tmp_path / "cut.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_env_folder(small_fm: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    folder = write_fmnist(small_fm / "env", gz=gz)
    monkeypatch.setenv(fm.ENV_VAR, str(folder))
    assert fm.find() == folder
    split = vtc.data.load("Fashion_MNIST")
    assert (split.n_train, split.n_test) == (N_TRAIN, N_TEST)
    assert split.train_images.dtype == np.uint8 and split.train_images.shape == (N_TRAIN, 28, 28)
    assert split.train_labels.dtype == np.int64
    # pixels encode the label: images and labels stay paired
    np.testing.assert_array_equal(split.test_images[:, 0, 0], split.test_labels * 20)
    assert split.classes[0] == "T-shirt/top" and split.classes[9] == "Ankle boot"
    meta = split.meta()
    assert meta["source"] == str(folder) and meta["n_classes"] == 10
    assert "all 60 of the official train set" in meta["selection"]


def test_stratified_subsample_is_fixed_and_independent(small_fm: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fm.ENV_VAR, str(write_fmnist(small_fm / "env")))
    a = vtc.data.load("fashion-mnist", n_train=20, n_test=10, seed=3)
    assert np.bincount(a.train_labels).tolist() == [2] * 10
    assert np.bincount(a.test_labels).tolist() == [1] * 10
    b = vtc.data.load("fashion-mnist", n_train=20, n_test=10, seed=3)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    c = vtc.data.load("fashion-mnist", n_train=40, n_test=10, seed=3)
    np.testing.assert_array_equal(a.test_labels, c.test_labels)  # test set ignores n_train
    d = vtc.data.load("fashion-mnist", n_train=20, n_test=10, seed=4)
    assert not np.array_equal(a.train_labels, d.train_labels)
    meta = a.meta()
    assert (meta["n_train"], meta["n_test"], meta["seed"]) == (20, 10, 3)
    assert "class-stratified" in meta["selection"]
    with pytest.raises(DatasetError, match="only 30 are available"):
        vtc.data.load("fashion-mnist", n_test=31)
    with pytest.raises(DatasetError, match="n_train must be a positive integer"):
        vtc.data.load("fashion-mnist", n_train=0)


def test_stratified_sample_keeps_proportions() -> None:
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    idx = vtc.data.stratified_sample(labels, 10, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 10
    assert np.bincount(labels[idx]).tolist() == [7, 2, 1]
    idx = vtc.data.stratified_sample(labels, 15, np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=3).sum() == 15


def test_search_order_falls_back_to_system(small_fm: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    system = write_fmnist(small_fm / "system", seed=1)
    partial = small_fm / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv(fm.ENV_VAR, str(partial))
    assert fm.search_dirs() == [partial, system]
    assert fm.find() == system
    assert "Debian package dataset-fashion-mnist" in vtc.data.load("fashion-mnist").source
    env = write_fmnist(small_fm / "env", seed=2)
    monkeypatch.setenv(fm.ENV_VAR, str(env))
    assert fm.find() == env


def test_corrupt_files_are_clear_errors(small_fm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_fmnist(small_fm / "env")
    monkeypatch.setenv(fm.ENV_VAR, str(folder))
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    images = folder / "t10k-images-idx3-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(N_TEST - 1, np.uint8))))
    with pytest.raises(DatasetError, match=r"30 images but .* 29 labels"):
        vtc.data.load("fashion-mnist")
    # a labels file where the images should be: wrong magic
    images.write_bytes(gzip.compress(idx_bytes(np.zeros(N_TEST, np.uint8))))
    with pytest.raises(DatasetError, match="magic 2049"):
        fm.read_split("test")
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((N_TEST, 28, 28), np.uint8)))[:40])
    with pytest.raises(DatasetError, match="truncated"):
        fm.read_split("test")
    labels.write_bytes(gzip.compress(idx_bytes(np.full(N_TEST, 12, np.uint8))))
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((N_TEST, 28, 28), np.uint8))))
    with pytest.raises(DatasetError, match=r"label 12 outside 0\.\.9"):
        fm.read_split("test")


def test_missing_dataset_message(small_fm: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        vtc.data.load("fashion-mnist", 10, 10)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "vtc data install fashion-mnist" in msg and fm.ENV_VAR in msg


def test_install_without_root_or_apt(small_fm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(fm, "_is_root", lambda: False)
    with pytest.raises(DatasetError, match=r"run by hand: sudo apt-get install -y "
                                           r"dataset-fashion-mnist$"):
        fm.install()
    monkeypatch.setattr(fm.shutil, "which", lambda _: None)
    with pytest.raises(DatasetError, match=r"apt-get is not available.*VTC_FASHION_MNIST"):
        fm.install()


def test_install_as_root_retries_after_update(small_fm: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], progress: object) -> int:
        calls.append(cmd)
        if cmd[1] == "install" and len(calls) == 1:
            return 100  # "Unable to locate package" before apt-get update
        if cmd[1] == "install":
            write_fmnist(fm.SYSTEM_DIR)
        return 0

    monkeypatch.setattr(fm.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(fm, "_is_root", lambda: True)
    monkeypatch.setattr(fm, "_run_streaming", fake_run)
    lines: list[str] = []
    assert fm.install(progress=lines.append) == fm.SYSTEM_DIR
    assert [c[1] for c in calls] == ["install", "update", "install"]
    assert calls[0] == ["/usr/bin/apt-get", "install", "-y", "dataset-fashion-mnist"]
    assert lines[0] == "$ apt-get install -y dataset-fashion-mnist"
    calls.clear()
    assert fm.install() == fm.SYSTEM_DIR and not calls  # already there: nothing run


def test_install_failure_is_one_line(small_fm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm.shutil, "which", lambda _: "/usr/bin/apt-get")
    monkeypatch.setattr(fm, "_is_root", lambda: True)
    monkeypatch.setattr(fm, "_run_streaming", lambda cmd, progress: 100)
    with pytest.raises(DatasetError, match=r"failed \(exit 100\)") as exc:
        fm.install(progress=lambda _: None)
    assert "\n" not in str(exc.value)


def test_run_streaming_passes_lines() -> None:
    lines: list[str] = []
    rc = fm._run_streaming(["sh", "-c", "echo one; echo two >&2; exit 3"], lines.append)
    assert rc == 3 and lines == ["one", "two"]


def test_real_fashion_mnist() -> None:
    """The installed Debian dataset (CI runs `make data` first)."""
    fm._read_split.cache_clear()
    if fm.find() is None:
        pytest.skip(fm.missing_message())
    split = vtc.data.load("fashion-mnist", n_train=100, n_test=50)
    assert split.train_images.shape == (100, 28, 28) and split.test_images.shape == (50, 28, 28)
    assert np.bincount(split.train_labels).tolist() == [10] * 10
    assert np.bincount(split.test_labels).tolist() == [5] * 10
    assert 0 < split.train_images.mean() < 255
    folder = fm.locate()
    assert fm.header_count(folder, "train") == 60000 and fm.header_count(folder, "test") == 10000
