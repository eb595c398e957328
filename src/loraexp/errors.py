"""The one exception type that reaches the user as a single line (exit code 2)."""


class UserError(Exception):
    """A problem the user can fix; the message names the fix. The CLI prints it without a traceback."""
