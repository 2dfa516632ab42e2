from __future__ import annotations

import numpy as np
import pytest

import vtc.data
from vtc.data import DatasetError
from vtc.data import skimage_sets as sk


def test_lfw_labels_follow_the_skimage_docs() -> None:
    images, labels = sk.lfw_subset()
    assert images.shape == (200, 25, 25) and images.dtype == np.uint8
    assert labels.tolist() == [0] * 100 + [1] * 100
    assert not images.flags.writeable
    # the stored floats in [0, 1], rounded to uint8
    import skimage.data

    raw = skimage.data.lfw_subset()
    np.testing.assert_array_equal(images, np.round(raw * 255).astype(np.uint8))


def test_lfw_default_split_is_balanced_disjoint_and_fixed() -> None:
    s = vtc.data.load("lfw-subset")
    assert (s.n_train, s.n_test) == (100, 100)
    assert np.bincount(s.train_labels).tolist() == [50, 50]
    assert np.bincount(s.test_labels).tolist() == [50, 50]
    assert s.classes == ("face", "non-face")
    train = {img.tobytes() for img in s.train_images}
    test = {img.tobytes() for img in s.test_images}
    assert not train & test and len(train | test) == 200
    again = vtc.data.load("lfw", seed=0)
    np.testing.assert_array_equal(s.test_images, again.test_images)
    other = vtc.data.load("lfw", seed=1)
    assert not np.array_equal(s.test_images, other.test_images)
    meta = s.meta()
    assert meta["name"] == "lfw-subset" and "scikit-image" in meta["source"]
    assert meta["image_shape"] == [25, 25] and "stratified" in meta["selection"]


def test_lfw_sizes() -> None:
    s = vtc.data.load("lfw-subset", n_train=30, n_test=20, seed=5)
    assert np.bincount(s.train_labels).tolist() == [15, 15]
    assert np.bincount(s.test_labels).tolist() == [10, 10]
    assert vtc.data.load("lfw-subset", n_test=40).n_train == 160
    assert vtc.data.load("lfw-subset", n_train=150).n_test == 50
    with pytest.raises(DatasetError, match="too many"):
        vtc.data.load("lfw-subset", 150, 60)
    with pytest.raises(DatasetError, match=">= 1"):
        vtc.data.load("lfw-subset", n_train=200)


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; known: fashion-mnist"):
        vtc.data.load("mnist")
    assert vtc.data.names() == ["fashion-mnist", "lfw-subset"]


def test_photos() -> None:
    photos = vtc.data.photos()
    assert list(photos) == ["chelsea", "coffee", "astronaut", "rocket"]
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert photos["astronaut"].shape == (512, 512, 3)
    with pytest.raises(DatasetError, match="unknown photo"):
        sk.photo("camera")


def test_to_model_input_gray_and_rgb() -> None:
    gray = np.zeros((2, 10, 7), np.uint8)
    gray[1] = 255
    x = vtc.data.to_model_input(gray, 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0], -1.0)
    np.testing.assert_allclose(x[1], 1.0)
    rgb = np.zeros((1, 20, 40, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[:, :, 20:, 2] = 255  # right half magenta
    y = vtc.data.to_model_input(rgb, 8, mean=(0.0, 0.5, 0.0), std=(1.0, 0.5, 2.0))
    np.testing.assert_allclose(y[0, 0], 1.0, atol=1e-6)  # red everywhere
    np.testing.assert_allclose(y[0, 1], -1.0, atol=1e-6)  # (0 - 0.5) / 0.5
    # whole image resized (no crop): left columns blue 0, right columns 0.5
    assert y[0, 2, :, 0].max() < 0.01 and y[0, 2, :, -1].min() > 0.49


def test_to_model_input_rejects() -> None:
    with pytest.raises(ValueError, match="uint8"):
        vtc.data.to_model_input(np.zeros((1, 4, 4), np.float32), 8, (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match=r"\[N, H, W\] or \[N, H, W, 3\]"):
        vtc.data.to_model_input(np.zeros((4, 4), np.uint8), 8, (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="3 values"):
        vtc.data.to_model_input(np.zeros((1, 4, 4), np.uint8), 8, (0,), (1,))


def test_describe_rows() -> None:
    rows = {r["name"]: r for r in vtc.data.describe()}
    assert set(rows) == {"fashion-mnist", "lfw-subset", "photos"}
    assert rows["lfw-subset"]["n_classes"] == 2 and rows["lfw-subset"]["installed"]
    assert rows["fashion-mnist"]["n_classes"] == 10
