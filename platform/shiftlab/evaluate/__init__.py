"""Evaluation: metrics, TTA inference, checkpoint evaluation, domain-gap analysis.

Names are imported on first use, so ``import shiftlab.evaluate.metrics`` (used by earlier
stages) does not pull in matplotlib or the checkpoint loader.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfusionMatrix": "shiftlab.evaluate.metrics",
    "SegMetrics": "shiftlab.evaluate.metrics",
    "predict_logits": "shiftlab.evaluate.inference",
    "image_to_tensor": "shiftlab.evaluate.inference",
    "evaluate_model": "shiftlab.evaluate.evaluator",
    "evaluate_checkpoint": "shiftlab.evaluate.evaluator",
    "load_model": "shiftlab.evaluate.predictor",
    "Predictor": "shiftlab.evaluate.predictor",
    "stream_confusion": "shiftlab.evaluate.evaluator",
    "Normalization": "shiftlab.evaluate.evaluator",
    "analyze_domain_gap": "shiftlab.evaluate.domain_gap",
    "write_domain_gap": "shiftlab.evaluate.domain_gap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shiftlab.evaluate' has no attribute {name!r}")
