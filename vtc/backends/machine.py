"""The machine fingerprint: what absolute throughput depends on besides the model.

Two reports' images/s are comparable only when CPU model, usable cores, system,
Python, onnxruntime version and execution providers all agree; `differences`
names the fields that do not, so that `vtc check` can say why it skipped them.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from vtc.report import MachineInfo

__all__ = ["differences", "machine_info"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(package: str) -> str | None:
    for name in (package, f"{package}-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpu(providers: list[str]) -> str | None:
    """The GPU's name when the engines ran on a CUDA provider (nvidia-smi's first
    device), else None: on the CPU it does not bear on the figures."""
    if not any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in providers):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CUDA device"
    return out.strip().splitlines()[0] if out.strip() else "unknown CUDA device"


def machine_info(providers: list[str]) -> MachineInfo:
    """This machine, with the execution providers the engines used."""
    return MachineInfo(cpu=_cpu_model(), cores=_cores(),
                       system=f"{platform.system()} {platform.machine()}",
                       python=platform.python_version(), onnxruntime=_version("onnxruntime"),
                       providers=list(providers), gpu=_gpu(providers))


def differences(a: MachineInfo, b: MachineInfo) -> list[str]:
    """`field: a vs b` for every fingerprint field that differs (empty: same machine)."""
    out = []
    for name in MachineInfo.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            out.append(f"{name}: {va} vs {vb}")
    return out
