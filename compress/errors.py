"""The one exception type for bad user input; the CLI turns it into one line and exit code 2."""
from __future__ import annotations


class SlimkitError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""
