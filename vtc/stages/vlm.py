"""The pipeline of a vision-language bundle (a registered family: LLaVA, Qwen2.5-VL), stage
by stage::

    SOURCE ─► load ─► plan cuts ─► vision graph (cut; uncut in scratch) ─► embedding graph
           ─► LM directory ─► onnxruntime-genai model builder ─► decoder passes (LM cuts,
              last-token logits) ─► genai_config.json ─► validate (onnxruntime-genai)
           ─► time ─► bundle

Validation (`vtc.validate.generation`) runs every prompt of `generate.prompts` (each
with one image: --images, else scikit-image's photos) through the bundle's runtime
(onnxruntime-genai, or `vtc.runtime`'s onnxruntime loop where the family says genai
cannot express the cuts), the eager HF model with the same cuts (the family's
reference: parity) and HF's own uncut generate (fidelity), then times the uncut bundle
(uncut vision graph, the builder's decoder as written, on genai) and the cut one
interleaved (cost). The bundle holds vision.onnx, embedding.onnx, decoder.onnx (+
.data), genai_config.json (genai-run bundles), tokenizer files, generation.json,
manifest.json, report.json and report.md; the builder's output and the uncut graphs
live in a scratch directory beside it and are removed.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import vtc
from vtc.backends import engines
from vtc.backends.machine import machine_info
from vtc.data.images import IMAGE_EXTENSIONS, UNREADABLE
from vtc.errors import InputError, one_line
from vtc.exporter.registry import use_safetensors
from vtc.report import SourceInfo, to_jsonable
from vtc.report_vlm import (
    VLM_GATES,
    CutsInfo,
    VlmEngine,
    VlmParity,
    VlmReport,
)
from vtc.runtime.generate import VlmBundle
from vtc.source import Source
from vtc.util import sha256_file, write_atomic
from vtc.validate.generation import cost, validate
from vtc.validate.report_vlm import judge, render_markdown
from vtc.vlm import decoder, embedding, export, families, plan, stream
from vtc.vlm.families import GENAI, ORT, Family
from vtc.vlm.llava import TEMPLATE
from vtc.vlm.plan import Cuts

Log = Callable[[str], None]


def check_recipe(recipe: Any) -> None:
    """Refuse gates that judge encoder bundles (before any work)."""
    enc = sorted(g for g in recipe.gates if g not in VLM_GATES)
    if enc:
        raise InputError(f"gate(s) {enc} judge encoder bundles; a vision-language bundle "
                         f"takes {', '.join(VLM_GATES)}")


def check_tokenizer(path: Path) -> None:
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"{path}: no tokenizer.json; vtc generate and the validation need the "
                         "checkpoint's fast tokenizer (save it with "
                         "AutoTokenizer.save_pretrained into the checkpoint directory)")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library's own error types
        raise InputError(f"{path / 'tokenizer.json'}: not a tokenizer file the tokenizers "
                         f"library reads ({one_line(exc)[:160]}); give the checkpoint's own "
                         "(AutoTokenizer.save_pretrained)") from None


def _eos(model: Any) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if ids is not None else model.config.text_config.eos_token_id
    return sorted({int(i) for i in (ids if isinstance(ids, list) else [ids]) if i is not None})


def image_start(tok_file: Path, image_token_id: int, template: str = TEMPLATE) -> int:
    """Where the chat template puts the image (token index): an LM cut's static span starts
    there."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_file))
    text = template.replace("<image>", tok.id_to_token(image_token_id) or "<image>")
    ids = tok.encode(text.format(prompt="x")).ids
    if image_token_id not in ids:
        raise InputError(f"{tok_file}: the chat template's image token does not encode to "
                         f"image_token_id {image_token_id}; give the checkpoint's own "
                         "tokenizer.json")
    return ids.index(image_token_id)


