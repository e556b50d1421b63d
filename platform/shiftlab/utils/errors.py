"""Error types whose messages name the file, key or sample at fault."""

from __future__ import annotations


class ShiftlabError(Exception):
    """Base class: the CLI prints these as one clear line and exits with status 2."""


class ConfigError(ShiftlabError):
    """A config file or override is invalid; the message names the file and the key."""


class DataError(ShiftlabError):
    """A dataset is malformed; the message names the file or sample."""
