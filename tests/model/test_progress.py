"""Progress bars (model/progress.py): tqdm's redraw interval on a terminal, a long one written anywhere else."""

import io

from model.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_into_a_file_redraws_every_log_interval():
    out = io.StringIO()
    with progress_bar(range(3), file=out) as bar:
        assert bar.mininterval == LOG_INTERVAL_S
        assert list(bar) == [0, 1, 2]
    assert "3/3" in out.getvalue()  # the final state, drawn on close


def test_a_bar_on_a_terminal_keeps_tqdms_interval_and_a_given_one_stands():
    with progress_bar(range(3), file=Terminal()) as bar:
        assert bar.mininterval == 0.1
    with progress_bar(range(3), file=io.StringIO(), mininterval=2.0) as bar:
        assert bar.mininterval == 2.0
    with progress_bar(total=5, file=io.StringIO(), disable=True) as bar:  # (--quiet: no bar, no stream)
        bar.update(5)
        assert bar.disable
