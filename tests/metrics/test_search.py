"""The ranked CSP search: duplicates, screening, ranking, outputs and the top-n metrics."""

from __future__ import annotations

import math

import pytest
from pymatgen.core import Structure

from kldm_cli.data.writers import parse_cif_metadata
from kldm_cli.evaluation.ranked import ranked_metrics
from kldm_cli.evaluation.search import (
    SearchSettings,
    ranking_score,
    sample_counts,
    screen_lowest,
    search_structures,
    spacegroup_of,
    unique_candidates,
)
from kldm_cli.predict import write_search

from .conftest import cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl


def test_unique_candidates_points_each_duplicate_at_its_first_copy() -> None:
    crystal = low_symmetry_crystal()
    candidates = [rocksalt_nacl(), crystal, displaced(crystal, 0.01), cscl_nacl(), None]
    candidates.append(rocksalt_nacl().copy())
    assert unique_candidates(candidates) == [None, None, 1, None, None, 0]


def test_screen_keeps_the_lowest_energies_and_never_a_failed_one() -> None:
    energies = [-1.0, None, -3.0, -2.0, -3.0]
    assert screen_lowest(energies, 2) == [2, 4]  # a tie goes to the lower position
    assert screen_lowest(energies, 0) == [2, 4, 3, 0]
    assert screen_lowest([None, None], 1) == []


def test_settings_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="candidates"):
        SearchSettings(candidates=0)
    with pytest.raises(ValueError, match="fmax"):
        SearchSettings(fmax=0.0)
    with pytest.raises(ValueError, match="screen"):
        SearchSettings(screen=-1)
    with pytest.raises(ValueError, match="frequency_weight"):
        SearchSettings(frequency_weight=-0.01)


def test_sample_counts_add_each_duplicate_to_its_first_copy() -> None:
    duplicate_of = [None, None, 0, 1, 0, None]
    valid = [True, True, True, True, True, False]
    assert sample_counts(duplicate_of, valid) == {0: 3, 1: 2}


def test_ranking_score_trades_energy_for_frequency() -> None:
    assert ranking_score(-3.0, 1, 0.5) == -3.0  # a structure sampled once keeps its energy
    assert ranking_score(-3.0, 4, 0.0) == -3.0
    assert ranking_score(-3.0, 4, 0.01) == pytest.approx(-3.0 - 0.01 * 1.3862943611)


def test_spacegroup_of_rocksalt() -> None:
    assert spacegroup_of(rocksalt_nacl(), 0.1) == ("Fm-3m", 225)


def test_two_identical_candidates_give_one_entry(chgnet_model) -> None:
    rocksalt = displaced(rocksalt_nacl(5.5), 0.05, seed=1)
    candidates = [rocksalt, rocksalt.copy(), cscl_nacl()]
    settings = SearchSettings(candidates=3, screen=0, relax_steps=3)
    result = search_structures(candidates, settings, model=chgnet_model)
    statuses = [c.status for c in result.candidates]
    assert statuses[1] == "duplicate" and result.candidates[1].duplicate_of == 0
    assert sorted(entry.sample_index for entry in result.ranking) == [0, 2]
    energies = [entry.energy_per_atom for entry in result.ranking]
    assert energies == sorted(energies)
    assert result.ranking[0].energy_above_best == 0.0
    assert result.ranking[1].energy_above_best == pytest.approx(energies[1] - energies[0])
    assert all(entry.relax_steps <= 3 for entry in result.ranking)


def test_frequency_weight_puts_an_often_sampled_structure_first(chgnet_model) -> None:
    from kldm_cli.evaluation.relax import predict_energies

    rocksalt, cscl = rocksalt_nacl(), cscl_nacl()
    energies = predict_energies([rocksalt, cscl], model=chgnet_model)
    energy = dict(zip(("rocksalt", "cscl"), energies, strict=True))
    higher, lower = sorted(energy, key=energy.get, reverse=True)
    structure = {"rocksalt": rocksalt, "cscl": cscl}
    # the higher-energy structure three times, the lower once; no relaxation (single points)
    candidates = [structure[lower]] + [structure[higher].copy() for _ in range(3)]
    gap = energy[higher] - energy[lower]

    def ranked(weight: float) -> list[tuple[int, int]]:
        settings = SearchSettings(candidates=4, screen=0, relax_steps=0, frequency_weight=weight)
        result = search_structures(candidates, settings, model=chgnet_model)
        assert min(entry.energy_above_best for entry in result.ranking) == 0.0
        return [(entry.sample_index, entry.samples) for entry in result.ranking]

    assert ranked(0.0) == [(0, 1), (1, 3)]
    assert ranked(0.5 * gap / math.log(3)) == [(0, 1), (1, 3)]  # not enough to make up the gap
    assert ranked(2.0 * gap / math.log(3)) == [(1, 3), (0, 1)]


def test_screen_relaxes_only_the_lowest_single_point_energy(chgnet_model) -> None:
    from kldm_cli.evaluation.relax import predict_energies

    candidates = [cscl_nacl(), rocksalt_nacl()]
    energies = predict_energies(candidates, model=chgnet_model)
    lowest = min(range(2), key=lambda i: energies[i])
    settings = SearchSettings(candidates=2, screen=1, relax_steps=2)
    result = search_structures(candidates, settings, model=chgnet_model)
    assert [entry.sample_index for entry in result.ranking] == [lowest]
    assert result.candidates[1 - lowest].status == "screened out"
    assert result.candidates[1 - lowest].single_point_energy_per_atom == pytest.approx(
        energies[1 - lowest], abs=1e-5
    )


