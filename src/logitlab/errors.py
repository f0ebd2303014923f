"""The one exception type that means "the user asked for something invalid"."""


class UserError(Exception):
    """Bad input or a missing prerequisite: reported as one line, exit code 2, no traceback."""
