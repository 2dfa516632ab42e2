"""Small synthetic Fashion-MNIST folders (IDX files) so that reader tests need no real data."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vtc.data import fashion_mnist as fm

N_TRAIN, N_TEST = 60, 30  # per-split sizes the tests make the reader expect


def idx_bytes(arr: np.ndarray, magic_type: int = 0x08) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type, ndim, big-endian dims, data."""
    head = bytes([0, 0, magic_type, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    return head + arr.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, gz: bool = True, seed: int = 0) -> Path:
    """Four IDX files with N_TRAIN / N_TEST images whose pixels encode their label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        img_stem, lab_stem, _ = fm.SPLITS[split]
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        images = np.repeat(labels[:, None, None] * 20, 28 * 28).reshape(n, 28, 28)
        for stem, arr in ((img_stem, images), (lab_stem, labels)):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return folder


@pytest.fixture
def small_fm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Reader expects N_TRAIN/N_TEST images; no system folder; no env var."""
    monkeypatch.setitem(fm.SPLITS, "train", (*fm.SPLITS["train"][:2], N_TRAIN))
    monkeypatch.setitem(fm.SPLITS, "test", (*fm.SPLITS["test"][:2], N_TEST))
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    fm._read_split.cache_clear()
    yield tmp_path
    fm._read_split.cache_clear()
