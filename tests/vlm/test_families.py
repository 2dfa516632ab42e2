"""The VLM family registry: each entry is one module exposing a `Family`; an
unsupported model_type is one line naming the supported ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vtc.errors import InputError
from vtc.vlm import families


@pytest.mark.parametrize("model_type", sorted(families.FAMILIES))
def test_every_registered_family_binds_its_entry_points(model_type: str) -> None:
    fam = families.get(model_type)
    assert isinstance(fam, families.Family) and fam.name == model_type
    assert "<image>" in fam.template and "{prompt}" in fam.template
    assert all(callable(getattr(fam, f)) for f in (
        "load", "check_config", "lm_dir", "export_vision", "genai", "processor", "runtime",
        "image_embeds", "generate", "hf_generate"))
    # encoder cuts: both halves of the tower graph, or neither (the family refuses them)
    assert (fam.export_tower_body is None) == (fam.export_tower_tail is None)
    assert fam.features_rank in (2, 3)


def test_an_unsupported_family_names_the_supported_ones() -> None:
    with pytest.raises(InputError, match=r"'idefics3' is not .* supported: llava, qwen2_5_vl"):
        families.get("idefics3")


def test_the_registry_imports_no_torch() -> None:
    code = "import sys, vtc.vlm.families; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
