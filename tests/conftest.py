"""Fixtures shared by the task tests: the machine's 2 cores are shared (other processes, a
parallel test run), and a kernel or torch using both stalls at every spinning barrier when
another process holds a core, so these tests run single-threaded."""
import pytest

import fusedrnn

# A test that asks for 2 threads gets 2 threads: the thread count's adaptation to other
# processes' load (fusedrnn.set_adaptive_threads) is off in the suite, else a busy machine would
# quietly turn the 1-vs-2-thread checks into 1-vs-1. tests/test_threads_env.py turns it on.
fusedrnn.set_adaptive_threads(False)


@pytest.fixture
def one_thread():
    """fusedrnn's kernels on one thread for the test."""
    old = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(1)
    yield
    fusedrnn.set_num_threads(old)


@pytest.fixture
def torch1():
    """torch, single-threaded for the test."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)
