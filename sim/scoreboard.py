"""In-order scoreboard: transactions received from a DUT against those a model expects, one by one."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cocotb.triggers import Event

__all__ = ["Scoreboard"]


class Scoreboard:
    """Compares received transactions with expected ones, in order.

    The expected transactions come from a model: all at once (``expected``), or one by one with
    :meth:`expect` as the testbench sends the inputs they follow from. Every received transaction goes to
    :meth:`check` (a :class:`~sim.transactors.StreamSink` callback, or a testbench that assembles several
    beats into one transaction first). A transaction beyond the expected ones counts as mismatched.

    Parameters
    ----------
    expected : iterable
        Expected transactions, in order; compared with ``==``.
    name : str
        What a transaction is called in the log (``"image"``, ``"dot product"``).
    log_limit : int
        Mismatches logged in full (the rest are only counted).

    Members
    -------
    expected : list
    received : list
        Every transaction received so far.
    mismatched : list of int
        Indices of the received transactions that differ from the expected one at the same index.
    errors : list of str
        One line per mismatch: the index, what was received and what was expected.
    done : cocotb.triggers.Event
        Set while every expected transaction has been received (also when none is expected).
    """

    def __init__(self, expected: Iterable = (), *, name: str = "transaction", log_limit: int = 5):
        self.expected = list(expected)
        self.name = name
        self.log_limit = log_limit
        self.received: list = []
        self.mismatched: list[int] = []
        self.errors: list[str] = []
        self.done = Event()
        self.log = logging.getLogger("cocotb.tb.scoreboard")
        self._update_done()

    @property
    def missing(self) -> int:
        """Expected transactions not received (yet)."""
        return max(len(self.expected) - len(self.received), 0)

    @property
    def passed(self) -> bool:
        """Every expected transaction received and equal, nothing more."""
        return not self.mismatched and not self.missing

    def expect(self, transaction) -> None:
        """Append one expected transaction (the model's output for the input just sent)."""
        self.expected.append(transaction)
        self._update_done()

    def check(self, transaction) -> bool:
        """Take one received transaction; return whether it equals the expected one at its index."""
        k = len(self.received)
        self.received.append(transaction)
        ok = k < len(self.expected) and transaction == self.expected[k]
        if not ok:
            self.mismatched.append(k)
            want = self.expected[k] if k < len(self.expected) else f"no {self.name}"
            self.errors.append(f"{self.name} {k}: got {transaction}, expected {want}")
            if len(self.mismatched) <= self.log_limit:
                self.log.error("%s", self.errors[-1])
        self._update_done()
        return ok

    def _update_done(self) -> None:
        if len(self.received) >= len(self.expected):
            self.done.set()
        else:
            self.done.clear()
