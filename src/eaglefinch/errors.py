"""Errors that carry one clear line for the user: what is wrong and what to do.

The CLI prints ``str(error)`` for these instead of a traceback.
"""


class EaglefinchError(Exception):
    """Base class for every error eaglefinch raises on bad input."""


class ConfigError(EaglefinchError, ValueError):
    """A configuration or option that cannot work."""


class CheckpointError(EaglefinchError, ValueError):
    """A file that is not a usable Eagle/Finch checkpoint."""


class StateError(EaglefinchError, ValueError):
    """A recurrent state that does not belong to the model or batch it is used with."""


class TokenizerError(EaglefinchError, ValueError):
    """A malformed vocabulary or an id the vocabulary does not have."""


class DataError(EaglefinchError, ValueError):
    """Missing or malformed training or evaluation data."""
