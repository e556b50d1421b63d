"""Image editors behind one function: ``build_editor(cfg)``.

InstructPix2Pix (diffusers; heavy imports happen when one is built) and a cheap seeded
photometric editor. Each editor module imports only `base.py`; this package maps a config's
``kind`` to its editor.
"""

from __future__ import annotations

from shiftlab.config.generate import InstructPix2PixConfig, PhotometricConfig
from shiftlab.generate.editors.base import Editor, check_inputs
from shiftlab.generate.editors.instruct_pix2pix import InstructPix2PixEditor
from shiftlab.generate.editors.photometric import PhotometricEditor
from shiftlab.utils.errors import ConfigError

__all__ = ["Editor", "build_editor", "check_inputs"]


def build_editor(
    cfg: InstructPix2PixConfig | PhotometricConfig, device: str | None = None
) -> Editor:
    """The editor a config describes. ``device`` (InstructPix2Pix only): None = cuda if available."""
    if isinstance(cfg, InstructPix2PixConfig):
        return InstructPix2PixEditor(cfg, device=device)
    if isinstance(cfg, PhotometricConfig):
        return PhotometricEditor(cfg)
    raise ConfigError(f"generate.editor.kind: unknown editor {getattr(cfg, 'kind', None)!r}")