def generation_json(fam: Family, geo: Any, cuts: Cuts, image_token: str, eos: list[int],
                    precision: str, start: int | None, built: dict[str, Any]) -> str:
    """vtc's processor config (`vtc.runtime.generate`); `built` is the builder's
    genai_config.json (the decoder's shape and max_length)."""
    data = {
        "visual_tokens": cuts.visual, "image_token": image_token,
        "image_token_id": geo.image_token_id,
        "template": fam.template.replace("<image>", image_token),
        "eos_token_ids": eos, "processor": fam.processor(geo),
        "features_rank": fam.features_rank, "layers": geo.lm_layers,
        "decoder_precision": precision, "runtime": fam.runtime(cuts),
        "decoder": {k: built["model"]["decoder"][k] for k in (
            "num_hidden_layers", "num_key_value_heads", "head_size", "hidden_size")},
        "max_length": built["search"]["max_length"],
        # an LM cut selects within a static span: the image must sit at image_start
        "image_start": start if cuts.lm_steps else None,
        "cuts": [dataclasses.asdict(st) for st in cuts.steps],
    }
    proc = data["processor"]
    if proc["kind"] == "clip":  # the keys bundles before "processor" had at the top
        data.update({k: proc[k] for k in ("image_size", "resize", "mean", "std")})
    return json.dumps(data, indent=1) + "\n"


def genai_config(fam: Family, geo: Any, built: Path, folder: Path) -> None:
    """genai_config.json: the builder's, with the vision and embedding graphs added and
    the family's pipeline selected (`Family.genai`)."""
    cfg = json.loads((built / "genai_config.json").read_text())
    cfg["model"]["decoder"]["filename"] = "decoder.onnx"
    cfg["model"]["vision"] = {"filename": "vision.onnx",
                              "inputs": {"pixel_values": "pixel_values"},
                              "outputs": {"image_features": export.FEATURES}}
    cfg["model"]["embedding"] = {"filename": "embedding.onnx",
                                 "inputs": {"input_ids": "input_ids",
                                            "image_features": export.FEATURES},
                                 "outputs": {"inputs_embeds": "inputs_embeds"}}
    fam.genai(cfg["model"], geo)
    write_atomic(folder / "genai_config.json", json.dumps(cfg, indent=1) + "\n")


def tokenizer_files(built: Path, folder: Path) -> None:
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        if (built / f).is_file():
            shutil.copyfile(built / f, folder / f)


def vision_with_encoder_cuts(fam: Family, model: Any, geo: Any, cuts: Cuts, path: Path
                             ) -> Path:
    """vision.onnx when the recipe cuts inside the tower: the uncut tower body rewritten
    by the encoder passes (as `stages.compress` rewrites any encoder, tokens left merged
    with their sizes), joined to the tail (layer F, VisionZip, projector) exported at the
    cut token count."""
    import onnx
    import onnx_ir as ir
    from onnx import compose

    from vtc import passes
    from vtc.passes.model_io import save_model
    from vtc.stages.compress import rewrite

    assert cuts.encoder is not None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".vision-") as scratch:
        s = Path(scratch)
        assert fam.export_tower_body is not None and fam.export_tower_tail is not None
        body = fam.export_tower_body(model, geo, s / "body.onnx")
        graph = passes.load(body, 1, (geo.image_size, geo.image_size), 3)
        rewrite(graph, cuts.encoder, "never", "merged")
        sizes = any(o.name == "token_sizes" for o in graph.graph.outputs) and any(
            lp.attn_bias for lp in cuts.encoder.layers)  # layer F reads them
        save_model(graph, s / "body_cut.onnx")
        tail = fam.export_tower_tail(model, geo, cuts, cuts.encoder.tokens_out, sizes,
                                     s / "tail.onnx")
        first, second = onnx.load(str(s / "body_cut.onnx")), onnx.load(str(tail))
        second = compose.add_prefix(second, "tail_", rename_outputs=False)
        version = max(o.version for o in first.opset_import if o.domain in ("", "ai.onnx"))
        for m in (first, second):
            m.ir_version = max(first.ir_version, second.ir_version)
            for o in m.opset_import:
                if o.domain in ("", "ai.onnx"):
                    o.version = max(version, export.OPSET)
        io = [("hidden", "tail_hidden")] + ([("token_sizes", "tail_token_sizes")] if sizes
                                             else [])
        joined = compose.merge_models(first, second, io_map=io,
                                      outputs=[export.FEATURES])
        export.publish(ir.from_proto(joined), path, s)
    return path


