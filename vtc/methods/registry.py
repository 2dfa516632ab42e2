"""The method registry: name → method object, filled by the `@register` decorator."""

from __future__ import annotations

from vtc.errors import InputError
from vtc.methods.base import Method

_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: instantiate `cls` and register it under its name."""
    method = cls()
    if not method.name or method.name in ("none", "validate", "export", "backend", "gates"):
        raise TypeError(f"{cls.__name__} needs a name that is not a recipe section")
    if method.name in _METHODS:
        raise TypeError(f"a method named {method.name!r} is registered already")
    _METHODS[method.name] = method
    return cls


def names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def methods() -> dict[str, Method]:
    return dict(_METHODS)


def get(name: str) -> Method:
    """The method called `name` (InputError listing the known ones otherwise)."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown reduction method {name!r}; known methods: "
                         f"{', '.join(names())} (or none)") from None
