"""The LLaVA checkpoint: what vtc supports, read from the config, and the model.

`LlavaForConditionalGeneration` = CLIP vision tower → projector (two Linear + GELU) →
a Llama-family causal LM (llama, mistral: RMSNorm, rotary positions, SiLU-gated MLP,
grouped-query attention). A checkpoint saved in the `llava-hf/llava-1.5-7b-hf` layout
(``language_model.model.*``, ``language_model.lm_head``, ``vision_tower.vision_model.*``)
loads unchanged: transformers maps those names onto its current module tree.

Supported, checked before any work (one line naming the setting otherwise):
``vision_feature_layer`` a single layer (negative or not), ``vision_feature_select_strategy``
``default`` (drop CLS, LLaVA-1.5) or ``full``; vision tower ``clip_vision_model``; LM
``llama`` or ``mistral`` with default rotary positions and no sliding window.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtc.budget import BudgetError, Geometry
from vtc.errors import InputError

VISION_TYPES = ("clip_vision_model",)
LM_TYPES = ("llama", "mistral")
STRATEGIES = ("default", "full")
TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"  # llava-hf/llava-1.5 chat format


class UnsupportedCheckpoint(InputError):
    """A LLaVA checkpoint with a setting vtc cannot export (the message names it)."""


@dataclass(frozen=True)
class VlmGeometry:
    """What the cuts and the graphs are sized by.

    tower_tokens: tokens of the vision tower with CLS (T = 1 + patches); feature_layer:
    the 0-based tower layer whose output LLaVA reads (run_layers = feature_layer + 1);
    visual: tokens the LM reads per image without cuts (T - 1 for ``default``).
    """

    image_size: int
    patch: int
    tower_tokens: int
    tower_layers: int
    feature_layer: int
    strategy: str
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
    image_token_id: int

    @property
    def visual(self) -> int:
        return self.tower_tokens - self.dropped_at_projector

    @property
    def protected(self) -> int:
        """The CLS token: a projector cut always keeps it."""
        return 1

    @property
    def rope(self) -> str:
        """The LLM's rotary positions: "1d" or "mrope" (3-D, t/h/w)."""
        return "1d"

    @property
    def dropped_at_projector(self) -> int:
        """Tokens the feature selection drops when no cut does (``default``: CLS)."""
        return 1 if self.strategy == "default" else 0

    def encoder_geometry(self, sections: list[Any]) -> Geometry:
        """The tower as an encoder for the block methods: blocks 0..F-1 (layer F's
        attention is what VisionZip reads, so it stays whole)."""
        if self.feature_layer == 0:
            raise BudgetError("the feature layer is the tower's first layer: no block is "
                              "left for an encoder cut; drop it")
        return Geometry(tokens=self.tower_tokens, protected=1, width=self.vision_width,
                        mlp_width=self.vision_mlp, layers=self.feature_layer,
                        heads=self.vision_heads)

    def vision_macs(self, cuts: Any) -> int:
        """Tower MACs up to the feature layer plus the projector on the K tokens."""
        c = self.vision_width
        per = [self.tower_tokens] * (self.feature_layer + 1)
        if cuts.encoder is not None:
            per = [lp.tokens_in for lp in cuts.encoder.layers] + [cuts.encoder.tokens_out]
        total = sum(n * (4 * c * c + 2 * c * self.vision_mlp) + 2 * n * n * c for n in per)
        return total + cuts.visual * (c * self.lm_width + self.lm_width * self.lm_width)


