"""Progress bars that suit where they are written.

tqdm redraws a bar up to ten times a second (``mininterval`` 0.1 s). On a terminal each redraw replaces the line;
written to a file (``build.py bench accel > log 2>&1``) every redraw stays, as a carriage return and a line of
text: some ten thousand of them over a 16-minute bench. :func:`progress_bar` keeps tqdm's redraws on a terminal
and draws at most every :data:`LOG_INTERVAL_S` seconds elsewhere, so a log still shows the progress (and the
final state, which tqdm draws on close) without the flood. ``--quiet`` turns the bars off altogether.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

#: Seconds between a bar's redraws when it is not written to a terminal.
LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, with ``mininterval`` :data:`LOG_INTERVAL_S` unless the bar's stream (its
    ``file``, stderr by default) is a terminal or ``mininterval`` is given."""
    stream = kwargs.get("file") or sys.stderr
    is_terminal = getattr(stream, "isatty", lambda: False)()
    if "mininterval" not in kwargs and not is_terminal:
        kwargs["mininterval"] = LOG_INTERVAL_S
    return tqdm(iterable, **kwargs)
