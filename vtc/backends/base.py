"""The common interface of every inference backend.

A runner maps named input arrays to named output arrays. Shapes are whatever
the model declares; for the vision models in this project the input is
``pixel_values`` float32 ``[B, 3, H, W]`` and the outputs are ``[B, num_classes]``
logits or ``[B, N, C]`` hidden states.
"""

from __future__ import annotations

import abc
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
