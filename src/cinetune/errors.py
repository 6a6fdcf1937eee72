"""Errors a user can act on. The CLI turns each into a message and exit code 2."""


class CinetuneError(Exception):
    """Base class: the message is written for the user, not for a developer."""

    exit_code = 2


class ConfigError(CinetuneError):
    """A config file or override is wrong: the message names the key and the fix."""


class DataError(CinetuneError):
    """The dataset yields nothing usable (every clip skipped, no captions, ...)."""


class NotSupportedYet(ConfigError):  # noqa: N818 (reads as the message it carries)
    """A known key asks for a feature that is not built yet."""
