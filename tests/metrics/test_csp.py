"""CSP match rate and RMSE: analytic RMSE of a displaced copy, polymorphs, invalid candidates,
timeouts."""

from __future__ import annotations

import time

import pytest
from pymatgen.core import Structure

from kldm_cli.evaluation.metrics._parallel import run_tasks
from kldm_cli.evaluation.metrics.csp import match_structures, rms_distance

from .conftest import collapsed_nacl, cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl


def always_match(candidate: Structure, target: Structure, settings: dict) -> float:
    """A pair function that says every pair matches perfectly."""
    return 0.0


def slow_for_cesium(candidate: Structure, target: Structure, settings: dict) -> float | None:
    """Hangs on any target that contains Cs; the real matcher otherwise."""
    if "Cs" in target.composition:
        time.sleep(600)
    return rms_distance(candidate, target, settings)


def expected_rmse(structure: Structure, rms_angstrom: float) -> float:
    """StructureMatcher's normalized RMS of a mean-free displacement: RMS / (V / N)^(1/3)."""
    return rms_angstrom / (structure.volume / len(structure)) ** (1 / 3)


def test_displaced_copy_matches_with_the_analytic_rmse() -> None:
    target = low_symmetry_crystal()
    result = match_structures([[displaced(target, 0.05)]], [target], workers=0)
    assert result.match_rate == 1.0
    assert result.num_matched == 1
    assert result.rmse == pytest.approx(expected_rmse(target, 0.05), rel=1e-5)


def test_different_polymorph_does_not_match() -> None:
    result = match_structures([[cscl_nacl()]], [rocksalt_nacl()], workers=0)
    assert result.match_rate == 0.0
    assert result.rmse is None
    assert result.per_target[0].best_candidate is None


def test_best_of_k_candidates_gives_the_rmse() -> None:
    target = low_symmetry_crystal()
    candidates = [displaced(target, 0.10, seed=1), cscl_nacl(), displaced(target, 0.03, seed=2)]
    result = match_structures([candidates], [target], workers=0)
    assert result.per_target[0].best_candidate == 2
    assert result.rmse == pytest.approx(expected_rmse(target, 0.03), rel=1e-5)


def test_invalid_candidate_never_counts() -> None:
    # even a pair function that matches everything never sees the invalid candidate
    result = match_structures(
        [[collapsed_nacl()], [None]], [rocksalt_nacl(), rocksalt_nacl()],
        workers=0, pair_function=always_match,
    )  # fmt: skip
    assert result.match_rate == 0.0
    assert result.num_invalid == 2
    assert [t.num_invalid for t in result.per_target] == [1, 1]


def test_rates_over_several_targets_in_worker_processes() -> None:
    first, second = low_symmetry_crystal(), rocksalt_nacl()
    result = match_structures(
        [[displaced(first, 0.02)], [cscl_nacl(), collapsed_nacl()]], [first, second], workers=2
    )
    assert result.match_rate == 0.5
    assert (result.num_targets, result.num_matched, result.num_candidates) == (2, 1, 3)
    assert result.num_invalid == 1
    assert result.rmse == pytest.approx(expected_rmse(first, 0.02), rel=1e-5)


def test_a_hanging_match_times_out_and_the_others_still_finish() -> None:
    cesium = rocksalt_nacl().copy()
    cesium.replace_species({"Na": "Cs"})
    target = low_symmetry_crystal()
    started = time.monotonic()
    result = match_structures(
        [[cesium], [displaced(target, 0.02)]], [cesium, target],
        workers=1, timeout=5.0, pair_function=slow_for_cesium,
    )  # fmt: skip
    # the hung worker was killed, not waited for (generous bound: a loaded CI machine needs time
    # to start the replacement worker, but far less than the 600 s hang)
    assert time.monotonic() - started < 300
    assert result.num_timeouts == 1
    assert result.per_target[0].num_timeouts == 1 and not result.per_target[0].matched
    assert result.per_target[1].matched  # done by the replacement worker
    assert result.match_rate == 0.5


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="targets"):
        match_structures([[rocksalt_nacl()]], [rocksalt_nacl(), rocksalt_nacl()], workers=0)


def test_run_tasks_reports_errors_in_order() -> None:
    outcomes = run_tasks(divmod, [(7, 2), (1, 0), (9, 3)], workers=2, timeout=10)
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert outcomes[0].value == (3, 1) and outcomes[2].value == (3, 0)
    assert "ZeroDivisionError" in outcomes[1].error
