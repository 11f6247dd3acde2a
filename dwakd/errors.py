"""Errors with messages that name the file, field or option and what was expected (torch-free)."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the option and what was expected."""


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the field."""
