from __future__ import annotations

import numpy as np
import pytest
import torch

from vtc.backends.torch_eager import TorchRunner


def test_runs_in_inference_mode_and_returns_numpy() -> None:
    seen: dict[str, bool] = {}

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen["inference"] = torch.is_inference_mode_enabled()
        return {"logits": x.sum(dim=(2, 3)), "half": x[:, 0].half()}

    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    with TorchRunner(fn) as r:
        assert r.input_names == ["pixel_values"]
        assert r.name == "torch"
        out = r.infer({"pixel_values": x})
        assert r.output_names == ["logits", "half"]
    assert seen["inference"] is True
    assert isinstance(out["logits"], np.ndarray)
    np.testing.assert_array_equal(out["logits"], x.sum(axis=(2, 3)))
    assert out["half"].dtype == np.float32
    assert out["half"].shape == (2, 2, 2)


def test_wrong_input_name_and_bad_return() -> None:
    r = TorchRunner(lambda x: {"y": x}, input_name="images")
    with pytest.raises(KeyError, match="images"):
        r.infer({"pixel_values": np.zeros((1, 3, 2, 2), np.float32)})
    bad = TorchRunner(lambda x: x)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="dict"):
        bad.infer({"pixel_values": np.zeros((1, 3, 2, 2), np.float32)})
