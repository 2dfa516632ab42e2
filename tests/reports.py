"""A complete typed report for tests of the report's readers (gates, report.md, schema)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vtc.report import (
    AccuracyInfo,
    BudgetInfo,
    DatasetInfo,
    DenseInfo,
    DeploymentInfo,
    EngineInfo,
    FidelityInfo,
    FusionInfo,
    GraphInfo,
    InputsInfo,
    IntervalInfo,
    LayerInfo,
    MachineInfo,
    ParityInfo,
    Report,
    RunConfigInfo,
    SiteInfo,
    SourceInfo,
    Stats,
    ThroughputInfo,
    TimingInfo,
    TokensOutInfo,
    UnmergeInfo,
    ZeroShotInfo,
)
from vtc.validate.dense import dense_fidelity
from vtc.validate.parity import compare
from vtc.validate.probe import linear_probe
from vtc.validate.zero_shot import agreement


def _stats(diff: float) -> Stats:
    return compare(np.ones((2, 3)), np.ones((2, 3)) + diff)


def _probe() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ytr, yte = np.arange(40) % 2, np.arange(20) % 2
    xtr = ytr[:, None] * 4.0 + rng.normal(size=(40, 3))
    xte = yte[:, None] * 4.0 + rng.normal(size=(20, 3))
    return linear_probe(xtr, ytr, xte, xte[::-1].copy(), yte)  # compressed rows reversed


def _zero_shot() -> ZeroShotInfo:
    """Three images, three captions; the engines' third image leans to caption 0."""
    images, texts = np.eye(3), np.eye(3)
    engine = images.copy()
    engine[2] = [0.9, 0.0, 0.5]
    return ZeroShotInfo(
        n_images=3, n_captions=3, captions=["a cat", "a dog", "a car"], captions_from="recipe",
        text_length=12, captions_truncated=0, text_parity=_stats(1e-6),
        text_graph="text.onnx", text_engine="text.ort.onnx",
        **agreement(engine, texts + 1e-7, images, texts))


def timing(median_ms: float, n: int = 20, batch: int = 8, seed: int = 0) -> TimingInfo:
    """A timing with `n` seeded samples spread ±5 % around `median_ms`."""
    samples = 1 + 0.05 * np.random.default_rng(seed).uniform(-1, 1, n)
    samples *= median_ms / np.median(samples)  # the median is exactly median_ms
    p50 = median_ms
    return TimingInfo(p50, float(np.percentile(samples, 95)), float(samples.mean()),
                      batch / p50 * 1e3, n, batch, [float(v) for v in samples])


MACHINE = MachineInfo("Test CPU", 2, "Linux x86_64", "3.12.0", "1.32.0",
                      ["CPUExecutionProvider"])


def sample_report(**changes: Any) -> Report:
    """Every tier measured (ToMe r=8 on a 3-block ViT), fields replaced by `changes`."""
    layers = [LayerInfo(i, 197 - 8 * i, 189 - 8 * i, "tome",
                        {"r": 8, "first": 1, "protected": "inside"}, i > 0,
                        "compact" if i == 2 else "gather") for i in range(3)]
    sites = [SiteInfo(i, "tome", "compact" if i == 2 else "gather", "cost", 22 if i else 36,
                      "ort", 8, {"gather": 400.0 - i, "compact": 900.0 - 300 * i},
                      {"gather": 30000, "compact": 9000000}, {"gather": 300000,
                                                               "compact": 200000},
                      {"gather": 36, "compact": 19}) for i in range(3)]
    dense = dense_fidelity(np.ones((2, 4, 4)), np.ones((2, 4, 4)))
    report = Report(
        vtc_version="0.1.0",
        source=SourceInfo("./vit-base", "hf", "vit", "vit"),
        recipe={"name": "tome-r8", "method": ["tome"]},
        budget=BudgetInfo(methods=["tome"], settings={"tome": {"r": 8}}, tokens_in=197,
                          protected=1, tokens_per_layer=[197, 189, 181], tokens_out=173,
                          layers=layers, flops_base=1000, flops=763, flops_ratio=1.31,
                          flops_overhead=12),
        graph=GraphInfo(blocks=3, sites=3, constants_fixed=9, batch_constants=0,
                        unmerge=UnmergeInfo(2, 197, ["node_view_16"]),
                        op_counts_before={"MatMul": 10}, op_counts_after={"MatMul": 16},
                        tokens_out=TokensOutInfo("merged", ["tokens"], 173, "token_sizes"),
                        reductions=sites),
        engine=EngineInfo("ort", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                          "model.ort.onnx", "fp16",
                          {"CUDAExecutionProvider": {"enable_cuda_graph": "1"}}, True, True,
                          RunConfigInfo("fp32", {"CUDAExecutionProvider": {"use_tf32": "0"}}),
                          {"baseline": 480, "compressed": 560},
                          {"CUDAExecutionProvider": 560}, [], {"fp16": 400, "fp32": 160,
                                                               "casts": 15}),
        machine=MACHINE,
        fusions=FusionInfo({"Gelu": 3}, {"Gelu": 2}, {"Gelu": 1}, {}),
        inputs=InputsInfo("synthetic", 16, "fixed-seed pixels", seed=0),
        output="logits",
        parity=ParityInfo(_stats(1e-6), _stats(2e-6)),
        fidelity=FidelityInfo(64, 0.998, 0.99, 0.97, 1.0),
        dense=DenseInfo(output="depth", **{k: dense[k] for k in (
            "n", "pearson_mean", "pearson_min", "iou_mean", "iou_min", "threshold_quantile",
            "pearson", "iou")}),
        throughput=ThroughputInfo(
            batch=8, baseline_ips=800.0, compressed_ips=1142.9, eager_ips=None,
            eager_compressed_ips=None, speedup=1.4286,
            speedup_ci=IntervalInfo("paired speedup", 1.43, 1.38, 1.47, 0.95, 2000, 0),
            efficiency=1.09,
            baseline=timing(10.0, seed=1), compressed=timing(7.0, seed=2), eager=None,
            eager_compressed=None, method="interleaved"),
        accuracy=AccuracyInfo(dataset=DatasetInfo(
            "lfw-subset", "skimage.data.lfw_subset()", 40, 20, 2, ["no face", "face"],
            [25, 25], 0, "class-stratified fixed-seed split"), **_probe()),
        deployment=DeploymentInfo("fp16", 64, 0.9995, 0.998, 1.0, "sample", 85.0, 0.0),
        zero_shot=_zero_shot(),
    )
    return dataclasses.replace(report, **changes)
