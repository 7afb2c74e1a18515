"""User errors: one sentence, non-zero exit, no traceback. Bugs keep their traceback."""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A problem the user can fix: the message names the flag, file, key or tensor and what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes read like every other user error: `error: ...` on one line, exit 1
    (argparse's own is the whole usage and exit 2)."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(1)
