import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """The test networks are tiny: with two OpenMP threads on a busy 2-CPU machine each of the
    thousands of small convolutions waits on a thread barrier (one file took 100 s instead of
    5 s). One thread keeps the suite's runtime independent of the machine's load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
