"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix: the message names the thing and says what to do."""
