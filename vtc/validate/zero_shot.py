"""Zero-shot agreement of an image–text model: do the compressed engines rank captions
and images as the uncompressed model does?

Given image embeddings ``[N, D]`` and caption embeddings ``[K, D]`` from the engines
(compressed vision engine + text engine) and from the eager uncompressed model, each
side's similarity matrix is the cosine ``S[i, k]`` of image i and caption k (CLIP
scales it by a positive logit scale, which changes no ranking). Then

* image top-1 agreement: the fraction of images whose highest-scoring caption is the
  same on both sides (zero-shot classification with the captions as classes);
* caption top-1 agreement: the fraction of captions whose highest-scoring image is the
  same on both sides (text-to-image retrieval); None with fewer than two images, where
  it could not disagree;
* image cosine: per image, the cosine between the two sides' image embeddings.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[N, K]`` of image embeddings ``[N, D]`` and caption
    embeddings ``[K, D]``."""
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"embeddings of shapes {list(images.shape)} and "
                         f"{list(texts.shape)} cannot be compared; expected [N, D] and [K, D]")
    return _unit(images) @ _unit(texts).T  # type: ignore[no-any-return]


def agreement(images: np.ndarray, texts: np.ndarray, ref_images: np.ndarray,
              ref_texts: np.ndarray) -> dict[str, Any]:
    """The module docstring's figures for the engines (`images`, `texts`) against the
    reference (`ref_images`, `ref_texts`): image_top1_agreement, caption_top1_agreement,
    image_cosine_mean/min and each side's top caption per image."""
    if images.shape != ref_images.shape or texts.shape != ref_texts.shape:
        raise ValueError(f"engine embeddings {list(images.shape)}, {list(texts.shape)} and "
                         f"reference {list(ref_images.shape)}, {list(ref_texts.shape)} differ "
                         "in shape")
    s, r = similarity(images, texts), similarity(ref_images, ref_texts)
    top_s, top_r = s.argmax(axis=1), r.argmax(axis=1)
    caption = (float(np.mean(s.argmax(axis=0) == r.argmax(axis=0)))
               if len(images) >= 2 else None)
    cos = np.sum(_unit(images) * _unit(ref_images), axis=1)
    return {
        "image_top1_agreement": float(np.mean(top_s == top_r)),
        "caption_top1_agreement": caption,
        "image_cosine_mean": float(cos.mean()),
        "image_cosine_min": float(cos.min()),
        "top_caption_engine": [int(i) for i in top_s],
        "top_caption_eager": [int(i) for i in top_r],
    }


__all__ = ["agreement", "similarity"]
