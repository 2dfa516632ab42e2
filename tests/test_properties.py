"""Property tests: random values thrown at every recipe field through `--set` end in
exit 0 (it built), 1 (a gate line says why) or 2 (one `error:` line) — never a
traceback, never an internal error, never a half-written --out."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from vtc.cli import export_main
from vtc.recipe import recipe_model

FAST = ["--set", "validate.repeats=1", "--set", "validate.warmup=0", "--set",
        "validate.samples=2", "--batch", "2", "--no-bench", "--recipe", "tome-r8",
        "--set", "tome.r=2"]


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable dotted key of the recipe model (sections walked, aliases used)."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _leaves(ann, f"{key}.")
        else:
            keys.append(key)
    return keys


KEYS = sorted(set(_leaves(recipe_model())) - {"name", "description"})

VALUES = st.one_of(
    st.integers(-(10**12), 10**12), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 3),
    st.booleans(), st.none(), st.text(max_size=6),
    st.lists(st.integers(-3, 20), max_size=4),
    st.sampled_from(["tome", "evit", "pitome", "[tome, evit]", "inside", "sum", "auto",
                     "fashion-mnist", "[CPUExecutionProvider]", "{}", "[", "a: b"]),
)


def _yaml(value: Any) -> str:
    if isinstance(value, str):
        return value  # as a user types it: YAML text, possibly malformed
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def test_every_section_is_covered() -> None:
    for key in ("tome.r", "pitome.margin", "evit.keep_rate", "export.batch", "backend.kind",
                "validate.samples", "unmerge", "method", "gates"):
        assert key in KEYS


# 16 examples per suite run (hypothesis keeps its failures in .hypothesis/ and replays
# them first); VTC_PROPERTY_EXAMPLES=400 for a deeper search
EXAMPLES = int(os.environ.get("VTC_PROPERTY_EXAMPLES", "16"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_random_set_values_never_crash(vit_dir: Path, tmp_path_factory: Any, key: str,
                                       value: Any) -> None:
    out = tmp_path_factory.mktemp("prop") / "out"
    res = CliRunner().invoke(export_main, [str(vit_dir), *FAST, "--set", f"{key}={_yaml(value)}",
                                           "--out", str(out)])
    text = res.output
    assert "Traceback" not in text and "internal error" not in text, text
    assert res.exit_code in (0, 1, 2), text
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    if res.exit_code == 2:
        assert len(errors) == 1 and not out.exists(), text
    elif res.exit_code == 1:
        assert "FAIL " in text and (out / "report.json").is_file(), text
    else:
        assert (out / "report.json").is_file() and not errors, text
    assert not list(out.parent.glob(".out*")), "a temp dir or lock was left beside --out"
