"""shiftlab's version, recorded with generated sets, exports and runs."""

__version__ = "0.1.0"
