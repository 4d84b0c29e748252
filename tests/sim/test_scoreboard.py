"""The in-order scoreboard outside a simulator: which index it blames, when it is done, what it logs."""

import logging

from sim.scoreboard import Scoreboard


def test_matching_transactions_pass_and_finish():
    board = Scoreboard([[1, 2], [3, 4]], name="image")
    assert not board.done.is_set() and board.missing == 2
    assert board.check([1, 2])
    assert not board.done.is_set() and not board.passed
    assert board.check([3, 4])
    assert board.done.is_set() and board.passed
    assert board.mismatched == [] and board.errors == [] and board.received == [[1, 2], [3, 4]]


def test_a_mismatch_is_reported_at_its_index():
    board = Scoreboard([10, 11, 12, 13], name="beat")
    results = [board.check(v) for v in (10, 11, 99, 13)]
    assert results == [True, True, False, True]
    assert board.mismatched == [2] and not board.passed and board.done.is_set()
    assert board.errors == ["beat 2: got 99, expected 12"]


def test_order_matters():
    board = Scoreboard([1, 2, 3])
    for v in (1, 3, 2):
        board.check(v)
    assert board.mismatched == [1, 2]


def test_extra_and_missing_transactions():
    board = Scoreboard([5], name="dot product")
    board.check(5)
    board.check(6)
    assert board.mismatched == [1] and board.errors == ["dot product 1: got 6, expected no dot product"]
    short = Scoreboard([5, 6])
    short.check(5)
    assert short.missing == 1 and not short.passed and short.mismatched == []


def test_expect_follows_the_model_and_reopens_done():
    board = Scoreboard()
    assert board.done.is_set() and board.passed  # nothing expected, nothing received
    board.expect("a")
    assert not board.done.is_set()
    board.check("a")
    board.expect("b")
    assert not board.done.is_set() and board.missing == 1
    board.check("c")
    assert board.done.is_set() and board.mismatched == [1]


def test_log_is_limited_but_every_mismatch_counts(caplog):
    board = Scoreboard(range(10), log_limit=3)
    with caplog.at_level(logging.ERROR, logger="cocotb.tb.scoreboard"):
        for v in range(10):
            board.check(v + 1)
    assert board.mismatched == list(range(10)) and len(board.errors) == 10
    assert [r.getMessage() for r in caplog.records] == board.errors[:3]
