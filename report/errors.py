"""The exceptions that reach the user as a one-line message instead of a traceback."""


class UserError(ValueError):
    """A mistake the user can fix: the message names the thing and says what to do.

    A ValueError, as scikit-learn's parameter errors are, so Python callers can catch
    either."""


class OptionError(UserError):
    """An option's value is refused; the message names the option as the caller wrote it
    (`--batch-size` on the command line, `batch_size` in Python)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")
        self.option = option
