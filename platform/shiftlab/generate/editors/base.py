"""The editor interface: a batch of images in, the same number of edited images out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Editor(Protocol):
    """Edits images according to a text prompt.

    ``edit`` takes HxWx3 uint8 RGB images and one seed per image and returns HxWx3 uint8
    images of the same sizes. Image ``i``'s result depends only on (image ``i``, prompt,
    ``seeds[i]``), never on the other images of the call, so batching never changes results.
    ``batch_size`` is how many images one call should carry for good throughput.
    """

    batch_size: int

    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]: ...


def check_inputs(images: list[np.ndarray], seeds: list[int]) -> None:
    """Shared argument checks: one seed per image, every image HxWx3 uint8."""
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds: give one seed per image")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image {i}: expected an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}"
            )
