"""Fixtures for the network tests."""

import sys
from pathlib import Path

import pytest
import torch

# Make ``tests.symmetry`` importable however pytest is started (``pytest`` or ``python -m pytest``).
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: every random draw in a test goes through it."""
    return torch.Generator().manual_seed(20250711)
