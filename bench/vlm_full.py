"""One full-depth build (issue 18; a one-off, not CI): a LLaVA-1.5-7B-shaped checkpoint
(all 32 LM layers, random fp16 weights written to disk) to a whole int4 bundle with
FastV, by the same pipeline as ``vtc-export``, within this machine's memory.

    random fp16 checkpoint (safetensors shards, written tensor by tensor: the model is
        never materialised; or --checkpoint DIR, written by an earlier run)
    ─► vtc.pipeline.run, recipe llava-fastv with generate.precision int4, one prompt,
       4 new tokens, --no-bench:
         load (generate.stream_lm auto: the LM's 25.9 GB of fp32 layers are over 40 % of
           this machine's memory, so the eager reference streams them, vtc.vlm.stream)
         ─► LM directory (streamed) ─► model builder fp32 ─► int4 one weight at a time
         ─► decoder passes (FastV after layer 2 keeping 288 of 576 visual tokens)
         ─► vision and embedding graphs ─► validation: onnxruntime-genai generates, the
            eager reference (HF's layers, streamed) with the same cuts and HF's own uncut
            generate run the same prompt ─► report.json
    ─► one prefill of the bundle's decoder through onnxruntime (the FastV cut shortens
       the last layer's KV)

Printed beside their limits: the peak resident memory of the process tree during the
export (sampled every 0.2 s, summed over the bench and its builder subprocess; also the
largest single process, what ``/usr/bin/time -v`` reports), that the decoder holds each
LM weight once (one quantized initializer per projection of each of the 32 layers and
the head, no token table, its bytes within 10 % of one int4 copy of the LM's matrices),
and what the validation found (no fp32 twin decoder: it would hold 25.9 GB; the int4
decoder is judged against the streamed eager reference, random weights).

    python -m bench.vlm --full [--checkpoint DIR]
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

Row = tuple[bool | None, str]
LIMIT_GIB = 20.0



class PeakRss:
    """The summed resident memory of this process and its descendants, sampled."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self._every)


def tree_rss(root: int) -> int:
    """Bytes resident in `root` and every process descended from it (Linux /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        parent[int(d)] = int(fields.get("PPid", "0").strip())
        rss[int(d)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def write_random_checkpoint(config: Any, path: Path, shard_bytes: int = 2 << 30) -> int:
    """`config`'s LLaVA state dict as random fp16 safetensors shards in `path`, one tensor
    at a time (names and shapes from a meta-device model): N(0, 0.02) matrices, ones for
    norm weights, zeros for biases. Returns the parameter count."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from vtc.vlm.decoder import ShardWriter

    path.mkdir(parents=True)
    config.vtc_random_weights = True
    config.dtype = "float16"
    with torch.device("meta"):
        meta = LlavaForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(0)
    shards = ShardWriter(path, shard_bytes)
    count = 0
    for name, t in meta.state_dict().items():
        if not t.is_floating_point():
            continue  # no such tensor is saved by save_pretrained either
        if name.endswith("bias"):
            x = torch.zeros(t.shape, dtype=torch.float16)
        elif "norm" in name:
            x = torch.ones(t.shape, dtype=torch.float16)
        else:
            x = (torch.randn(t.shape, generator=gen) * 0.02).to(torch.float16)
        shards.add(name, x)
        count += x.numel()
    shards.close({"total_size": shards.total})
    config.save_pretrained(path)
    return count


def _head_dim(text_config: Any) -> int:
    return int(getattr(text_config, "head_dim", None)
               or text_config.hidden_size // text_config.num_attention_heads)


def lm_matrix_params(text_config: Any) -> int:
    """Parameters of the LM's matrices the decoder holds (projections of every layer and
    the head; the token table lives in the embedding graph)."""
    d, f, h = text_config.hidden_size, text_config.intermediate_size, _head_dim(text_config)
    per = d * h * (2 * text_config.num_attention_heads + 2 * text_config.num_key_value_heads)
    return text_config.num_hidden_layers * (per + 3 * d * f) + d * text_config.vocab_size


def weights_once(decoder: Path, text_config: Any) -> Row:
    """One quantized weight per projection and layer, no token table, bytes ≈ one copy."""
    import re

    import onnx

    proto = onnx.load(str(decoder), load_external_data=False)
    names = [i.name for i in proto.graph.initializer]
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    per_layer: dict[int, set[str]] = {}
    for n in nbits:  # FastV's scores reuse layer L-1's q/k weights: count names, not nodes
        m = re.search(r"layers\.(\d+)\.", n.input[1])
        if m:
            per_layer.setdefault(int(m.group(1)), set()).add(n.input[1])
    layers = text_config.num_hidden_layers
    table = [n for n in names if "embed_tokens" in n]
    files = sum(p.stat().st_size for p in decoder.parent.glob(decoder.name + "*"))
    one_copy = lm_matrix_params(text_config) * (0.5 + 4 / 32)  # int4 + fp32 scale per 32
    counts = sorted({len(v) for v in per_layer.values()})
    ok = (len(names) == len(set(names)) and sorted(per_layer) == list(range(layers))
          and len(counts) == 1 and not table and files <= 1.1 * one_copy)
    return (ok, f"7B-shaped int4 decoder holds each LM weight once: "
                f"{sum(map(len, per_layer.values()))} quantized layer weights ({counts} per "
                f"layer over {len(per_layer)}/{layers} layers, plus the head), "
                f"{len(names)} initializers all distinct, token table "
                f"{'absent' if not table else 'PRESENT'}, {files / 2**30:.2f} GiB on disk vs "
                f"{one_copy / 2**30:.2f} GiB for one int4 copy (limit 1.1×)")


def prefill_once(decoder: Path, text_config: Any, length: int, cut: tuple[int, int]) -> Row:
    """One prefill of `length` random embeddings through onnxruntime: finite logits."""
    import numpy as np
    import onnxruntime as ort

    t = time.perf_counter()
    sess = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t
    kv, hd = text_config.num_key_value_heads, _head_dim(text_config)
    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {
        "inputs_embeds": (rng.standard_normal((1, length, text_config.hidden_size)) * 0.02
                          ).astype(np.float32),
        "attention_mask": np.ones((1, length), np.int64)}
    for i in range(text_config.num_hidden_layers):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, kv, 0, hd), np.float32)
    t = time.perf_counter()
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    run_s = time.perf_counter() - t
    logits = out["logits"]
    last = text_config.num_hidden_layers - 1
    kept = out[f"present.{last}.key"].shape[2]
    ok = bool(np.isfinite(logits).all()) and kept == length - (cut[0] - cut[1])
    return (ok, f"7B-shaped int4 decoder runs: session load {load_s:.0f} s, one prefill of "
                f"{length} tokens in {run_s:.0f} s, logits {list(logits.shape)} finite: {ok}; "
                f"last layer's KV length {kept} = {length} − {cut[0] - cut[1]} visual tokens "
                f"dropped by FastV ({cut[1]} of {cut[0]} kept)")


