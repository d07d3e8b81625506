"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SeqisError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataError(SeqisError):
    """The data could not be read or does not make a valid dataset."""


class ConfigError(SeqisError):
    """A flag or option value is invalid."""


class CheckpointError(SeqisError):
    """No usable checkpoint, or one that does not match the configuration."""
