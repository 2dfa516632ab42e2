"""The language model of a LLaVA bundle, exported by onnxruntime-genai's model builder
and rewritten by vtc's decoder passes.

    LLaVA checkpoint ─► lm/ (a Llama/Mistral causal-LM directory: config.json, the LM's
        tensors renamed, one safetensors shard at a time; tokenizer.json)
    lm/ ─► python -m onnxruntime_genai.models.builder -p fp32 -e cpu | -p fp16 -e cuda
        --extra_options exclude_embeds=true ─► model.onnx (+ .data), genai_config.json
        (fp16 is the builder's CUDA decoder: GroupQueryAttention in fp16, which ONNX
        Runtime's CPU EP runs too; the builder's CPU fp16 decoder has MultiHeadAttention
        with the rotary and the mask outside it instead, a second layout for every
        decoder pass. The genai config is set back to the CPU provider.)
        (int4: the builder's fp32 decoder ─► `passes.int4`, one weight at a time: the
        builder's own int4 path holds every fp32 weight at once and does not fit a 7B LM
        in 24 GiB; the result is the builder's int4 decoder, initializer for initializer)
    model.onnx ─► passes: the LM cuts (`passes.decoder_cuts`: FastV, PyramidDrop's
        stages, a visual-token exit), last-token logits (`passes.last_logits`)
        ─► decoder.onnx (+ decoder.onnx.data)

``exclude_embeds`` makes the decoder read ``inputs_embeds``: the token table lives in the
embedding graph (`vtc.vlm.embedding`) only, the head in the decoder only, so every LM
weight is stored once. The builder runs in a subprocess (its memory is returned when it
exits; its progress goes to the log).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vtc.errors import InputError

PRECISIONS = ("fp32", "fp16", "int4")
SHARD_BYTES = 2 << 30
Log = Callable[[str], None]


class GenaiMissing(InputError):
    """onnxruntime-genai is not installed (the message names the package)."""


def require_genai() -> None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise GenaiMissing("vision-language bundles need onnxruntime-genai (its model builder "
                           "writes the decoder, its runtime runs the bundle): pip install "
                           "onnxruntime-genai")


def lm_name(key: str) -> str | None:
    """A LLaVA checkpoint tensor's name in the causal-LM directory (None: not the LM's).

    Both layouts transformers reads: ``language_model.model.*`` / ``language_model.lm_head``
    (llava-hf) and ``model.language_model.*`` / ``lm_head`` (transformers ≥ 4.52)."""
    for old, new in (("language_model.model.", "model."), ("model.language_model.", "model."),
                     ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return None


def shard_files(ckpt: Path) -> list[Path]:
    """The checkpoint's safetensors files (the index's, or model.safetensors); an
    InputError naming what is missing otherwise."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt / f for f in files]
    single = ckpt / "model.safetensors"
    if single.is_file():
        return [single]
    raise InputError(f"{ckpt}: no model.safetensors (or index); vtc reads the LM's tensors "
                     "from safetensors files (the decoder export, a streamed reference)")


