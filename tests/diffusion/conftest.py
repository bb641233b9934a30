"""Shared fixtures for the diffusion tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's small-tensor numerics on one thread (faster on shared CPUs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
