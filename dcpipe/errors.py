"""Errors the user must act on.

A `DcpipeError` says what is wrong with the input, the config or the workspace and what to do;
the CLI prints its message and exits 2. Any other exception is a bug in dcpipe: exit 1 with its
traceback, never dressed up as bad input.
"""


class DcpipeError(Exception):
    """Bad input, config or workspace state: the message tells the user what to do."""


class SettingsError(DcpipeError, ValueError):
    """A setting out of its range or of the wrong type (a ValueError for Python callers too)."""


class FileFormatError(DcpipeError, ValueError):
    """A file that is not the dcpipe file it should be: another format, another version, damaged."""
