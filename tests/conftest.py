"""Shared fixtures: paths of the small datasets in ``tests/fixtures`` and isolated user folders.

Every test runs with ``KLDM_CACHE_DIR`` and ``HF_HOME`` pointing into its own ``tmp_path``, so no
test reads or writes the real caches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where torch sees no CUDA GPU (CI); on a GPU machine
    ``pytest -m cuda`` runs exactly them (``benchmarks/device/run_check.py`` does)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLDM_CACHE_DIR", str(tmp_path / "kldm-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one intra-op thread: its tensors are tiny, and on a busy machine OpenMP's
    spin-waiting makes several threads far slower than one; results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def mp20_small_csv() -> Path:
    """40 rows of MP-20 train (all columns; 1 to 20 atoms per cell)."""
    return FIXTURES / "mp20_small.csv"


@pytest.fixture
def perov5_small_csv() -> Path:
    """20 rows of Perov-5 train (5 atoms per cell)."""
    return FIXTURES / "perov5_small.csv"


@pytest.fixture
def bad_rows_csv() -> Path:
    """3 good MP-20 rows (material ids of rows 0, 4, 10) among 8 broken ones."""
    return FIXTURES / "bad_rows.csv"


@pytest.fixture
def cif_folder() -> Path:
    """4 MP-20 structures as ``<material_id>.cif``."""
    return FIXTURES / "cifs"


@pytest.fixture
def extxyz_file() -> Path:
    """5 MP-20 structures with ``material_id`` and ``e_above_hull`` in ``info``."""
    return FIXTURES / "small.extxyz"
