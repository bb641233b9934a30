"""Hand-made crystals with known answers, shared by the metrics tests."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

NACL_A = 5.64  # Å, conventional rocksalt lattice parameter


def rocksalt_nacl(a: float = NACL_A) -> Structure:
    """Rocksalt NaCl in its 2-atom primitive (fcc) cell."""
    fcc = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(fcc, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl_nacl(a: float = 3.3) -> Structure:
    """NaCl in the CsCl structure (simple cubic, 2 atoms): a different polymorph."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def low_symmetry_crystal() -> Structure:
    """A 4-atom triclinic Li2O2-like cell with no symmetry beyond the identity."""
    lattice = Lattice.from_parameters(4.1, 4.7, 5.3, 83.0, 97.0, 104.0)
    coords = [[0.02, 0.05, 0.11], [0.47, 0.31, 0.58], [0.23, 0.71, 0.29], [0.81, 0.44, 0.87]]
    return Structure(lattice, ["Li", "Li", "O", "O"], coords)


def displaced(structure: Structure, rms_angstrom: float, seed: int = 0) -> Structure:
    """A copy whose sites move by mean-free random Cartesian displacements with the given RMS
    (Å); the lattice is unchanged."""
    rng = np.random.default_rng(seed)
    step = rng.normal(size=(len(structure), 3))
    step -= step.mean(axis=0)
    step *= rms_angstrom / np.sqrt((step**2).sum(axis=1).mean())
    return Structure(
        structure.lattice,
        structure.species,
        structure.cart_coords + step,
        coords_are_cartesian=True,
    )


def collapsed_nacl() -> Structure:
    """NaCl with Na and Cl 0.3 Å apart: structurally invalid."""
    return Structure(Lattice.cubic(NACL_A), ["Na", "Cl"], [[0, 0, 0], [0.3 / NACL_A, 0, 0]])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the dataset cache of every test out of the user's home."""
    monkeypatch.setenv("KLDM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kldm-cache"))


@pytest.fixture(scope="session")
def _chgnet_once():
    pytest.importorskip("chgnet")
    from kldm_cli.evaluation.relax import load_chgnet

    return load_chgnet("cpu")


@pytest.fixture
def chgnet_model(_chgnet_once):
    """The pretrained CHGNet, loaded once per session (skips if chgnet is missing); torch runs
    on one thread during the test (CI shares two cores between test processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _chgnet_once
    torch.set_num_threads(threads)
