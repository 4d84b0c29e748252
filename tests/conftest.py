"""Fixtures shared by several test modules."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the suite's two cores: a second intra-op thread per worker
    # would only oversubscribe them.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """The networks of a module are tiny: a second intra-op thread only adds hand-off cost (a lot on a busy CPU).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