def build_decoder(fam: Family, model: Any, src: Source, scratch: Path, precision: str,
                  log: Log, twin: bool = True) -> tuple[Path, Path | None]:
    """The builder's decoder of the checkpoint's LM at `precision` (a folder in
    `scratch`), and for fp16/int4 its fp32 twin (the graphs parity is judged on; int4 is
    quantized from it) unless `twin` is False (int4 is then quantized from an fp32
    decoder that is deleted as soon as it is)."""
    lm = fam.lm_dir(src.path, model, scratch / "lm")
    fp32: Path | None = None
    if precision != "fp32" and twin:
        fp32 = decoder.run_builder(lm, scratch / "built-fp32", "fp32", log)
    if precision == "int4" and fp32 is not None:
        shutil.rmtree(lm)
        return decoder.quantize_int4(fp32, scratch / "built", log), fp32
    built = decoder.run_builder(lm, scratch / "built", precision, log)
    shutil.rmtree(lm)
    return built, fp32


def _decoder_dtype(path: Path) -> type:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    vi = next(i for i in proto.graph.input if i.name == "inputs_embeds")
    return np.float16 if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else np.float32


def _write_graphs(fam: Family, model: Any, geo: Any, cuts: Cuts, folder: Path, built: Path,
                  tok: Path, image_token: str, eos: list[int], precision: str,
                  start: int | None, rewrite: bool = True) -> dict[str, Any]:
    """One bundle's files into `folder`; `rewrite=False` keeps the builder's decoder as
    written (the uncut baseline a user would run without vtc)."""
    enc = cuts.encoder is not None and bool(cuts.encoder.reducing_layers)
    if enc:
        vision_with_encoder_cuts(fam, model, geo, cuts, folder / "vision.onnx")
    else:
        fam.export_vision(model, geo, cuts, folder / "vision.onnx")
    table = model.get_input_embeddings().weight.detach().float().numpy()
    dtype = _decoder_dtype(built / "model.onnx")
    embedding.write(table, geo.image_token_id, dtype, folder / "embedding.onnx",
                    fam.features_rank)
    done: dict[str, Any] = {}
    if rewrite:
        done = decoder.rewrite(built / "model.onnx", folder / "decoder.onnx",
                               decoder.cut_passes(cuts.lm_steps, int(start or 0)))
    else:
        shutil.copyfile(built / "model.onnx", folder / "decoder.onnx")
        data = built / "model.onnx.data"
        if data.exists():  # the builder's file names its data model.onnx.data
            shutil.copyfile(data, folder / "model.onnx.data")
    # a bundle genai cannot run right gets no genai_config.json (generation.json says
    # which runtime runs it)
    if fam.runtime(cuts) == GENAI:
        genai_config(fam, geo, built, folder)
    tokenizer_files(built, folder)
    shutil.copyfile(tok, folder / "tokenizer.json")
    built_cfg = json.loads((built / "genai_config.json").read_text())
    write_atomic(folder / "generation.json",
                 generation_json(fam, geo, cuts, image_token, eos, precision, start, built_cfg))
    return done


def _images(folder: Path | None, n: int) -> list[Image.Image]:
    if folder is not None:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        imgs = []
        for p in files:
            try:
                imgs.append(Image.open(p).convert("RGB"))
            except UNREADABLE:
                continue
        if not imgs:
            raise InputError(f"--images {folder}: no readable image")
    else:
        from vtc.data import photos

        imgs = [Image.fromarray(a) for a in photos().values()]
    return [imgs[i % len(imgs)] for i in range(n)]


