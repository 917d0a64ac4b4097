"""The one base class for failures a user can fix: the CLI prints them without a traceback."""


class AAClipError(Exception):
    """Bad input, a missing file, a mismatched checkpoint: say what and where, then stop."""
