"""Errors that the CLI turns into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line."""


class AptUnavailable(UserError):
    """Debian's apt could not fetch a corpus package (no apt-get, or no network)."""
