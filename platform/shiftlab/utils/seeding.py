"""Deterministic seeds derived from names, so results never depend on scheduling."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (config seed, sample id, patch index, ...).

    Python's ``hash`` is salted per process, so a cryptographic hash of the text of the
    parts is used instead: the same parts give the same seed in every process and run.
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global generators (for model init and data order)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
