"""`make bench-gpu` (bench/gpu.py): without the CUDA execution provider it measures
nothing and exits 0; with `--provider CPUExecutionProvider --tiny` the same table code
runs end to end on the CPU (its figures are the CPU's, not a GPU's)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from bench import gpu


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has CUDA: make bench-gpu measures for real")
def test_without_cuda_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main([]) == 0
    out = capsys.readouterr().out
    assert "not CUDAExecutionProvider: nothing measured" in out and "PASS" not in out


def test_the_table_runs_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    rc = gpu.main(["--provider", "CPUExecutionProvider", "--tiny", "--no-real",
                   "--repeats", "3", "--batch", "2"])
    out = capsys.readouterr().out
    assert "tome-r16 batch 2, fp16, CPUExecutionProvider, CUDA graph off" in out
    assert "parity, fp32 reference engine (TF32 off)" in out
    assert "vs PyTorch eager fp32 SDPA on the CPU uncompressed" in out
    assert rc in (0, 1) and "targets met" in out  # speed on a shared CPU is not asserted
    parity = next(line for line in out.splitlines() if "parity" in line)
    assert parity.startswith("PASS")