def cuts_info(recipe: Any, geo: Any, cuts: Cuts, base: Cuts) -> CutsInfo:
    enc = cuts.encoder
    lt, lt0 = plan.layer_tokens(geo, cuts), plan.layer_tokens(geo, base)
    steps = [dict(dataclasses.asdict(st), lm_gflops=g)
             for st, g in zip(cuts.steps, plan.step_gflops(geo, cuts), strict=True)]
    g0, g = plan.gflops(geo, base), plan.gflops(geo, cuts)
    return CutsInfo(
        tower_tokens=geo.tower_tokens, encoder=enc.label if enc is not None else "none",
        encoder_tokens_out=enc.tokens_out if enc is not None else geo.tower_tokens,
        steps=steps, visual_tokens_uncut=base.visual, visual_tokens=cuts.visual,
        prompt_tokens=recipe.generate.prompt_tokens, prefill_length_uncut=base.prefill,
        prefill_length=cuts.prefill, lm_layer_tokens_uncut=lt0, lm_layer_tokens=lt,
        flops_ratio=round(g0 / g, 4),
        vision_flops_ratio=round(plan.vision_macs(geo, base) / plan.vision_macs(geo, cuts), 4),
        lm_gflops_uncut=g0, lm_gflops=g)


def build(src: Source, recipe: Any, tmp: Path, images: Path | None, bench: bool,
          allow_pickle: bool, log: Log, model: Any = None) -> VlmReport:
    """Every stage of a VLM bundle into `tmp` (module docstring)."""
    t0 = time.perf_counter()
    check_recipe(recipe)
    check_tokenizer(src.path)
    steps = 6 if bench else 5

    def step(k: int, msg: str) -> None:
        log(f"[{k}/{steps}] {msg} (+{time.perf_counter() - t0:.1f}s)")

    fam = families.get(src.model_type or "llava")
    eng = engines.get(recipe.backend.kind)  # checked by the pipeline: it runs generation
    step(1, f"loading {src.spec} ({fam.name})")
    if model is None:
        model, geo = fam.load(src.path, use_safetensors(src.path, allow_pickle), recipe=recipe)
    else:
        geo = fam.check_config(model.config, src.spec, recipe)
    try:
        cuts, base = plan.plan(recipe, geo), plan.uncut(recipe, geo)
        plan.check_context(base, recipe.generate.max_new_tokens, getattr(
            model.config.text_config, "max_position_embeddings", None))
    except vtc.budget.BudgetError as exc:
        raise InputError(str(exc)) from None
    # the engine kind's generation runtime, unless the family says it cannot express
    # these cuts (Qwen2.5-VL after a cut before the LLM): vtc.runtime's onnxruntime loop
    runtime = str(eng.generation) if fam.runtime(cuts) == GENAI else ORT
    eos = _eos(model)
    from tokenizers import Tokenizer

    tok_file = src.path / "tokenizer.json"
    image_token = Tokenizer.from_file(str(tok_file)).id_to_token(geo.image_token_id)
    if image_token is None:
        raise InputError(f"{tok_file}: the tokenizer has no token for image_token_id "
                         f"{geo.image_token_id}; use the checkpoint's own tokenizer")
    precision = recipe.generate.precision
    decoder.require_genai()
    start = image_start(tok_file, geo.image_token_id,
                        fam.template.replace("<image>", image_token))
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.name}.build-") as scratch:
        work = Path(scratch)
        no_twin = ""
        if getattr(model, "_vtc_streamed", False) and precision != "fp32":
            no_twin = (f"the eager reference streams its LM (generate.stream_lm), so no fp32 "
                       f"twin decoder is built (it would hold the LM in fp32: "
                       f"{stream.lm_layer_bytes(model.config.text_config) / 2**30:.1f} GiB)")
            log(f"  {no_twin}; the {precision} decoder is judged against the eager reference")
        step(2, f"exporting the decoder ({precision}) with onnxruntime-genai's model builder")
        built, built32 = build_decoder(fam, model, src, work, precision, log, twin=not no_twin)
        layers = plan.layer_tokens(geo, cuts)
        shown = (str(layers) if len(layers) <= 8 else
                 f"[{', '.join(map(str, layers[:4]))}, … {layers[-1]}] over {len(layers)}")
        step(3, f"writing the cut graphs: visual tokens {base.visual} → {cuts.visual}, LM "
                f"layer tokens {shown}"
                + ("; and the uncut ones (timing; not shipped)" if bench else ""))
        passes_done = _write_graphs(fam, model, geo, cuts, tmp, built, tok_file, image_token, eos,
                                    precision, start)
        uncut_dir = work / "uncut"
        if bench:  # the builder's decoder as written: the uncut side of the timing
            uncut_dir.mkdir()
            _write_graphs(fam, model, geo, base, uncut_dir, built, tok_file, image_token, eos,
                          precision, start, rewrite=False)
        shutil.rmtree(built)
        ref_b = None
        if built32 is not None:  # the fp32 twin, same cuts: what parity is judged on
            (work / "fp32").mkdir()
            _write_graphs(fam, model, geo, cuts, work / "fp32", built32, tok_file, image_token,
                          eos, "fp32", start)
            shutil.rmtree(built32)
            ref_b = VlmBundle.load(work / "fp32", verified=False, lazy=True)
        # lazy: each loads when validate first runs it (and releases it after)
        cut_b = VlmBundle.load(tmp, verified=False, lazy=True)  # no manifest.json yet
        gen = recipe.generate
        imgs = _images(images, len(gen.prompts))
        step(4, f"validating {len(gen.prompts)} prompts × greedy {gen.max_new_tokens} tokens: "
                f"{runtime}, eager with cuts, uncut HF")
        parity, fid, deploy = validate(fam, model, geo, cuts, cut_b, list(gen.prompts), imgs,
                                       gen.max_new_tokens, log, reference=ref_b,
                                       no_twin=no_twin)
        del ref_b
        vlm_cost = None
        if bench:
            # the torch model is done: free it before the uncut bundle loads
            model = None
            gc.collect()
            step(5, f"timing uncut vs cut bundles, {gen.rounds} interleaved rounds")
            cut_b.release()
            uncut_b = VlmBundle.load(uncut_dir, verified=False, lazy=True)  # not shipped
            vlm_cost = cost(uncut_b, cut_b, gen.prompts[0], imgs[0], gen.rounds,
                            min(gen.max_new_tokens, 8))
            del uncut_b
        del cut_b
    log(f"  decoder passes: {passes_done}")
    graphs = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())
              if p.suffix in (".onnx", ".data")}
    report = VlmReport(
        vtc_version=vtc.__version__, source=SourceInfo(src.spec, src.kind, fam.name, fam.name),
        recipe=recipe.to_dict(), model=to_jsonable(geo), cuts=cuts_info(recipe, geo, cuts, base),
        engine=VlmEngine(runtime, list(eng.generation_providers), graphs, export.OPSET),
        machine=machine_info(list(eng.generation_providers)), parity=VlmParity(parity, deploy),
        fidelity=fid, cost=vlm_cost)
    judge(report, dict(recipe.gates))
    report.elapsed_s = round(time.perf_counter() - t0, 2)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"vtc_version": vtc.__version__, "kind": "vlm",
                "report_schema_version": report.schema_version,
                "source": {"spec": src.spec, "kind": src.kind, "sha256": src.digest()},
                "recipe": report.recipe, "cuts": to_jsonable(report.cuts), "files": files}
    write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    write_atomic(tmp / "report.json", json.dumps(report.to_dict(), indent=1) + "\n")
    write_atomic(tmp / "report.md", render_markdown(report))
    step(steps, f"bundle complete in {report.elapsed_s:.1f} s")
    return report