class ShardWriter:
    """Tensors into ``model-0000K.safetensors`` shards of about `limit` bytes in `out`, one
    shard buffered at a time; `close` writes ``model.safetensors.index.json``."""

    def __init__(self, out: Path, limit: int = SHARD_BYTES) -> None:
        self.out, self.limit = out, limit
        self.weight_map: dict[str, str] = {}
        self.buf: dict[str, Any] = {}
        self.size = self.total = 0
        self.dtypes: set[Any] = set()  # the torch dtypes stored

    def add(self, name: str, tensor: Any) -> None:
        self.buf[name] = tensor.contiguous()
        self.dtypes.add(tensor.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        self.size += nbytes
        self.total += nbytes
        if self.size >= self.limit:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if self.buf:
            name = f"model-{len(set(self.weight_map.values())) + 1:05d}.safetensors"
            save_file(self.buf, str(self.out / name), metadata={"format": "pt"})
            self.weight_map.update(dict.fromkeys(self.buf, name))
            self.buf, self.size = {}, 0

    def close(self, metadata: dict[str, Any] | None = None) -> None:
        self._flush()
        (self.out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": metadata or {}, "weight_map": self.weight_map}, indent=1))


def write_lm_dir(ckpt: Path, text_config: Any, out: Path, model: Any = None) -> Path:
    """The LM as a causal-LM checkpoint directory in `out` (module docstring). Tensors are
    copied one at a time from the checkpoint's safetensors files; `model` (a loaded LLaVA)
    is used instead when the checkpoint has none (a pickle checkpoint)."""
    cfg = text_config.to_dict()
    cfg["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
                            .get(text_config.model_type, "LlamaForCausalLM")]
    return write_dir(ckpt, cfg, out, lm_name, model, skip_table=True)


def write_dir(ckpt: Path, config: dict[str, Any], out: Path,
              rename: Callable[[str], str | None], model: Any = None,
              skip_table: bool = False) -> Path:
    """A checkpoint directory the model builder reads: `config` as config.json and the
    tensors `rename` maps (None: left out), copied one at a time from the checkpoint's
    safetensors files, or from `model` when the checkpoint has none (`skip_table`: not
    the token table then, which the LLaVA LM directory does without); the tokenizer
    files beside them."""
    from safetensors import safe_open

    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg.pop("_name_or_path", None)
    shards = ShardWriter(out)
    try:
        files = shard_files(ckpt)
    except InputError:
        if model is None:
            raise
        for k, v in model.state_dict().items():
            n = rename(k)
            if n is not None and not (skip_table and n.startswith("model.embed_tokens")):
                shards.add(n, v.detach())
        files = []
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n = rename(k)
                if n is not None:
                    shards.add(n, st.get_tensor(k))
    shards.close()
    # the dtype the tensors are stored in, not the loaded model's: the builder loads the
    # LM in the config's dtype (an fp16 7B LM read as fp32 takes 28 GB instead of 14)
    stored = {str(d).removeprefix("torch.") for d in shards.dtypes if d.is_floating_point}
    if len(stored) == 1:
        cfg["dtype"] = stored.pop()
        cfg.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    tok = ckpt / "tokenizer.json"
    if tok.is_file():
        shutil.copyfile(tok, out / "tokenizer.json")
    for extra in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (ckpt / extra).is_file():
            shutil.copyfile(ckpt / extra, out / extra)
    return out


def run_builder(lm: Path, out: Path, precision: str, log: Log) -> Path:
    """onnxruntime-genai's model builder on `lm` into `out` (``model.onnx`` and
    ``genai_config.json``); its stderr's last line on failure."""
    require_genai()
    if precision not in PRECISIONS:
        raise InputError(f"decoder precision {precision!r}; give one of {', '.join(PRECISIONS)}")
    built = "fp32" if precision == "int4" else precision
    ep = "cuda" if built == "fp16" else "cpu"  # fp16 GroupQueryAttention (module docstring)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(lm), "-o",
           str(out), "-p", built, "-e", ep, "-c", str(out.parent / "builder-cache"),
           "--extra_options", "exclude_embeds=true", "hf_token=false"]
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        lines = [x for x in (proc.stderr + proc.stdout).strip().splitlines() if x.strip()]
        why = lines[-1].strip() if lines else f"exit {proc.returncode}"
        if proc.returncode == -9:
            why = "killed (SIGKILL: out of memory?)"
        raise InputError(f"onnxruntime-genai's model builder failed on {lm} ({why})")
    if precision == "int4":
        _to_int4(out, log)
    if ep != "cpu":
        _cpu_provider(out / "genai_config.json")
    log(f"  decoder: onnxruntime-genai model builder, {precision}")
    return out


def _cpu_provider(config: Path) -> None:
    """The builder's genai_config.json with its decoder on the CPU provider (genai's
    default when ``provider_options`` is empty)."""
    cfg = json.loads(config.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["provider_options"] = []
    config.write_text(json.dumps(cfg, indent=4))


def _to_int4(out: Path, log: Log) -> None:
    """The builder's fp32 ``out/model.onnx`` → int4 in place (`passes.int4`)."""
    fp32 = out / "fp32"
    fp32.mkdir()
    for f in ("model.onnx", "model.onnx.data"):
        if (out / f).exists():
            os.replace(out / f, fp32 / f)
    quantize_int4(fp32, out, log)
    shutil.rmtree(fp32)


def quantize_int4(fp32: Path, out: Path, log: Log) -> Path:
    """The builder's fp32 decoder folder `fp32` → its int4 twin in `out` (`passes.int4`;
    the builder's other files copied), leaving `fp32` as it is."""
    from vtc.passes import int4

    out.mkdir(parents=True, exist_ok=True)
    for f in fp32.iterdir():
        if f.is_file() and f.name not in ("model.onnx", "model.onnx.data"):
            shutil.copyfile(f, out / f.name)
    n = int4.quantize_file(fp32 / "model.onnx", out / "model.onnx")
    log(f"  decoder: {n} MatMuls to int4 (block 32, symmetric; onnxruntime's kernel)")
    return out


def cut_passes(steps: Sequence[Any], image_start: int) -> list[Any]:
    """The LM cuts (`CutStep`s of ``site: lm``, in layer order) as the decoder's cut pass:
    each step's method says what its stage is (`VisualCut.lm_stage`); none for none."""
    from vtc.methods.cut import get_cut
    from vtc.passes.decoder_cuts import CutPlan, DecoderCuts

    if not steps:
        return []
    stages = tuple(get_cut(st.method).lm_stage(st) for st in steps)
    return [DecoderCuts(CutPlan(image_start, steps[0].tokens_in, stages))]


def rewrite(src: Path, dst: Path, cuts: Sequence[Any] = ()) -> dict[str, Any]:
    """The builder's ``model.onnx`` → `dst` with vtc's pass sequence (module docstring):
    last-token logits, the LM cuts (`cuts`: passes, `cut_passes`), the builder's stale
    shapes dropped, unused nodes removed. Returns what the passes did, by pass name."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    from vtc.passes.base import ForgetShapes, run
    from vtc.passes.last_logits import LastLogits

    model = ir.load(str(src))
    done = run(model, [LastLogits(), *cuts, ForgetShapes(), RemoveUnusedNodesPass()])
    # always external: the builder's tensors are read from its file one at a time and
    # written to ours (an inline save would keep references to the builder's file)
    ir.save(model, str(dst), external_data=f"{dst.name}.data")
    return done