def test_ranked_files_round_trip_with_their_metadata(chgnet_model, tmp_path) -> None:
    candidates = [rocksalt_nacl(5.5), cscl_nacl()]
    result = search_structures(
        candidates, SearchSettings(candidates=2, screen=0, relax_steps=2), model=chgnet_model
    )
    files, summary = write_search(result, tmp_path, 2, provenance={"seed": 4})
    assert [path.name[:9] for path in files] == ["rank_001_", "rank_002_"]
    for entry, path in zip(result.ranking, files, strict=True):
        metadata = parse_cif_metadata(path.read_text())
        assert metadata["rank"] == entry.rank
        assert metadata["sample_index"] == entry.sample_index
        assert metadata["energy_per_atom_eV"] == pytest.approx(entry.energy_per_atom)
        assert metadata["energy_above_best_eV"] == pytest.approx(entry.energy_above_best)
        assert metadata["converged"] == entry.converged
        assert metadata["spacegroup"] == entry.spacegroup
        assert metadata["samples"] == entry.samples == 1
        assert metadata["seed"] == 4
        read = Structure.from_file(path)
        assert read.composition == entry.structure.composition
        assert read.lattice.abc == pytest.approx(entry.structure.lattice.abc, abs=1e-4)
    rows = summary.read_text().splitlines()
    assert len(rows) == 1 + len(candidates)
    assert rows[1].startswith("1,rank_001_")


def test_ranked_metrics_count_the_first_matching_rank() -> None:
    def target(first, best, ranked):
        rank = next((r + 1 for r, v in enumerate(ranked) if v is not None), None)
        return {
            "raw_first_rmse": first, "raw_best_rmse": best, "ranked_match_rank": rank,
            "ranked_rmse": ranked, "timing_s": {"relax": 2.0},
        }  # fmt: skip

    per_target = [
        target(0.1, 0.1, [0.05, None]),  # right at rank 1
        target(None, 0.2, [None, None, 0.3]),  # right at rank 3
        target(None, None, [None]),  # never right
        target(None, 0.4, [None, None, None, None, None]),  # the search lost it
    ]
    metrics = ranked_metrics(per_target)
    assert metrics["raw_mr_at_1"]["num_matched"] == 1
    assert metrics["raw_mr_at_k"]["num_matched"] == 3
    assert [metrics[f"ranked_top_{n}"]["num_matched"] for n in (1, 3, 5)] == [1, 2, 2]
    assert metrics["ranked_top_1"]["rmse"] == pytest.approx(0.05)
    assert metrics["ranked_top_3"]["rmse"] == pytest.approx((0.05 + 0.3) / 2)
    assert metrics["search_seconds_per_composition"] == {"relax": 2.0}


def test_stages_say_where_the_right_structure_was_lost() -> None:
    from kldm_cli.evaluation.ranked import right_structure_stages

    def candidate(index, status, duplicate_of=None):
        return {"sample_index": index, "status": status, "duplicate_of": duplicate_of}

    def target(raw, candidates, rank):
        return {"raw_rmse": raw, "candidates": candidates, "ranked_match_rank": rank}

    per_target = [
        # right structure (sample 1) relaxed and ranked first
        target([None, 0.1], [candidate(0, "ranked"), candidate(1, "ranked")], 1),
        # right structure only as a duplicate of a relaxed candidate, ranked second
        target(
            [None, None, 0.2],
            [candidate(0, "ranked"), candidate(1, "ranked"), candidate(2, "duplicate", 1)],
            2,
        ),
        # right structure sampled but screened out
        target([0.3, None], [candidate(0, "screened out"), candidate(1, "ranked")], None),
        # never sampled
        target([None], [candidate(0, "ranked")], None),
        # a record without candidate details is not counted
        {"raw_rmse": None, "candidates": [], "ranked_match_rank": 1},
    ]
    assert right_structure_stages(per_target) == {
        "num_targets": 4, "sampled": 3, "kept_by_screen": 2, "ranked_first": 1,
    }  # fmt: skip


def test_a_comparison_that_never_ends_counts_as_different(monkeypatch) -> None:
    import time

    import kldm_cli.evaluation.relax as relax

    class StuckMatcher:
        def fit(self, first, second):
            time.sleep(30)
            return True

    monkeypatch.setattr(relax, "MATCH_TIME_LIMIT_S", 0.2)
    started = time.perf_counter()
    assert not relax.same_structure(StuckMatcher(), rocksalt_nacl(), rocksalt_nacl())
    assert time.perf_counter() - started < 5


def test_relaxation_in_worker_processes_matches_the_in_process_one(chgnet_model) -> None:
    from kldm_cli.evaluation.search import relax_many

    structures = [rocksalt_nacl(5.5), cscl_nacl()]
    here = relax_many(structures, steps=2, fmax=0.1, workers=1, model=chgnet_model)
    apart = relax_many(structures, steps=2, fmax=0.1, workers=2, model=chgnet_model)
    assert [r.index for r in apart] == [0, 1]
    for a, b in zip(here, apart, strict=True):
        assert b.error is None and b.num_steps == a.num_steps
        assert b.energy_per_atom == pytest.approx(a.energy_per_atom, abs=1e-4)
