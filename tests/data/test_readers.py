"""Readers: CSV / CIF folder / extXYZ against pymatgen's own parse, bad rows, the cache."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from kldm_cli.data import cif
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.cif_p1 import _parse_p1_cif
from kldm_cli.data.readers import (
    load_dataset,
    read_cif_folder,
    read_csv,
    read_extxyz,
    record_from_cif,
)

from .helpers import assert_same_atoms, pymatgen_rows, pymatgen_structure

MATCHER = StructureMatcher()


@pytest.mark.parametrize("niggli", [True, False])
@pytest.mark.parametrize("fixture", ["mp20_small_csv", "perov5_small_csv"])
def test_csv_batch_structure_round_trip_matches_pymatgen(fixture, niggli, request):
    path = request.getfixturevalue(fixture)
    rows = pymatgen_rows(path)
    dataset = load_dataset(path, niggli=niggli)
    assert len(dataset.records) == len(rows) and not dataset.skipped
    batch = CrystalBatch.from_records(dataset.records)  # float32, as the model sees it
    for row, record, batched in zip(rows, dataset.records, batch.to_records(), strict=True):
        assert record.material_id == row["material_id"]
        reference = pymatgen_structure(row["cif"], niggli)
        structure = batched.to_structure()
        np.testing.assert_allclose(
            structure.lattice.parameters, reference.lattice.parameters, rtol=0, atol=1e-5
        )
        assert_same_atoms(structure, reference, atol=1e-5)
        assert MATCHER.fit(structure, reference)
        assert np.all((record.frac_coords >= 0) & (record.frac_coords < 1))


def test_csv_metadata_keeps_other_columns(mp20_small_csv):
    rows = pymatgen_rows(mp20_small_csv)
    dataset = read_csv(mp20_small_csv)
    for row, record in zip(rows, dataset.records, strict=True):
        assert set(record.metadata) == set(row) - {"cif", "material_id"}
        assert record.metadata["formation_energy_per_atom"] == float(
            row["formation_energy_per_atom"]
        )
        assert record.metadata["spacegroup.number"] == int(row["spacegroup.number"])
        assert record.metadata["source"] == row["source"]
        assert record.metadata["band_gap"] == (float(row["band_gap"]) if row["band_gap"] else None)
        assert record.formula == record.to_structure().composition.reduced_formula
    assert {r.metadata["source"] for r in dataset.records} == {"mp_20", "mpts_52"}


def test_unnamed_column_is_named_like_pandas(perov5_small_csv, tmp_path):
    row = pymatgen_rows(perov5_small_csv)[0]
    path = tmp_path / "unnamed.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["", "material_id", "cif"], ["7", "x", row["cif"]]])
    record = read_csv(path).records[0]
    assert record.metadata == {"Unnamed: 0": 7}


def test_gzipped_csv_gives_the_same_records(mp20_small_csv, tmp_path):
    gz_path = tmp_path / "train.csv.gz"
    gz_path.write_bytes(gzip.compress(mp20_small_csv.read_bytes()))
    plain, zipped = read_csv(mp20_small_csv), read_csv(gz_path)
    assert_same_records(plain.records, zipped.records)


def test_bad_rows_are_reported_with_reasons(bad_rows_csv):
    dataset = read_csv(bad_rows_csv)
    assert [r.material_id for r in dataset.records] == [
        row["material_id"] for i, row in enumerate(pymatgen_rows(bad_rows_csv)) if i in (0, 4, 10)
    ]
    found = {s.location: s.kind for s in dataset.skipped}
    assert found == {
        "bad_rows.csv:row 1 (bad-broken-cif)": "invalid_cif",
        "bad_rows.csv:row 2 (bad-empty-cif)": "missing_cif",
        "bad_rows.csv:row 3 (bad-missing-value)": "missing_cif",
        "bad_rows.csv:row 5 (bad-nan-length)": "invalid_cell",
        "bad_rows.csv:row 6 (bad-zero-volume)": "invalid_cell",
        "bad_rows.csv:row 7 (bad-no-atoms)": "no_atoms",
        "bad_rows.csv:row 8 (bad-disordered)": "disordered",
        "bad_rows.csv:row 9 (bad-extra-field)": "malformed_row",
    }
    reasons = {s.kind: s.reason for s in dataset.skipped}
    assert "no atoms" in reasons["no_atoms"]
    assert any("zero-volume" in s.reason for s in dataset.skipped)
    assert any("non-finite" in s.reason for s in dataset.skipped)
    assert "partial occupancies" in reasons["disordered"]
    assert dataset.num_inputs == 11


def test_missing_file_and_missing_cif_column_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="No such file"):
        load_dataset(tmp_path / "nope.csv")
    no_cif = tmp_path / "no_cif.csv"
    no_cif.write_text("material_id,structure\nmp-1,abc\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        load_dataset(no_cif)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        load_dataset(empty)
    unknown = tmp_path / "data.json"
    unknown.write_text("{}")
    with pytest.raises(ValueError, match="Unknown dataset format"):
        load_dataset(unknown)
    with pytest.raises(ValueError, match=r"No \.cif files"):
        load_dataset(tmp_path)


def test_fast_path_and_pymatgen_fallback_agree(mp20_small_csv):
    """The fast P1 reader and pymatgen's CifParser give the same records."""
    rows = pymatgen_rows(mp20_small_csv)[:10]
    for row in rows:
        cif = row["cif"]
        assert _parse_p1_cif(cif) is not None
        # Uncertainty brackets are outside the fast subset: pymatgen parses them.
        slow_cif = _add_uncertainty(cif)
        assert _parse_p1_cif(slow_cif) is None
        fast_record = record_from_cif(cif)
        slow_record = record_from_cif(slow_cif)
        np.testing.assert_allclose(fast_record.lengths, slow_record.lengths, rtol=0, atol=1e-12)
        np.testing.assert_allclose(fast_record.angles, slow_record.angles, rtol=0, atol=1e-12)
        assert_same_atoms(fast_record.to_structure(), slow_record.to_structure(), atol=1e-12)


