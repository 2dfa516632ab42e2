"""Model families, ONNX export and the eager reference implementation.

Importing this package registers every supported family.
"""

from . import clip, deit, dinov2, siglip, vit  # noqa: F401  (registration side effects)
from .registry import (
    BlockParts,
    Family,
    PickleRefusedError,
    UnsupportedModelError,
    families,
    family_of,
    get_family,
    load_model,
    register_family,
    supported_model_types,
)

__all__ = [
    "BlockParts",
    "Family",
    "PickleRefusedError",
    "UnsupportedModelError",
    "families",
    "family_of",
    "get_family",
    "load_model",
    "register_family",
    "supported_model_types",
]
