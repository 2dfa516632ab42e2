"""The common interface of every inference backend.

A runner maps named input arrays to named output arrays. Shapes are whatever
the model declares; for the vision models in this project the input is
``pixel_values`` float32 ``[B, 3, H, W]`` and the outputs are ``[B, num_classes]``
logits or ``[B, N, C]`` hidden states.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import numpy as np

from vtc.errors import InputError

_R = TypeVar("_R", bound="Runner")


class BackendUnavailable(InputError):
    """The backend (or the requested device / execution provider) cannot run here."""


class Runner(abc.ABC):
    """One loaded model on one backend.

    Use as a context manager: ``with runner: runner.infer(feeds)`` loads on
    enter and releases resources on exit.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Short backend label used in reports, e.g. ``"ort"``."""

    @property
    @abc.abstractmethod
    def input_names(self) -> list[str]:
        """Names of the model inputs, in declaration order."""

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]:
        """Names of the model outputs, in declaration order."""

    @abc.abstractmethod
    def load(self) -> None:
        """Create the session / engine. Raises :class:`BackendUnavailable`."""

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` maps input name to array (e.g. float32 ``[B, 3, H, W]``);
        the result maps every output name to a host numpy array."""

    def timed(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument call that runs one batch of `feeds`, for timing; engines that
        can keep inputs and outputs on the device (ORT I/O binding) do so."""
        return lambda: self.infer(feeds)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session / engine; safe to call more than once."""

    def __enter__(self: _R) -> _R:
        self.load()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ZeroFed(Runner):
    """A runner of a graph that takes inputs besides the image: `input_names` is the image
    input alone, and every other input is fed zeros of its `(shape, numpy dtype)` (the
    first dim follows the image's batch). Other attributes are the wrapped runner's."""

    def __init__(self, inner: Runner, image: str, zeros: dict[str, tuple[list[int], str]]
                 ) -> None:
        self.inner, self.image, self.zeros = inner, image, zeros

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def input_names(self) -> list[str]:
        return [self.image]

    @property
    def output_names(self) -> list[str]:
        return self.inner.output_names

    def load(self) -> None:
        self.inner.load()

    def _fed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = int(feeds[self.image].shape[0])
        extra = {k: np.zeros([b, *shape[1:]] if shape else [], dtype=np.dtype(dtype))
                 for k, (shape, dtype) in self.zeros.items()}
        return {**feeds, **extra}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.infer(self._fed(feeds))

    def timed(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        return self.inner.timed(self._fed(feeds))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, attr: str) -> object:
        if attr == "inner":  # not set yet (during copy/unpickle): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)
