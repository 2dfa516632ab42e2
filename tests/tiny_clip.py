"""A tiny, seeded full CLIPModel checkpoint (vision + text + projections) with a tiny
word-level tokenizer saved beside it: no hub access, a few hundred kB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from tests.tiny import IMAGE, perturb
from vtc.data.captions import DEFAULT_CAPTIONS

VISION: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                              intermediate_size=128, image_size=IMAGE, patch_size=8)
TEXT: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, vocab_size=100, max_position_embeddings=12,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
PROJECTION = 24
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<unk>"]


def tokenizer() -> Any:
    """A word-level tokenizer over the default captions' words: ids 0/1/2 are
    start/end(= pad)/unknown; every caption is wrapped in start … end."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for c in DEFAULT_CAPTIONS for w in c.split()} | {"tiny", "extra"})
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    assert len(vocab) <= TEXT["vocab_size"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def full_clip(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=PROJECTION)
    return perturb(CLIPModel(config).eval(), seed)


def full_clip_dir(path: Path, with_tokenizer: bool = True, seed: int = 0) -> Path:
    """Save the tiny CLIPModel (and its tokenizer) into `path`."""
    full_clip(seed).save_pretrained(path)
    if with_tokenizer:
        tokenizer().save_pretrained(path)
    return path
