"""The one exception type for bad user input: entry points print its one-line message and exit non-zero."""


class InputError(ValueError):
    """A file, key or value supplied by the user is invalid; the message names it and what would be valid."""