def check_config(config: Any, where: str) -> VlmGeometry:
    """The geometry of a LLaVA config (UnsupportedCheckpoint naming what vtc lacks)."""
    vc, tc = config.vision_config, config.text_config
    if vc.model_type not in VISION_TYPES:
        raise UnsupportedCheckpoint(f"{where}: vision tower {vc.model_type!r} is not supported "
                                    f"(vtc exports LLaVA with {', '.join(VISION_TYPES)})")
    if tc.model_type not in LM_TYPES:
        raise UnsupportedCheckpoint(f"{where}: language model {tc.model_type!r} is not "
                                    f"supported (vtc exports {', '.join(LM_TYPES)})")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise UnsupportedCheckpoint(
            f"{where}: vision_feature_layer {layer} (features concatenated from several "
            "layers) is not supported; vtc supports a single layer, e.g. -2")
    n = vc.num_hidden_layers
    if not -n <= layer < n + 1 or layer == 0:
        raise UnsupportedCheckpoint(f"{where}: vision_feature_layer {layer} is outside the "
                                    f"tower's {n} layers (give -{n}..-1 or 1..{n})")
    # hidden_states[i]: 0 is the embedding, i the output of layer i-1
    feature = (n + 1 + layer if layer < 0 else layer) - 1
    if feature < 0:
        raise UnsupportedCheckpoint(f"{where}: vision_feature_layer {layer} selects the "
                                    "embedding output, which no tower layer makes; not supported")
    strategy = config.vision_feature_select_strategy
    if strategy not in STRATEGIES:
        raise UnsupportedCheckpoint(f"{where}: vision_feature_select_strategy {strategy!r} is "
                                    f"not supported (vtc supports {', '.join(STRATEGIES)})")
    rope = getattr(tc, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedCheckpoint(f"{where}: rotary scaling {rope.get('rope_type')!r} is not "
                                    "supported (vtc exports default rotary positions)")
    if getattr(tc, "sliding_window", None):
        raise UnsupportedCheckpoint(f"{where}: a sliding-window language model is not "
                                    "supported")
    if getattr(config, "multimodal_projector_bias", True) is False or \
            getattr(config, "projector_hidden_act", "gelu") != "gelu":
        raise UnsupportedCheckpoint(f"{where}: projector (act "
                                    f"{getattr(config, 'projector_hidden_act', None)!r}) is not "
                                    "LLaVA-1.5's Linear-GELU-Linear with bias")
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    if head_dim % 8:
        raise UnsupportedCheckpoint(f"{where}: the language model's head size is {head_dim}; "
                                    "onnxruntime's GroupQueryAttention (the exported "
                                    "decoder's attention) needs a multiple of 8")
    side = vc.image_size // vc.patch_size
    return VlmGeometry(
        image_size=vc.image_size, patch=vc.patch_size, tower_tokens=side * side + 1,
        tower_layers=n, feature_layer=feature, strategy=strategy,
        vision_width=vc.hidden_size, vision_heads=vc.num_attention_heads,
        vision_mlp=vc.intermediate_size,
        lm_width=tc.hidden_size, lm_layers=tc.num_hidden_layers, lm_heads=heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or heads, head_dim=head_dim,
        mlp_width=tc.intermediate_size, vocab=tc.vocab_size,
        image_token_id=int(config.image_token_id))


def check_raw(path: Path) -> None:
    """The settings transformers would refuse with a traceback, named first."""
    raw = json.loads((path / "config.json").read_text())
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in STRATEGIES:
        raise UnsupportedCheckpoint(f"{path}: vision_feature_select_strategy {strategy!r} is "
                                    f"not supported (vtc supports {', '.join(STRATEGIES)})")
    layer = raw.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise UnsupportedCheckpoint(
            f"{path}: vision_feature_layer {layer} (features concatenated from several "
            "layers) is not supported; vtc supports a single layer, e.g. -2")


def is_llava(path: Path) -> bool:
    """True when `path` is a checkpoint directory whose config says ``llava``."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "llava"
    except (OSError, ValueError):
        return False


def read_config(path: Path) -> tuple[Any, VlmGeometry]:
    """The checkpoint's config (local files only, never remote code) and geometry,
    checked (UnsupportedCheckpoint naming what vtc lacks)."""
    from transformers import AutoConfig

    check_raw(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=False)
    except Exception as exc:  # transformers' validation errors vary by field
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsupportedCheckpoint(f"{path}/config.json: transformers refuses it ({first})"
                                    ) from None
    return config, check_config(config, str(path))


def load(path: Path, use_safetensors: bool = True, streamed: bool | str = False
         ) -> tuple[nn.Module, VlmGeometry]:
    """The model (eval, fp32, eager attention: the reference reads attention
    probabilities) and its geometry. Local files only, never remote code.

    `streamed` (True, False or ``"auto"``: `vtc.vlm.stream.wanted`): the language
    model's decoder layers stay on disk and are read from the checkpoint's safetensors
    files one matrix at a time when they run (`vtc.vlm.stream`): the eager reference of
    a checkpoint whose LM does not fit in memory in fp32. Same modules, same fp32
    arithmetic."""
    from transformers import LlavaForConditionalGeneration

    from vtc.exporter._hf import from_pretrained

    from . import stream

    config, geo = read_config(path)
    streamed = stream.wanted(streamed, config.text_config)
    if streamed and not use_safetensors:
        raise InputError(f"{path}: generate.stream_lm reads the LM's layers from safetensors "
                         "files, and this checkpoint has none; convert it to safetensors, or "
                         "set generate.stream_lm: false (the LM is then held in fp32)")
    if not streamed:
        model = from_pretrained(LlavaForConditionalGeneration, path, use_safetensors,
                                torch_dtype=torch.float32)
    else:
        model = _load_streamed(path, config)
    set_eager(model)
    m: Any = model
    m._vtc_random = bool(getattr(config, "vtc_random_weights", False))
    m._vtc_streamed = streamed
    return model, geo


def _load_streamed(path: Path, config: Any) -> nn.Module:
    """Everything but the LM's decoder layers from the checkpoint, in memory; the layers
    on the meta device, streamed (`vtc.vlm.stream.stream_layers`)."""
    from transformers import LlavaForConditionalGeneration

    from vtc.exporter._hf import from_pretrained

    from . import decoder, stream

    index = stream.TensorIndex(path)
    keys: dict[tuple[int, str], str] = {}
    for k in index.where:
        found = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", decoder.lm_name(k) or "")
        if found:
            keys[int(found.group(1)), found.group(2)] = k
    model = from_pretrained(LlavaForConditionalGeneration, path, True,
                            config=stream.without_layers(config), torch_dtype=torch.float32)
    lm: Any = model.model.language_model  # type: ignore[union-attr]
    lm.config.num_hidden_layers = config.text_config.num_hidden_layers
    if getattr(config.text_config, "layer_types", None):
        lm.config.layer_types = list(config.text_config.layer_types)
    stream.stream_layers(lm, index, lambda i, name: keys.get((i, name)))
    return model


def set_eager(model: nn.Module) -> None:
    """Eager attention everywhere: the reference reads attention probabilities."""
    m: Any = model
    m.config._attn_implementation = "eager"
    for sub in (m.config.vision_config, m.config.text_config):
        sub._attn_implementation = "eager"
    m.float().eval()


def build(config: Any) -> nn.Module:
    """A randomly initialised model of `config` (tests and the shape-faithful bench)."""
    from transformers import LlavaForConditionalGeneration

    check_config(config, "config")
    model = LlavaForConditionalGeneration(config)
    set_eager(model)
    return model


def save_random(config: Any, path: Path, seed: int = 0) -> nn.Module:
    """A seeded random model of `config` saved (safetensors) to `path`, its config
    marked ``vtc_random_weights`` so reports label fidelity figures as random-weight ones."""
    torch.manual_seed(seed)
    config.vtc_random_weights = True
    model = build(config)
    model.save_pretrained(path, safe_serialization=True)  # type: ignore[operator]
    return model


def tiny_config(vision_layers: int = 3, lm_layers: int = 4, image: int = 32, patch: int = 8,
                vocab: int = 320, image_token_id: int = 319) -> Any:
    """A small LLaVA config (CLIP tower, Llama LM with grouped-query attention)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                          num_attention_heads=4, image_size=image, patch_size=patch,
                          projection_dim=32)
    tc = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=lm_layers,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                     max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0)
    return LlavaConfig(vision_config=vc, text_config=tc,  # type: ignore[call-arg]
                       image_token_id=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=(image // patch) ** 2)


def llava15_config(lm_layers: int = 2) -> Any:
    """LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px: 576 visual tokens; projector to
    4096; Llama-2-7B's layer shape and vocabulary) with the LM cut to `lm_layers` layers."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, image_size=336, patch_size=14,
                          projection_dim=768, hidden_act="quick_gelu")
    tc = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=lm_layers,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1,
                     eos_token_id=2, pad_token_id=32001)
    return LlavaConfig(vision_config=vc, text_config=tc,  # type: ignore[call-arg]
                       image_token_id=32000,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=576)


WORDS = ("a", "the", "image", "picture", "describe", "what", "is", "in", "colour", "main",
         "object", "there", "person", "this", "of", "cat", "dog", "cup", "red", "blue",
         "green", "yes", "no", "and", "with", "on", "photo", "USER", "ASSISTANT", ":", "?",
         ".", ",")


def word_tokenizer(path: Path, image_token_id: int, vocab: int) -> Path:
    """A word-level `tokenizer.json` (test and bench checkpoints have no real one): ``<unk>``
    0, ``<s>`` 1, ``</s>`` 2, ``<image>`` at `image_token_id`, a few English words and
    punctuation, then filler tokens up to `vocab`; BOS prepended."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    table = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        table[w] = len(table)
    for w in ("Describe", "What", "Is"):
        table[w] = len(table)
    for i in range(len(table), vocab):
        if i != image_token_id:
            table[f"w{i}"] = i
    table["<image>"] = image_token_id
    tok = Tokenizer(WordLevel(table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.add_special_tokens(["<s>", "</s>", "<image>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out
