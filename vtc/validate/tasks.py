"""Task-level validation of an engine pair on real data.

* `probe_report`: linear-probe accuracy on a labelled dataset (`validate.dataset`):
  features of the train split from the baseline engine fit a logistic
  regression, evaluated on the test split's features from both engines.
* `dense_report`: Pearson / IoU fidelity of dense outputs (saliency maps).

Engines are run in full static batches (the last one padded, only real rows
kept); images are converted to model input chunk by chunk to bound memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vtc.data.images import batches

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelInput:
    """How dataset images become the engines' input `[N, channels, H, W]`."""

    hw: tuple[int, int]
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    resize: str = "stretch"

    def key(self) -> tuple[Any, ...]:
        return (self.hw, self.channels, tuple(self.mean), tuple(self.std), self.resize)

    def convert(self, images: np.ndarray) -> np.ndarray:
        """uint8 images `[N, h, w(, 3)]` → normalised float32 `[N, channels, H, W]`."""
        from vtc.data import to_model_input

        return to_model_input(images, self.hw, self.mean, self.std, self.channels, self.resize)


def run_engine(rt: Any, x: np.ndarray, batch: int, output: str | None = None) -> np.ndarray:
    """x `[N, C, H, W]` → the runner's output `output` (default: its first) for the N
    real rows, run in full static batches."""
    feed = rt.input_names[0]
    outs = []
    for xb, real in batches(x, batch):
        res = rt.infer({feed: xb})
        outs.append(res[output or rt.output_names[0]][:real])
    return np.concatenate(outs)


def run_outputs(rt: Any, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """x `[N, C, H, W]` → every output of the runner, `[N, ...]` each (N real rows)."""
    feed = rt.input_names[0]
    outs: dict[str, list[np.ndarray]] = {name: [] for name in rt.output_names}
    for xb, real in batches(x, batch):
        res = rt.infer({feed: xb})
        for name in outs:
            outs[name].append(res[name][:real])
    return {name: np.concatenate(parts) for name, parts in outs.items()}


def _features(runners: Sequence[Any], images: np.ndarray, mi: ModelInput,
              batch: int, log: Log, what: str) -> list[np.ndarray]:
    """images `[N, h, w(, 3)]` uint8 → one pooled feature array `[N, C]` per runner."""
    from vtc.validate.probe import pool

    chunk = batch * max(1, 128 // batch)
    feats: list[list[np.ndarray]] = [[] for _ in runners]
    n = len(images)
    for start in range(0, n, chunk):
        x = mi.convert(images[start:start + chunk])
        for out, rt in zip(feats, runners, strict=True):
            out.append(pool(run_engine(rt, x, batch)))
        done = min(start + chunk, n)
        if done == n or (start // chunk) % 4 == 3:
            log(f"      {what}: {done}/{n} images")
    return [np.concatenate(f) for f in feats]


# Baseline-engine features of the last probe, keyed by the engine file's sha256 and the
# split: a sweep rebuilds the same baseline engine for every point.
_BASELINE_FEATURES: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}


def _cap(want: int | None, have: int | None) -> int | None:
    """A requested split size, at most what the dataset has (None: all of it)."""
    if want is None:
        return have
    return want if have is None else min(want, have)


def probe_report(dataset: str, n_train: int | None, n_test: int | None, seed: int,
                 base_rt: Any, comp_rt: Any, mi: ModelInput, batch: int,
                 log: Log) -> dict[str, Any]:
    """Linear-probe accuracy of the baseline and compressed engines (see module doc)."""
    from vtc import data
    from vtc.util import sha256_file
    from vtc.validate.probe import linear_probe

    avail = next((r for r in data.describe() if r["name"] == data.canonical(dataset)), {})
    n_train, n_test = _cap(n_train, avail.get("n_train")), _cap(n_test, avail.get("n_test"))
    log(f"      linear probe on {dataset}: {n_train} train / {n_test} test images "
        f"(of {avail.get('n_train')} / {avail.get('n_test')})")
    split = data.load(dataset, n_train=n_train, n_test=n_test, seed=seed)
    key = (sha256_file(base_rt.model_path), dataset, n_train, n_test, seed, *mi.key())
    if key in _BASELINE_FEATURES:  # same baseline engine, same images (a sweep's points)
        log("      baseline features: reused from an earlier run in this process")
        f_train, f_base = _BASELINE_FEATURES[key]
        (f_comp,) = _features([comp_rt], split.test_images, mi, batch, log,
                              f"{dataset} test features")
    else:
        (f_train,) = _features([base_rt], split.train_images, mi, batch, log,
                               f"{dataset} train features")
        f_base, f_comp = _features([base_rt, comp_rt], split.test_images, mi, batch, log,
                                   f"{dataset} test features")
        _BASELINE_FEATURES.clear()
        _BASELINE_FEATURES[key] = (f_train, f_base)
    res = linear_probe(f_train, split.train_labels, f_base, f_comp, split.test_labels, seed=seed)
    res["dataset"] = split.meta()
    return res


def dense_report(base: np.ndarray, comp: np.ndarray, output: str) -> dict[str, Any]:
    """Per-image Pearson and IoU of dense maps `[N, 1, H, W]` against the baseline."""
    from vtc.validate.dense import dense_fidelity

    res = dense_fidelity(base, comp)
    res["output"] = output
    return res


def is_dense(shape: Sequence[int | str | None]) -> bool:
    """A map output: `[B, K, H, W]` with H, W > 1 (saliency, segmentation, depth)."""
    dims = list(shape)
    return len(dims) == 4 and all(isinstance(d, int) and d > 1 for d in dims[2:])