def _add_uncertainty(cif: str) -> str:
    lines = cif.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("_cell_length_a"):
            lines[i] = line + "(0)"
    return "\n".join(lines) + "\n"


@pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")
def test_symmetrized_cif_goes_through_pymatgen(mp20_small_csv):
    row = pymatgen_rows(mp20_small_csv)[0]
    reference = pymatgen_structure(row["cif"], niggli=False)
    symmetrized = str(CifWriter(reference, symprec=0.01))
    assert _parse_p1_cif(symmetrized) is None
    record = record_from_cif(symmetrized, niggli=False)
    assert record.num_atoms == len(reference)
    assert MATCHER.fit(record.to_structure(), reference)


def test_cif_folder(cif_folder):
    dataset = load_dataset(cif_folder)
    files = sorted(cif_folder.glob("*.cif"))
    assert [r.material_id for r in dataset.records] == [f.stem for f in files]
    for file, record in zip(files, dataset.records, strict=True):
        assert record.metadata == {"file": file.name}
        reference = pymatgen_structure(file.read_text(), niggli=True)
        np.testing.assert_allclose(record.lengths, reference.lattice.abc, rtol=0, atol=1e-8)
        assert MATCHER.fit(record.to_structure(), reference)


def test_cif_folder_reports_bad_files_and_reads_every_block(cif_folder, tmp_path):
    folder = tmp_path / "cifs"
    shutil.copytree(cif_folder, folder)
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    (folder / "notes.txt").write_text("not a structure")
    first, second = sorted(cif_folder.glob("*.cif"))[:2]
    (folder / "two.cif").write_text(first.read_text() + "\n" + second.read_text())
    dataset = read_cif_folder(folder)
    assert [s.location for s in dataset.skipped] == [str(folder / "broken.cif")]
    assert dataset.skipped[0].kind == "invalid_cif"
    ids = [r.material_id for r in dataset.records]
    assert ids[-2:] == ["two#0", "two#1"] and len(ids) == 6
    assert MATCHER.fit(
        dataset.records[-1].to_structure(), pymatgen_structure(second.read_text(), True)
    )
    single = load_dataset(first)
    assert [r.material_id for r in single.records] == [first.stem]


def test_extxyz(extxyz_file):
    dataset = load_dataset(extxyz_file)
    frames = ase.io.read(extxyz_file, index=":")
    assert [r.material_id for r in dataset.records] == [f.info["material_id"] for f in frames]
    for frame, record in zip(frames, dataset.records, strict=True):
        assert record.metadata == {"e_above_hull": pytest.approx(frame.info["e_above_hull"])}
        reference = AseAtomsAdaptor.get_structure(frame).get_reduced_structure()
        np.testing.assert_allclose(
            [*record.lengths, *record.angles], reference.lattice.parameters, rtol=0, atol=1e-8
        )
        assert_same_atoms(record.to_structure(), reference, atol=1e-8)


