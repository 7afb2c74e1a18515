"""User errors: one sentence, non-zero exit, no traceback. Bugs keep their traceback."""


class UserError(Exception):
    """A problem the user can fix: the message names the flag, file, key or tensor and what to do."""
