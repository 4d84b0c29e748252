"""The one exception type for user mistakes (bad files, bad fields, bad values).

``build.py`` catches :class:`UserError` and prints its message with exit status 2 instead of a traceback, and
does the same for an :class:`OSError` that names a file (a path the system refuses: a folder where a file is
written, no permission, a full disk), printing the file and the system's reason; a :class:`ToolError` (an
external tool failed) is printed with exit status 1; anything else that escapes is a bug in mpqaccel and keeps
its traceback. :func:`shown` spells a bad value in such a message.
"""

import json


def shown(value, limit: int = 80) -> str:
    """``value`` as an error spells it: as a JSON file does for ``null``, ``true`` and ``false``, else as Python does
    (``'x'``, ``[4]``); cut to ``limit`` characters, so that a whole table in the wrong place does not fill the
    terminal."""
    text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class UserError(Exception):
    """A user-facing error. The message names the file, the field and the allowed values."""


class ToolError(RuntimeError):
    """An external tool the command runs (a simulator, a synthesizer) failed: not installed, a build that did not
    compile, a run without a result. The message names the tool and the log to read; ``build.py`` prints it
    with exit status 1 (the tool or the design failed, not the user's input)."""