def _export(ckpt: Path, out: Path, log: Any) -> Any:
    """vtc-export's pipeline on `ckpt`: llava-fastv, int4, one prompt, no timing."""
    from vtc import pipeline
    from vtc.recipe import load_recipe

    rec = load_recipe("llava-fastv", ["generate.precision=int4", "generate.max_new_tokens=4",
                                      "generate.prompts=['Describe the image.']"])
    return pipeline.run(pipeline.Options(source=str(ckpt), recipe=rec, out=out, batch=1,
                                         bench=False, log=log)).report


def validated(report: Any) -> Row:
    """What the bundle's own validation found (report.json)."""
    gen, dep = report.parity.generation, report.parity.deployment
    ok = (gen.reference == "streamed" and gen.vision_max_abs_diff <= 1e-4
          and dep is not None and dep.against == "eager reference")
    return (ok, f"validated through {report.engine.kind}: eager reference {gen.reference} "
                f"(LM layers read from the checkpoint), vision graph max |diff| "
                f"{gen.vision_max_abs_diff:.1e} (limit 1e-4); int4 decoder vs the eager "
                f"reference with the same cuts ({dep.against if dep else '-'}): greedy tokens "
                f"equal {dep.tokens_equal if dep else '-'}, first-logits cosine "
                f"{dep.first_logits_cosine_min if dep else float('nan'):.4f} (random weights: "
                f"plumbing, not quality); gates skipped {report.gates_skipped} ({gen.note})")


def full(tmp: Path, log: Any = print, cfg: Any = None, checkpoint: Path | None = None
         ) -> list[Row]:
    """The build (module docstring) of `cfg` (default: LLaVA-1.5-7B's shapes) in `tmp`;
    the checkpoint in `checkpoint` (written there unless it holds one already)."""
    import resource

    from vtc.vlm import llava

    cfg = cfg if cfg is not None else llava.llava15_config(lm_layers=32)
    visual = cfg.image_seq_length
    keep = visual // 2
    rows: list[Row] = []
    ckpt = checkpoint or tmp / "llava15-7b-shape"
    t = time.perf_counter()
    if not (ckpt / "config.json").is_file():
        with PeakRss() as setup:
            n = write_random_checkpoint(cfg, ckpt)
            llava.word_tokenizer(ckpt, cfg.image_token_id, cfg.text_config.vocab_size)
        log(f"  checkpoint: {n / 1e9:.2f} B parameters, fp16, in "
            f"{time.perf_counter() - t:.0f} s (peak {setup.peak / 2**30:.1f} GiB)")
    else:
        total = json.loads((ckpt / "model.safetensors.index.json").read_text())
        n = int(total["metadata"]["total_size"]) // 2
        log(f"  checkpoint: {ckpt} (written earlier), {n / 1e9:.2f} B parameters")
    out = tmp / "bundle"
    t = time.perf_counter()
    with PeakRss() as peak:
        report = _export(ckpt, out, lambda m: log("  " + m))
    took = time.perf_counter() - t
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worst = max(peak.peak, child, own)
    rows.append((worst <= LIMIT_GIB * 2**30,
                 f"LLaVA-1.5-7B shape ({cfg.text_config.num_hidden_layers} LM layers, "
                 f"{n / 1e9:.2f} B parameters, random fp16 on disk) → int4 bundle with FastV "
                 f"by vtc-export's pipeline in {took:.0f} s: peak resident memory "
                 f"{peak.peak / 2**30:.1f} GiB summed over the process tree (largest single "
                 f"process: builder {child / 2**30:.1f} GiB, bench {own / 2**30:.1f} GiB; "
                 f"limit {LIMIT_GIB:.0f} GiB)"))
    files = sorted((p.name, p.stat().st_size) for p in out.iterdir() if p.is_file())
    log("  bundle: " + ", ".join(f"{f} {b / 2**20:.0f} MiB" for f, b in files))
    rows.append(validated(report))
    rows.append(weights_once(out / "decoder.onnx", cfg.text_config))
    gen = json.loads((out / "generation.json").read_text())  # where the image sits
    rows.append(prefill_once(out / "decoder.onnx", cfg.text_config,
                             int(gen["image_start"]) + visual + 32, (visual, keep)))
    return rows
