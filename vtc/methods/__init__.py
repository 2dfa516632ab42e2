"""Reduction methods, one module each, registered by decorator.

Importing this package imports every module in it, which registers every shipped
method (tome, evit, pitome). A new method is one module here (its recipe section,
static schedule, ONNX pass and eager op: `vtc.methods.base`), its recipes and its
tests; nothing else names it.
"""

import importlib
import pkgutil

from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteOut
from vtc.methods.planner import plan_budget, schedule
from vtc.methods.registry import get, methods, names, register

_MACHINERY = {"base", "cut", "merging", "planner", "registry", "rewrite"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_mod.name}")  # registers its method

__all__ = [
    "BlockStep", "Method", "MethodConfig", "Site", "SiteOut", "get", "methods", "names",
    "plan_budget", "register", "schedule",
]