def test_extxyz_bad_frames(extxyz_file, tmp_path):
    frames = ase.io.read(extxyz_file, index=":")
    frames[1].pbc = [True, True, False]
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with open(path, "a") as handle:
        handle.write('7\nLattice="1 0 0 0 1 0 0 0 1" Properties=species:S:1:pos:R:3\nH 0 0 0\n')
    dataset = read_extxyz(path)
    assert len(dataset.records) == 4
    assert [s.kind for s in dataset.skipped] == ["invalid_cell", "invalid_frame"]
    assert dataset.skipped[0].location.startswith("frames.extxyz:frame 1")
    assert dataset.skipped[1].location == "frames.extxyz:frame 5 onward"


# ------------------------------------------------------------------------------------ cache


def test_cache_hit_gives_the_same_dataset(bad_rows_csv, tmp_path):
    cache_dir = Path(tmp_path / "kldm-cache")  # KLDM_CACHE_DIR (conftest)
    first = load_dataset(bad_rows_csv)
    assert not first.from_cache
    cached_files = list(cache_dir.iterdir())
    assert len(cached_files) == 1 and cached_files[0].suffix == ".npz"
    assert first.content_hash in cached_files[0].name
    second = load_dataset(bad_rows_csv)
    assert second.from_cache
    assert_same_records(first.records, second.records, exact=True)
    assert second.skipped == first.skipped
    assert second.content_hash == first.content_hash
    assert second.source == str(bad_rows_csv)


def test_cache_is_keyed_by_content_and_options(mp20_small_csv, tmp_path):
    copy = tmp_path / "copy.csv"
    shutil.copy(mp20_small_csv, copy)
    load_dataset(mp20_small_csv, cache_dir=tmp_path / "c")
    assert load_dataset(copy, cache_dir=tmp_path / "c").from_cache  # same bytes, same entry
    assert not load_dataset(copy, cache_dir=tmp_path / "c", niggli=False).from_cache
    lines = copy.read_text().splitlines(keepends=True)
    copy.write_text("".join(lines[:-30]))  # drop the last rows
    changed = load_dataset(copy, cache_dir=tmp_path / "c")
    assert not changed.from_cache and len(changed.records) < 40


def test_no_cache_writes_nothing(mp20_small_csv, tmp_path):
    load_dataset(mp20_small_csv, cache_dir=tmp_path / "c", use_cache=False)
    assert not (tmp_path / "c").exists()
    assert not load_dataset(mp20_small_csv, use_cache=False).from_cache


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong_hash"])
def test_corrupt_cache_is_ignored_and_rebuilt(perov5_small_csv, tmp_path, damage):
    cache_dir = tmp_path / "c"
    first = load_dataset(perov5_small_csv, cache_dir=cache_dir)
    (cache_file,) = cache_dir.iterdir()
    data = cache_file.read_bytes()
    if damage == "garbage":
        cache_file.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        cache_file.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        cache_file.write_bytes(b"")
    else:
        with np.load(cache_file) as npz:
            arrays = dict(npz)
        header = json.loads(arrays["header"].tobytes())
        header["content_hash"] = "0" * 64
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with open(cache_file, "wb") as handle:
            np.savez(handle, **arrays)
    rebuilt = load_dataset(perov5_small_csv, cache_dir=cache_dir)
    assert not rebuilt.from_cache
    assert_same_records(first.records, rebuilt.records, exact=True)
    again = load_dataset(perov5_small_csv, cache_dir=cache_dir)
    assert again.from_cache
    assert [p.name for p in cache_dir.iterdir()] == [cache_file.name]  # no temp file left


def test_worker_processes_give_the_same_records(mp20_small_csv, monkeypatch):
    serial = read_csv(mp20_small_csv, num_workers=1)
    monkeypatch.setattr(cif, "CHUNK_SIZE", 8)
    progress: list[tuple[int, int]] = []
    parallel = read_csv(
        mp20_small_csv, num_workers=2, progress=lambda d, t: progress.append((d, t))
    )
    assert_same_records(serial.records, parallel.records, exact=True)
    assert progress[0] == (0, 40) and progress[-1] == (40, 40) and len(progress) == 6


def assert_same_records(records_a, records_b, exact: bool = False) -> None:
    assert len(records_a) == len(records_b)
    for a, b in zip(records_a, records_b, strict=True):
        assert a.material_id == b.material_id
        assert a.metadata == b.metadata
        np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
        for name in ("frac_coords", "lengths", "angles"):
            if exact:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            else:
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)


def test_reading_does_not_import_torch_or_pymatgen():
    """Loading a cached dataset stays light: the package exports are imported lazily."""
    code = (
        "import sys, kldm_cli.data.readers, kldm_cli.data.stats; "
        "print(sorted(m for m in ('torch', 'pymatgen.core', 'ase.io') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
