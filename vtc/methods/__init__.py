"""Reduction methods, one module each, registered by decorator.

Importing this package registers every shipped method (tome, evit, pitome). A
new method is one module here (its recipe section, static schedule, ONNX pass and
eager op: `vtc.methods.base`), its recipes and its tests; nothing else names it.
"""

from vtc.methods import evit, pitome, tome  # noqa: F401  (registration side effects)
from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteOut
from vtc.methods.planner import plan_budget, schedule
from vtc.methods.registry import get, methods, names, register

__all__ = [
    "BlockStep", "Method", "MethodConfig", "Site", "SiteOut", "get", "methods", "names",
    "plan_budget", "register", "schedule",
]
