"""User-facing errors: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, prompt files)."""


class ConfigError(UserError):
    """The config does not match the schema or contradicts itself."""
