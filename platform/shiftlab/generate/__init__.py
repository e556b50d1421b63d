"""Synthetic target-style data: editors, SDGPA patching, and the Ray Data generation pipeline.

`shiftlab.generate.cache.ensure_generated(cfg)` is the entry point other stages call: it returns
the complete dataset directory of ``cfg.generate`` (format ``shiftlab``), generating only what
is missing.
"""
