"""The Qwen2.5-VL checkpoint: what vtc supports, read from the config, and the model.

`Qwen2_5_VLForConditionalGeneration` = a ViT with 2-D rotary positions whose blocks
attend inside windows except the full-attention ones (``fullatt_block_indexes``) →
a patch merger (RMSNorm, then an MLP over each 2×2 group of patches: 4 patches → 1
LLM token) → a Qwen2 LM (RMSNorm, SwiGLU, grouped-query attention with q/k/v biases)
whose rotary positions are 3-D (M-RoPE: every token has a (t, h, w) position; text
tokens have t = h = w). Images have any size (``image_grid_thw``); a vtc bundle is
built for one (`QwenGeometry`): its graphs are static and its visual budget a count of
merged tokens at that size.

Supported, checked before any work (one line naming the setting otherwise): an image
size that is a multiple of patch × merge (28 px); default (M-RoPE) rotary positions with
``mrope_section`` summing to half the head size; no sliding window; a head size that is
a multiple of 8 (GroupQueryAttention's limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtc.budget import BudgetError, Geometry
from vtc.errors import InputError

DEFAULT_SIDE = 448  # pixels: 32 × 32 patches of 14, 16 × 16 = 256 merged tokens
# the chat template (Qwen2.5-VL-Instruct's, one image before the text, no system turn)
TEMPLATE = ("<|im_start|>user\n<|vision_start|><image><|vision_end|>{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")
IMAGE_TOKEN = "<|image_pad|>"


class UnsupportedCheckpoint(InputError):
    """A Qwen2.5-VL checkpoint with a setting vtc cannot export (the message names it)."""


@dataclass(frozen=True)
class QwenGeometry:
    """What the graphs and the cuts are sized by, at the bundle's image size.

    height, width: pixels; grid_h, grid_w: patches (``image_grid_thw`` = (1, grid_h,
    grid_w)); merged_h, merged_w: merged tokens per side (the LLM's grid); score_layer:
    the last full-attention block, whose attention scores a projector cut."""

    height: int
    width: int
    patch: int
    temporal_patch: int
    merge: int
    window: int
    fullatt: tuple[int, ...]
    tower_layers: int
    vision_width: int
    vision_heads: int
    vision_mlp: int
    lm_width: int
    lm_layers: int
    lm_heads: int
    kv_heads: int
    head_dim: int
    mlp_width: int
    vocab: int
    mrope_section: tuple[int, ...]
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    tokens_per_second: float
    min_pixels: int
    max_pixels: int

    @property
    def grid_h(self) -> int:
        return self.height // self.patch

    @property
    def grid_w(self) -> int:
        return self.width // self.patch

    @property
    def merged_h(self) -> int:
        return self.grid_h // self.merge

    @property
    def merged_w(self) -> int:
        return self.grid_w // self.merge

    @property
    def patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def tower_tokens(self) -> int:
        """Tokens a projector cut sees: the merged tokens (no CLS)."""
        return self.merged_h * self.merged_w

    @property
    def visual(self) -> int:
        return self.tower_tokens

    @property
    def protected(self) -> int:
        return 0

    @property
    def rope(self) -> str:
        """The LLM's rotary positions: "1d" or "mrope" (3-D, t/h/w)."""
        return "mrope"

    @property
    def dropped_at_projector(self) -> int:
        return 0

    @property
    def score_layer(self) -> int:
        return self.fullatt[-1]

    @property
    def image_size(self) -> list[int]:
        return [self.height, self.width]

    def encoder_geometry(self, sections: list[Any]) -> Geometry:
        """Refuses every encoder cut, naming it (module docstring of `vtc.vlm.plan`)."""
        geo = Geometry(tokens=self.patches, protected=0, width=self.vision_width,
                       mlp_width=self.vision_mlp, layers=self.tower_layers,
                       heads=self.vision_heads)
        for method, cfg in sections:
            method.token_score(cfg, geo)  # EViT's CLS score: refused, by name
        names = ", ".join(m.name for m, _ in sections)
        raise BudgetError(f"{names} cut(s) inside the vision tower's blocks, which vtc does "
                          "not do for Qwen2.5-VL: its tower has no CLS token, and its windowed "
                          "attention and 2×2 patch merger need every patch; cut before the "
                          "LLM (visionzip) or inside it (fastv)")

    def vision_macs(self, cuts: Any) -> int:
        """Tower MACs (every block at every patch) plus the merger on the K tokens."""
        c, n = self.vision_width, self.patches
        block = n * (4 * c * c + 3 * c * self.vision_mlp)
        full = len(self.fullatt)
        win = (self.window // self.patch) ** 2  # patches per window
        att = full * 2 * n * n * c + (self.tower_layers - full) * 2 * n * win * c
        m4 = 4 * c
        return self.tower_layers * block + att + cuts.visual * (m4 * m4 + m4 * self.lm_width)


def image_size_of(recipe: Any) -> tuple[int, int]:
    """(height, width) of `generate.image_size`, default 448 × 448."""
    size = getattr(recipe.generate, "image_size", None) if recipe is not None else None
    if size is None:
        return DEFAULT_SIDE, DEFAULT_SIDE
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_config(config: Any, where: str, size: tuple[int, int] | None = None) -> QwenGeometry:
    """The geometry of a Qwen2.5-VL config at image `size` (height, width)."""
    vc, tc = config.vision_config, config.text_config
    h, w = size or (DEFAULT_SIDE, DEFAULT_SIDE)
    unit = vc.patch_size * vc.spatial_merge_size
    if h % unit or w % unit or h < unit or w < unit:
        raise UnsupportedCheckpoint(
            f"image size {h}×{w} px is not a multiple of patch × merge = {unit} px; give "
            f"--set generate.image_size=[{max(unit, round(h / unit) * unit)},"
            f"{max(unit, round(w / unit) * unit)}]")
    rope = dict(getattr(tc, "rope_parameters", None) or {})
    section = tuple(int(x) for x in rope.get("mrope_section") or ())
    heads = tc.num_attention_heads
    head_dim = tc.hidden_size // heads
    if rope.get("rope_type", "default") != "default" or sum(section) != head_dim // 2:
        raise UnsupportedCheckpoint(f"{where}: rotary positions {rope} are not Qwen2.5-VL's "
                                    f"M-RoPE with mrope_section summing to {head_dim // 2}")
    if getattr(tc, "use_sliding_window", False):
        raise UnsupportedCheckpoint(f"{where}: a sliding-window language model is not "
                                    "supported")
    if head_dim % 8:
        raise UnsupportedCheckpoint(f"{where}: the language model's head size is {head_dim}; "
                                    "onnxruntime's GroupQueryAttention (the exported "
                                    "decoder's attention) needs a multiple of 8")
    fullatt = tuple(int(i) for i in vc.fullatt_block_indexes)
    if not fullatt or any(not 0 <= i < vc.depth for i in fullatt):
        raise UnsupportedCheckpoint(f"{where}: fullatt_block_indexes {list(fullatt)} name no "
                                    f"block of the tower's {vc.depth}")
    proc = getattr(config, "vtc_processor", None) or {}
    return QwenGeometry(
        height=h, width=w, patch=vc.patch_size, temporal_patch=vc.temporal_patch_size,
        merge=vc.spatial_merge_size, window=vc.window_size, fullatt=fullatt,
        tower_layers=vc.depth, vision_width=vc.hidden_size, vision_heads=vc.num_heads,
        vision_mlp=vc.intermediate_size, lm_width=tc.hidden_size,
        lm_layers=tc.num_hidden_layers, lm_heads=heads,
        kv_heads=tc.num_key_value_heads or heads, head_dim=head_dim,
        mlp_width=tc.intermediate_size, vocab=tc.vocab_size, mrope_section=section,
        image_token_id=int(config.image_token_id), video_token_id=int(config.video_token_id),
        vision_start_token_id=int(config.vision_start_token_id),
        tokens_per_second=float(vc.tokens_per_second),
        min_pixels=int(proc.get("min_pixels", 56 * 56)),
        max_pixels=int(proc.get("max_pixels", 28 * 28 * 1280)))


def _processor_limits(path: Path) -> dict[str, int]:
    """min/max pixels of the checkpoint's ``preprocessor_config.json`` (smart resize)."""
    f = path / "preprocessor_config.json"
    if not f.is_file():
        return {}
    try:
        raw = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    size = raw.get("size") or {}
    out = {"min_pixels": raw.get("min_pixels", size.get("shortest_edge")),
           "max_pixels": raw.get("max_pixels", size.get("longest_edge"))}
    return {k: int(v) for k, v in out.items() if isinstance(v, int)}


def set_eager(model: nn.Module) -> None:
    m: Any = model
    m.config._attn_implementation = "eager"
    for sub in (m.config.vision_config, m.config.text_config):
        sub._attn_implementation = "eager"
    m.float().eval()


def load(path: Path, use_safetensors: bool = True, recipe: Any = None
         ) -> tuple[nn.Module, QwenGeometry]:
    """The model (eval, fp32, eager attention) and its geometry at the recipe's image
    size. Local files only, never remote code."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from vtc.exporter._hf import from_pretrained

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=False)
    except Exception as exc:  # transformers' validation errors vary by field
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsupportedCheckpoint(f"{path}/config.json: transformers refuses it ({first})"
                                    ) from None
    config.vtc_processor = _processor_limits(path)
    geo = check_config(config, str(path), image_size_of(recipe))
    model = from_pretrained(Qwen2_5_VLForConditionalGeneration, path, use_safetensors,
                            torch_dtype=torch.float32)
    model.config.vtc_processor = config.vtc_processor  # type: ignore[union-attr]
    set_eager(model)
    model._vtc_random = bool(getattr(config, "vtc_random_weights", False))  # type: ignore[assignment]
    return model, geo


def build(config: Any) -> nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration(config)
    set_eager(model)
    return model


def save_random(config: Any, path: Path, seed: int = 0, spread: float = 0.0) -> nn.Module:
    """A seeded random model of `config` saved (safetensors) to `path`, marked
    ``vtc_random_weights``. `spread` > 0 also draws the biases and norm weights (HF
    initialises them to 0 and 1, which would hide a bias or norm the export dropped)."""
    torch.manual_seed(seed)
    config.vtc_random_weights = True
    model = build(config)
    if spread:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, spread)
                elif "norm" in name or name.endswith("ln_q.weight"):
                    p.uniform_(1.0 - spread, 1.0 + spread)
    model.save_pretrained(path, safe_serialization=True)  # type: ignore[operator]
    return model


def tiny_config(lm_layers: int = 4, vocab: int = 400) -> Any:
    """A small Qwen2.5-VL config: a 4-block tower (blocks 1 and 3 full attention, 56 px
    windows) 32 wide, a 4-layer LM 64 wide with 4 query and 2 key/value heads. At
    112 × 112 px: 8 × 8 patches, 4 × 4 = 16 merged tokens in 2 × 2 windows."""
    from transformers import Qwen2_5_VLConfig

    vc = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
              fullatt_block_indexes=[1, 3], tokens_per_second=2, hidden_act="silu")
    tc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=lm_layers,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
              max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=1,
              eos_token_id=2, pad_token_id=0,
              rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                               "rope_theta": 1e6})
    return Qwen2_5_VLConfig(vision_config=vc, text_config=tc, image_token_id=vocab - 5,
                            video_token_id=vocab - 4, vision_start_token_id=vocab - 3,
                            vision_end_token_id=vocab - 2, tie_word_embeddings=True)


def qwen25vl_3b_config(lm_layers: int = 3) -> Any:
    """Qwen2.5-VL-3B-Instruct's shapes (a 32-block tower 1280 wide, windows of 112 px,
    full attention in blocks 7, 15, 23, 31; a 2048-wide LM with 16 query and 2 key/value
    heads, SwiGLU 11008, vocabulary 151936, tied embeddings) with the LM cut to
    `lm_layers` layers."""
    from transformers import Qwen2_5_VLConfig

    vc = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
              out_hidden_size=2048, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              tokens_per_second=2, hidden_act="silu")
    tc = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=lm_layers,
              num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
              max_position_embeddings=128000, rms_norm_eps=1e-6, bos_token_id=151643,
              eos_token_id=151645, pad_token_id=151643,
              rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                               "rope_theta": 1e6})
    return Qwen2_5_VLConfig(vision_config=vc, text_config=tc, image_token_id=151655,
                            video_token_id=151656, vision_start_token_id=151652,
                            vision_end_token_id=151653, tie_word_embeddings=True)


SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
           "<|vision_end|>", IMAGE_TOKEN, "<|video_pad|>")


def word_tokenizer(path: Path, config: Any) -> Path:
    """A word-level `tokenizer.json` with Qwen's special tokens at the config's ids (test
    and bench checkpoints have no real one): ``<|endoftext|>`` at the pad id, ``<|im_end|>``
    at the EOS id, the vision tokens at theirs, the LLaVA tests' words, filler tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    from vtc.vlm.llava import WORDS

    tc = config.text_config
    fixed = {"<|endoftext|>": tc.pad_token_id, "<|im_end|>": tc.eos_token_id,
             "<|vision_start|>": config.vision_start_token_id,
             "<|vision_end|>": config.vision_end_token_id,
             IMAGE_TOKEN: config.image_token_id, "<|video_pad|>": config.video_token_id}
    taken = set(fixed.values())
    free = (i for i in range(tc.vocab_size) if i not in taken)
    table = dict(fixed)
    for w in ("<|im_start|>", "<unk>", *WORDS, "user", "assistant", "Describe", "What", "Is"):
        table.setdefault(w, next(free))
    for i in free:
        table[f"w{i}"] = i
        if len(table) >= tc.vocab_size or i > 2000:
            break
    tok = Tokenizer(WordLevel(table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.add_special_tokens(list(SPECIAL))
    tok.decoder = decoders.WordPiece(prefix="##")
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out
