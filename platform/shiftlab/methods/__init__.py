"""Adaptation methods (losses and batch recipes) behind ``build_method``.

Each method file registers its class; importing this package registers them all.
"""

from __future__ import annotations

from shiftlab.methods import classmix, daformer, feature_align, querydiff, sdgpa, simple
from shiftlab.methods.base import Method
from shiftlab.methods.registry import build_method, list_methods, register_method

__all__ = [
    "Method",
    "build_method",
    "classmix",
    "daformer",
    "feature_align",
    "list_methods",
    "querydiff",
    "register_method",
    "sdgpa",
    "simple",
]
