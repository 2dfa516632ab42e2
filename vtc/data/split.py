"""What every dataset module returns, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vtc.errors import InputError


class DatasetError(InputError):
    """A dataset is missing, corrupt, or was asked for in a way it cannot serve."""


@dataclass(frozen=True, eq=False)  # arrays: no element-wise __eq__
class Split:
    """A train/test split. Images are uint8 ``[N, H, W]`` (gray) or ``[N, H, W, 3]``;
    labels int64 ``[N]`` indexing ``classes``."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str
    seed: int
    selection: str

    @property
    def n_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_labels.shape[0])

    def meta(self) -> dict[str, Any]:
        """JSON-ready description for reports: what was loaded, from where, and how chosen."""
        return {
            "name": self.name,
            "source": self.source,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_classes": len(self.classes),
            "classes": list(self.classes),
            "image_shape": list(self.train_images.shape[1:]),
            "seed": self.seed,
            "selection": self.selection,
        }
