"""The devices package's one exception for bad input or an unusable target (one line: what and what to do).

`devices` imports neither compress nor export, so it cannot raise compress.errors.SlimkitError; the CLI
turns a DeviceError into the same one-line message and exit code 2.
"""
from __future__ import annotations


class DeviceError(Exception):
    """An unreachable or unsuitable target, a missing runtime, an artifact that does not fit, bad options."""
