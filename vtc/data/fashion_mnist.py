"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, read with our own IDX reader.

Files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` — 60,000 train and
10,000 test images, 28×28 uint8, 10 classes. Looked for in ``$VTC_FASHION_MNIST``,
then ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from vtc.data.split import DatasetError

ENV_VAR = "VTC_FASHION_MNIST"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
INSTALL_CMD = ("apt-get", "install", "-y", PACKAGE)
UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"

CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SPLITS: dict[str, tuple[str, str, int]] = {  # split -> (images stem, labels stem, count)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
ROWS = COLS = 28

# IDX type byte -> big-endian numpy dtype
_IDX_TYPES: dict[int, str] = {
    0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}


def _open(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes: 2 zero bytes, a type byte, a dimension count, big-endian
    uint32 dimensions, then exactly prod(dims) values. Returns an array of shape dims
    (native byte order). A bad header or a size mismatch raises DatasetError."""
    if len(data) < 4:
        raise DatasetError(f"{where}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DatasetError(f"{where}: not an IDX file (magic bytes {data[:4].hex()})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DatasetError(f"{where}: truncated IDX header ({len(data)} < {head} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    want = head + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        what = "truncated" if len(data) < want else "has trailing bytes"
        raise DatasetError(
            f"{where}: {what}: header says {list(dims)} × {dtype.itemsize} B "
            f"({want} bytes with header), file has {len(data)}"
        )
    arr = np.frombuffer(data, dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed); see ``parse_idx``."""
    return parse_idx(_open(Path(path)), str(path))


def _magic(arr_data: bytes) -> int:
    return int.from_bytes(arr_data[:4], "big") if len(arr_data) >= 4 else -1


def _file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_file(folder, s) is not None for im, lb, _ in SPLITS.values() for s in (im, lb))


def search_dirs() -> list[Path]:
    """Folders searched, in order: ``$VTC_FASHION_MNIST`` (when set), the Debian path."""
    env = os.environ.get(ENV_VAR)
    return [Path(env).expanduser(), SYSTEM_DIR] if env else [SYSTEM_DIR]


def find() -> Path | None:
    """The first searched folder holding all four files, or None."""
    return next((d for d in search_dirs() if d.is_dir() and _complete(d)), None)


def missing_message() -> str:
    where = ", ".join(str(d) for d in search_dirs())
    return (
        f"Fashion-MNIST not found (looked in {where}); run `vtc data install fashion-mnist` "
        f"or set {ENV_VAR} to a folder with the four *-ubyte.gz files"
    )


def locate() -> Path:
    """``find()``, or a DatasetError saying how to install the dataset."""
    folder = find()
    if folder is None:
        raise DatasetError(missing_message())
    return folder


def _check_pair(images: np.ndarray, labels: np.ndarray, img_data: bytes, lab_data: bytes,
                img_path: Path, lab_path: Path, count: int) -> None:
    if _magic(img_data) != IMAGE_MAGIC or images.shape[1:] != (ROWS, COLS):
        raise DatasetError(f"{img_path}: expected uint8 [N, {ROWS}, {COLS}] images (magic "
                           f"{IMAGE_MAGIC}), got magic {_magic(img_data)} {list(images.shape)}")
    if _magic(lab_data) != LABEL_MAGIC:
        raise DatasetError(f"{lab_path}: expected uint8 [N] labels (magic {LABEL_MAGIC}), "
                           f"got magic {_magic(lab_data)} {list(labels.shape)}")
    if len(images) != len(labels):
        raise DatasetError(f"{img_path} has {len(images)} images but {lab_path} has "
                           f"{len(labels)} labels")
    if len(images) != count:
        raise DatasetError(f"{img_path}: {len(images)} images, Fashion-MNIST has {count}")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DatasetError(f"{lab_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")


@lru_cache(maxsize=4)
def _read_split(folder: str, split: str, stamp: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    img_stem, lab_stem, count = SPLITS[split]
    img_path, lab_path = _file(Path(folder), img_stem), _file(Path(folder), lab_stem)
    if img_path is None or lab_path is None:
        raise DatasetError(f"{folder}: missing {img_stem}[.gz] or {lab_stem}[.gz]")
    img_data, lab_data = _open(img_path), _open(lab_path)
    images = parse_idx(img_data, str(img_path))
    labels = parse_idx(lab_data, str(lab_path))
    _check_pair(images, labels, img_data, lab_data, img_path, lab_path, count)
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def read_split(split: str, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official ``split`` ("train" or "test"): read-only uint8 images ``[N, 28, 28]``
    and int64 labels ``[N]``. Cached per folder, file mtime and size."""
    if split not in SPLITS:
        raise DatasetError(f"unknown Fashion-MNIST split {split!r}; use one of {list(SPLITS)}")
    folder = locate() if folder is None else Path(folder)
    stems = SPLITS[split][:2]
    paths = [_file(folder, s) for s in stems]
    stamp = tuple(v for p in paths if p for v in (p.stat().st_mtime_ns, p.stat().st_size))
    images, labels = _read_split(str(folder), split, stamp)
    return images, labels


def header_count(folder: Path, split: str) -> int:
    """Number of images the split's image file declares (reads the header only)."""
    path = _file(folder, SPLITS[split][0])
    if path is None:
        raise DatasetError(f"{folder}: no {SPLITS[split][0]}[.gz]")
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read the IDX header ({exc})") from None
    if len(head) < 8 or _magic(head) != IMAGE_MAGIC:
        raise DatasetError(f"{path}: not an IDX image file")
    return int.from_bytes(head[4:8], "big")


def _run_streaming(cmd: list[str], progress: Callable[[str], None]) -> int:
    """Run ``cmd``, passing each output line to ``progress``; return its exit status."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            progress(line.rstrip("\n"))
        return proc.wait()


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def install(progress: Callable[[str], None] = print) -> Path:
    """Make Fashion-MNIST available and return its folder.

    Already found: returns it. Otherwise, as root with apt-get: runs
    ``apt-get install -y dataset-fashion-mnist`` (after ``apt-get update`` when the
    first try fails), streaming its output to ``progress``. Otherwise raises
    DatasetError naming the command to run by hand."""
    folder = find()
    if folder is not None:
        return folder
    apt = shutil.which("apt-get")
    if apt is None:
        raise DatasetError(
            f"Fashion-MNIST is not installed and apt-get is not available; download the four "
            f"*-ubyte.gz files from {UPSTREAM} into a folder and set {ENV_VAR} to it"
        )
    if not _is_root():
        raise DatasetError(
            f"Fashion-MNIST is not installed; run by hand: sudo {' '.join(INSTALL_CMD)}"
        )
    cmd = [apt, *INSTALL_CMD[1:]]
    progress(f"$ {' '.join(INSTALL_CMD)}")
    status = _run_streaming(cmd, progress)
    if status != 0:
        progress(f"apt-get install exited with {status}; refreshing the package lists")
        progress("$ apt-get update")
        if _run_streaming([apt, "update"], progress) == 0:
            progress(f"$ {' '.join(INSTALL_CMD)}")
            status = _run_streaming(cmd, progress)
    if status != 0:
        raise DatasetError(
            f"`{' '.join(INSTALL_CMD)}` failed (exit {status}); see its output above, or set "
            f"{ENV_VAR} to a folder with the four *-ubyte.gz files from {UPSTREAM}"
        )
    folder = find()
    if folder is None:
        raise DatasetError(f"{PACKAGE} installed but its files are not in {SYSTEM_DIR}; set "
                           f"{ENV_VAR} to the folder holding the four *-ubyte.gz files")
    return folder
