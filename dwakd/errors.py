"""Errors with messages that name the file, field or option and what was expected (torch-free)."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the option and what was expected."""


class ChoiceError(ConfigError):
    """An option outside its fixed set of choices (``field``, ``choices``): what ``dwakd.config.option_fields``
    reads to learn a Config dataclass's choices from its own ``validate``."""

    def __init__(self, message: str, field: str, choices) -> None:
        super().__init__(message)
        self.field = field
        self.choices = sorted(choices)


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the field."""
