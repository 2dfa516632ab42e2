"""Eager PyTorch backend: the reference every exported graph is validated against."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vtc.backends.base import Runner

TorchFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class TorchRunner(Runner):
    """Wraps ``fn(pixel_values[B, 3, H, W]) -> {output_name: tensor}``.

    Runs under ``torch.inference_mode`` on the device of ``device`` (CPU by
    default) and returns float32/int numpy arrays on the host.
    """

    def __init__(
        self, fn: TorchFn, input_name: str = "pixel_values", device: str | torch.device = "cpu"
    ) -> None:
        self.fn = fn
        self.input_name = input_name
        self.device = torch.device(device)
        self._outputs: list[str] = []
        self._loaded = False

    @property
    def name(self) -> str:
        return "torch"

    @property
    def input_names(self) -> list[str]:
        return [self.input_name]

    @property
    def output_names(self) -> list[str]:
        """Known after the first ``infer`` (the callable decides its outputs)."""
        return list(self._outputs)

    def load(self) -> None:
        self._loaded = True

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.input_name not in feeds:
            raise KeyError(f"expected input {self.input_name!r}, got {sorted(feeds)}")
        x = torch.from_numpy(np.ascontiguousarray(feeds[self.input_name])).to(self.device)
        with torch.inference_mode():
            out = self.fn(x)
        if not isinstance(out, dict):
            raise TypeError(f"the torch callable must return a dict, got {type(out).__name__}")
        self._outputs = list(out)
        result: dict[str, np.ndarray] = {}
        for k, v in out.items():
            t = v.detach().cpu()
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()
            result[k] = t.numpy()
        return result

    def close(self) -> None:
        self._loaded = False
