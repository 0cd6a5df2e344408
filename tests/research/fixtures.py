"""Fixtures the research tests share (imported by name where used)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors run faster on one thread, and much faster on a CPU shared with other jobs (two
    threads wait for each other at every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
