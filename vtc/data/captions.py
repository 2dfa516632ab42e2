"""Captions for zero-shot agreement of image–text models (CLIP): the default list that
ships with vtc, and reading a user's list (`vtc-export --captions FILE`).

The default covers the scikit-image photos the pipeline validates on (a cat, a cup
of coffee, an astronaut, a rocket) and common distractors, so that the top caption of
each photo is a real choice between short, unlike descriptions.
"""

from __future__ import annotations

from pathlib import Path

from vtc.errors import InputError

DEFAULT_CAPTIONS: tuple[str, ...] = (
    "a photo of a cat",
    "a photo of a dog",
    "a photo of a cup of coffee",
    "a photo of an astronaut",
    "a photo of a rocket",
    "a photo of a car",
    "a photo of a bird",
    "a photo of a person",
    "a photo of a city street",
    "a photo of a forest",
    "a photo of the sea",
    "a photo of food on a plate",
    "a photo of a building",
    "a photo of a flower",
    "a photo of a horse",
    "a photo of a computer",
)
MIN_CAPTIONS = 2  # a ranking needs two candidates


def check_captions(captions: list[str], where: str = "") -> list[str]:
    """`captions` stripped; InputError (one line, led by `where` when given) when fewer
    than two, one blank, or one given twice (the rankings would tie)."""
    out = [c.strip() for c in captions]
    where = f"{where}: " if where else ""
    if len(out) < MIN_CAPTIONS:
        raise InputError(f"{where}{len(out)} caption(s); zero-shot agreement ranks "
                         f"captions and needs at least {MIN_CAPTIONS}")
    blank = [i for i, c in enumerate(out) if not c]
    if blank:
        raise InputError(f"{where}caption {blank[0] + 1} is blank; give text for every "
                         "caption")
    seen: set[str] = set()
    for c in out:
        if c in seen:
            raise InputError(f"{where}the caption {c!r} is given twice (its scores would "
                             "tie); give each caption once")
        seen.add(c)
    return out


def read_captions(path: Path) -> list[str]:
    """One caption per non-empty line of a UTF-8 text file (lines starting with `#` are
    comments)."""
    where = f"--captions {path}"
    if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
        raise InputError(f"{where}: not a regular file (a device, pipe or socket); give a "
                         "text file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text; give one caption per line") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return check_captions([ln for ln in lines if ln and not ln.startswith("#")], where)
