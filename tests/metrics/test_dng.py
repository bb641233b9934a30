"""Uniqueness, novelty, coverage and Wasserstein distances on sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from kldm_cli.evaluation.metrics.dng import (
    CompositionScaler,
    composition_fingerprints,
    coverage,
    coverage_from_fingerprints,
    novelty,
    uniqueness,
    wasserstein_density,
    wasserstein_num_elements,
)

from .conftest import collapsed_nacl, cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl


def bcc_iron() -> Structure:
    return Structure(Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]])


def test_uniqueness_flags_later_duplicates() -> None:
    crystal = low_symmetry_crystal()
    samples = [crystal, rocksalt_nacl(), displaced(crystal, 0.01), cscl_nacl(), rocksalt_nacl()]
    result = uniqueness(samples, workers=0)
    assert result.is_unique == [True, True, False, True, False]
    assert result.rate == pytest.approx(3 / 5)


def test_uniqueness_in_worker_processes_sees_a_supercell_as_a_duplicate() -> None:
    supercell = rocksalt_nacl() * (2, 1, 1)
    result = uniqueness([rocksalt_nacl(), cscl_nacl(), supercell], workers=2)
    assert result.is_unique == [True, True, False]
    assert result.num_timeouts == 0


def test_novelty_of_a_set_against_itself_is_zero_and_against_others_one() -> None:
    samples = [rocksalt_nacl(), low_symmetry_crystal(), bcc_iron()]
    assert novelty(samples, samples, workers=0).rate == 0.0
    assert novelty(samples, [cscl_nacl()], workers=0).rate == 1.0
    mixed = novelty(samples, [rocksalt_nacl() * (1, 1, 2)], workers=0)
    assert mixed.is_novel == [False, True, True]
    assert mixed.rate == pytest.approx(2 / 3)


def test_coverage_of_a_set_against_itself_is_complete() -> None:
    samples = [rocksalt_nacl(), cscl_nacl(), bcc_iron()]
    result = coverage(samples, samples, workers=0)
    assert result.cov_recall == 1.0
    assert result.cov_precision == 1.0
    assert result.amsd_recall == pytest.approx(0.0, abs=1e-12)
    assert result.num_samples_fingerprinted == 3


def test_coverage_misses_a_structure_unlike_any_sample() -> None:
    reference = [rocksalt_nacl(), bcc_iron()]
    samples = [rocksalt_nacl(), collapsed_nacl()]  # the invalid one gets no fingerprint
    result = coverage(samples, reference, workers=0)
    assert result.cov_recall == 0.5  # Fe is not covered
    assert result.cov_precision == 0.5  # the invalid sample counts in the denominator
    assert result.num_samples_fingerprinted == 1


def test_coverage_cutoffs_on_hand_made_fingerprints() -> None:
    identity = CompositionScaler(means=np.zeros(1), stds=np.ones(1))
    comp = [np.zeros(1)] * 3
    result = coverage_from_fingerprints(
        [np.array([0.0]), np.array([5.0]), None], comp,  # samples: near, far, no fingerprint
        [np.array([0.3]), np.array([0.9])], comp[:2],  # reference
        struct_cutoff=0.4, comp_cutoff=10.0, comp_scaler=identity,
    )  # fmt: skip
    assert result.cov_recall == 0.5  # 0.3 is 0.3 from a sample, 0.9 is 0.9 away
    assert result.cov_precision == pytest.approx(1 / 3)  # 1 of 3 samples
    assert result.amsd_precision == pytest.approx((0.3 + 4.1) / 2)


def test_composition_scaler_standardizes_and_zeroes_nan() -> None:
    values = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan]])
    scaler = CompositionScaler.fit(values)
    np.testing.assert_allclose(scaler.transform(values), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def test_composition_fingerprints_depend_on_the_fractions_only() -> None:
    fps = composition_fingerprints([rocksalt_nacl(), rocksalt_nacl() * 2, cscl_nacl()])
    assert fps.shape == (3, 132)
    np.testing.assert_array_equal(fps[0], fps[1])
    np.testing.assert_array_equal(fps[0], fps[2])


def test_wasserstein_of_identical_sets_is_zero() -> None:
    samples = [rocksalt_nacl(), low_symmetry_crystal(), bcc_iron()]
    assert wasserstein_density(samples, list(samples)) == 0.0
    assert wasserstein_num_elements(samples, list(samples)) == 0.0


def test_wasserstein_known_values() -> None:
    small, large = rocksalt_nacl(5.64), rocksalt_nacl(5.64 * 2 ** (1 / 3))  # double the volume
    assert wasserstein_density([small], [large]) == pytest.approx(small.density / 2)
    # one unary and one binary against two binaries: half the mass moves by one element
    assert wasserstein_num_elements([bcc_iron(), small], [small, small]) == pytest.approx(0.5)


def test_wasserstein_needs_two_sets() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_density([], [bcc_iron()])
