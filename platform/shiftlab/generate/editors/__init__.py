"""Image editors: InstructPix2Pix (diffusers) and a cheap seeded photometric editor."""

from __future__ import annotations

from shiftlab.generate.editors.base import Editor, build_editor

__all__ = ["Editor", "build_editor"]
