"""Adaptation methods (losses and batch recipes) behind ``build_method``."""

from __future__ import annotations

from shiftlab.methods.base import Method
from shiftlab.methods.registry import build_method, list_methods, register_method

__all__ = ["Method", "build_method", "list_methods", "register_method"]
