"""The one exception type for user mistakes (bad files, bad fields, bad values).

``build.py`` catches :class:`UserError` and prints its message with exit status 2 instead of a traceback, and
does the same for an :class:`OSError` that names a file (a path the system refuses: a folder where a file is
written, no permission, a full disk), printing the file and the system's reason; anything else that escapes is
a bug in mpqaccel and keeps its traceback.
"""


class UserError(Exception):
    """A user-facing error. The message names the file, the field and the allowed values."""
