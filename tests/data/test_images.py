from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtc.data.images import batches, load_images, synthetic_batch

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _solid(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_load_images_shape_normalization_and_order(tmp_path: Path) -> None:
    _solid(tmp_path / "b.png", (0, 255, 0), (40, 30))
    _solid(tmp_path / "a.png", (255, 0, 0), (30, 50))
    _solid(tmp_path / "sub" / "c.jpg", (0, 0, 255), (64, 64))
    Image.new("L", (20, 20), 255).save(tmp_path / "d.bmp")  # grayscale -> RGB
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"garbage")
    arr = load_images(tmp_path, size=16, mean=MEAN, std=STD)
    assert arr.shape == (4, 3, 16, 16) and arr.dtype == np.float32
    # sorted: a.png (red), b.png (green), d.bmp (white), sub/c.jpg (blue)
    np.testing.assert_allclose(arr[0, :, 8, 8], [1.0, -1.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(arr[1, :, 8, 8], [-1.0, 1.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(arr[2], 1.0, atol=1e-5)
    assert arr[3, 2].mean() > 0.9 and arr[3, 0].mean() < -0.9
    assert load_images(tmp_path, 16, MEAN, STD, limit=2).shape == (2, 3, 16, 16)


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    img.paste((255, 255, 255), (40, 0, 60, 50))  # white vertical band in the centre
    img.save(tmp_path / "band.png")
    arr = load_images(tmp_path, size=32, mean=(0, 0, 0), std=(1, 1, 1))
    # shorter side 50 -> 37, width 74, crop 32 centred: band spans x = 13.3..18.7 of 32
    assert arr[0, 0, 16, 16] > 0.95
    assert arr[0, 0, 16, 1] < 0.05 and arr[0, 0, 16, 30] < 0.05


def test_empty_folder_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError) as exc:
        load_images(tmp_path, 16, MEAN, STD)
    msg = str(exc.value)
    assert str(tmp_path) in msg and ".png" in msg and ".jpg" in msg
    with pytest.raises(ValueError, match="does not exist"):
        load_images(tmp_path / "missing", 16, MEAN, STD)


def test_synthetic_batch_is_deterministic() -> None:
    a = synthetic_batch(2, 8, seed=3)
    assert a.shape == (2, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, synthetic_batch(2, 8, seed=3))
    assert not np.array_equal(a, synthetic_batch(2, 8, seed=4))


def test_batches_pad_last() -> None:
    arr = np.arange(5)[:, None] * np.ones((1, 2))
    out = list(batches(arr, 2))
    assert [n for _, n in out] == [2, 2, 1]
    assert all(b.shape == (2, 2) for b, _ in out)
    np.testing.assert_array_equal(out[2][0][:, 0], [4, 0])  # padded with image 0
    small = list(batches(arr[:2], 5))
    assert len(small) == 1 and small[0][1] == 2
    np.testing.assert_array_equal(small[0][0][:, 0], [0, 1, 0, 1, 0])
    with pytest.raises(ValueError):
        list(batches(arr, 0))


def test_16_bit_gray_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit PNG (PIL mode I;16) used to be clipped to white by convert("RGB")."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_images(tmp_path, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (1, 3, 32, 32)
    assert 0.3 < float(x.mean()) < 0.7 and float(x.min()) < 0.2  # a ramp, not all white
    np.testing.assert_allclose(x[0, 0], x[0, 1])  # gray copied to every channel
