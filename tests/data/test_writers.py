"""StructureWriter: files read back with pymatgen/ASE, metadata present, resume, atomic writes."""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from kldm_cli.data import writers
from kldm_cli.data.readers import read_cif_folder, read_csv, read_extxyz
from kldm_cli.data.writers import StructureWriter, parse_cif_metadata

pytestmark = pytest.mark.filterwarnings("ignore:Issues encountered while parsing CIF")

METADATA = {"seed": 42, "model": "kldm-csp-mp20", "temperature": 0.5, "relaxed": False}


@pytest.fixture
def structures(mp20_small_csv) -> list[Structure]:
    return [r.to_structure() for r in read_csv(mp20_small_csv).records[10:13]]


def assert_same_structure(written: Structure, original: Structure) -> None:
    np.testing.assert_allclose(
        written.lattice.parameters, original.lattice.parameters, rtol=0, atol=1e-6
    )
    assert StructureMatcher().fit(written, original)


def test_cif_round_trip(structures, tmp_path):
    writer = StructureWriter(tmp_path / "out", fmt="cif")
    paths = [writer.write(s, i, METADATA) for i, s in enumerate(structures)]
    assert [p.name for p in paths] == ["sample_00000.cif", "sample_00001.cif", "sample_00002.cif"]
    assert sorted(os.listdir(tmp_path / "out")) == [p.name for p in paths]  # no temp files
    for index, (path, original) in enumerate(zip(paths, structures, strict=True)):
        text = path.read_text()
        assert_same_structure(Structure.from_str(text, fmt="cif"), original)
        assert parse_cif_metadata(text) == {
            **METADATA,
            "sample_index": index,
            "formula": original.composition.reduced_formula,
        }
    dataset = read_cif_folder(tmp_path / "out")
    assert [r.material_id for r in dataset.records] == [p.stem for p in paths]
    assert dataset.records[1].metadata["seed"] == 42
    assert dataset.records[1].metadata["sample_index"] == 1
    assert writer.existing_indices() == {0, 1, 2}


def test_cif_metadata_may_override_formula_and_takes_any_json(structures, tmp_path):
    writer = StructureWriter(tmp_path, fmt="cif", prefix="gen")
    metadata = {"formula": "Li2O2", "note": "two words: and a colon", "grid": [1, 2], "x": None}
    path = writer.write(structures[0], 7, metadata)
    assert path.name == "gen_00007.cif"
    assert parse_cif_metadata(path.read_text()) == {**metadata, "sample_index": 7}


def test_existing_indices_ignores_other_files(structures, tmp_path):
    writer = StructureWriter(tmp_path, fmt="cif")
    for index in (0, 2, 5):
        writer.write(structures[0], index)
    (tmp_path / "sample_00009.cif.bak").write_text("")
    (tmp_path / "other_00003.cif").write_text("")
    assert writer.existing_indices() == {0, 2, 5}


def test_interrupted_cif_write_leaves_nothing(structures, tmp_path, monkeypatch):
    writer = StructureWriter(tmp_path, fmt="cif")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write(structures[0], 0)
    assert os.listdir(tmp_path) == []


def test_extxyz_round_trip(structures, tmp_path):
    writer = StructureWriter(tmp_path, fmt="extxyz")
    for index, structure in enumerate(structures):
        assert writer.write(structure, index, METADATA) == tmp_path / "samples.extxyz"
    frames = ase.io.read(tmp_path / "samples.extxyz", index=":")
    assert len(frames) == 3
    for index, (frame, original) in enumerate(zip(frames, structures, strict=True)):
        assert_same_structure(AseAtomsAdaptor.get_structure(frame), original)
        assert frame.info["sample_index"] == index
        assert frame.info["formula"] == original.composition.reduced_formula
        for key, value in METADATA.items():
            assert frame.info[key] == value
    assert writer.existing_indices() == {0, 1, 2}
    assert read_extxyz(tmp_path / "samples.extxyz").records[2].metadata["seed"] == 42


def test_extxyz_resume_cuts_a_half_frame(structures, tmp_path):
    writer = StructureWriter(tmp_path, fmt="extxyz")
    writer.write(structures[0], 0)
    writer.write(structures[1], 3)
    path = writer.extxyz_path
    complete = path.read_bytes()
    with open(path, "ab") as handle:  # a crash in the middle of a frame
        handle.write(b'12\nLattice="1 0 0 0 1 0 0 0 1" sample_index=4\nSi 0 0 0\nSi 0.5')
    resumed = StructureWriter(tmp_path, fmt="extxyz")
    assert resumed.truncated_bytes > 0
    assert path.read_bytes() == complete
    assert resumed.existing_indices() == {0, 3}
    resumed.write(structures[2], 4)
    assert [f.info["sample_index"] for f in ase.io.read(path, index=":")] == [0, 3, 4]


def test_writes_records_too(mp20_small_csv, tmp_path):
    record = read_csv(mp20_small_csv).records[0]
    path = StructureWriter(tmp_path).write(record, 0)
    assert_same_structure(Structure.from_str(path.read_text(), fmt="cif"), record.to_structure())


def test_bad_arguments(structures, tmp_path):
    with pytest.raises(ValueError, match="Unknown output format 'xyz'"):
        StructureWriter(tmp_path, fmt="xyz")
    with pytest.raises(ValueError, match="prefix"):
        StructureWriter(tmp_path, prefix="a/b")
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        StructureWriter(a_file)
    with pytest.raises(ValueError, match="Cannot create output folder"):
        StructureWriter(a_file / "sub")
    with pytest.raises(ValueError, match="non-negative integer"):
        StructureWriter(tmp_path).write(structures[0], -1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable|permission denied"):
            StructureWriter(locked)
        with pytest.raises(PermissionError, match="permission denied"):
            StructureWriter(locked / "sub")
    finally:
        locked.chmod(0o700)


def test_unwritable_folder_messages_without_root(tmp_path, monkeypatch):
    monkeypatch.setattr(writers.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="is not writable"):
        StructureWriter(tmp_path)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writers.Path, "mkdir", denied)
    with pytest.raises(PermissionError, match="Cannot create output folder .*permission denied"):
        StructureWriter(tmp_path / "new")
