"""Write generated structures: one CIF file per sample, or one multi-frame extXYZ file.

Both formats carry the sample's metadata (formula, sample index, seed, model name, anything the
caller passes) so that a file is self-describing, and both can be resumed: a CIF is written to a
temporary file and renamed (an interrupted run leaves no half file), an extXYZ frame is appended
in a single write and flushed, and a trailing half frame left by a crash is cut off when the
writer is opened again. :meth:`StructureWriter.existing_indices` tells which samples exist.

CIF metadata are comment lines ``# kldm.<key>: <JSON value>`` before the data block, which every
CIF reader ignores and :func:`parse_cif_metadata` reads back.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kldm_cli import __version__
from kldm_cli.data.records import CrystalRecord
from kldm_cli.fileio import respect_umask

if TYPE_CHECKING:
    from pymatgen.core import Structure

OutputFormat = Literal["cif", "extxyz"]

_CIF_METADATA_PREFIX = "# kldm."
_CIF_METADATA_LINE = re.compile(r"^# kldm\.([^:\s]+):\s?(.*)$")


def record_to_structure(record: CrystalRecord) -> Structure:
    """pymatgen ``Structure`` of a record (see :meth:`CrystalRecord.to_structure`)."""
    return record.to_structure()


def format_cif_metadata(metadata: dict[str, Any]) -> str:
    """``# kldm.<key>: <JSON value>`` lines, one per entry (keys without spaces or colons)."""
    lines = []
    for key, value in metadata.items():
        clean_key = re.sub(r"[\s:]+", "_", str(key))
        lines.append(f"{_CIF_METADATA_PREFIX}{clean_key}: {json.dumps(_plain(value), default=str)}")
    return "".join(line + "\n" for line in lines)


def parse_cif_metadata(text: str) -> dict[str, Any]:
    """The metadata written by :func:`format_cif_metadata` (values JSON-decoded when possible)."""
    metadata: dict[str, Any] = {}
    for line in text.splitlines():
        match = _CIF_METADATA_LINE.match(line.strip())
        if match is None:
            continue
        key, raw = match.groups()
        try:
            metadata[key] = json.loads(raw)
        except json.JSONDecodeError:
            metadata[key] = raw
    return metadata


def _plain(value: Any) -> Any:
    """numpy values -> Python values (JSON, extXYZ ``info``)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class StructureWriter:
    """Write samples into ``out_dir``.

    * ``fmt="cif"``: one file ``{prefix}_{index:05d}.cif`` per sample, metadata as
      ``# kldm.<key>: <JSON>`` comment lines.
    * ``fmt="extxyz"``: frames appended to ``{prefix}s.extxyz``, metadata in each frame's
      ``info`` (strings, numbers, booleans and numeric lists as they are; anything else as JSON).

    ``write`` always records ``sample_index`` and ``formula`` (reduced) in the metadata.

    Raises:
        ValueError: unknown ``fmt``, or ``out_dir`` exists as a file / cannot be created.
        PermissionError: ``out_dir`` is not writable.
    """

    def __init__(
        self, out_dir: str | Path, fmt: OutputFormat = "cif", prefix: str = "sample"
    ) -> None:
        if fmt not in ("cif", "extxyz"):
            raise ValueError(f"Unknown output format {fmt!r}; choose 'cif' or 'extxyz'")
        if not prefix or not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):
            raise ValueError(f"prefix must be letters, digits, '.', '_' or '-', got {prefix!r}")
        self.out_dir = Path(out_dir).expanduser()
        self.fmt: OutputFormat = fmt
        self.prefix = prefix
        _ensure_writable_dir(self.out_dir)
        self._cif_name = re.compile(rf"^{re.escape(prefix)}_(\d+)\.cif$")
        for stale in self.out_dir.glob(f".{prefix}_*.cif.*.tmp"):
            stale.unlink(missing_ok=True)
        #: Bytes of a trailing half frame cut from the extXYZ file when it was opened.
        self.truncated_bytes = self._repair_extxyz() if fmt == "extxyz" else 0

    @property
    def extxyz_path(self) -> Path:
        """The multi-frame file used with ``fmt="extxyz"``."""
        return self.out_dir / f"{self.prefix}s.extxyz"

    def path_for(self, index: int) -> Path:
        """File that holds sample ``index`` (the shared extXYZ file for ``fmt="extxyz"``)."""
        if self.fmt == "extxyz":
            return self.extxyz_path
        return self.out_dir / f"{self.prefix}_{index:05d}.cif"

    def write(
        self,
        structure: Structure | CrystalRecord,
        index: int,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write one sample; returns the file written to."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        index = int(index)
        if isinstance(structure, CrystalRecord):
            structure = structure.to_structure()
        info = {
            "sample_index": index,
            "formula": structure.composition.reduced_formula,
            **(metadata or {}),
        }
        info["sample_index"] = index
        if self.fmt == "cif":
            return self._write_cif(structure, index, info)
        return self._append_extxyz(structure, info)

    def _write_cif(self, structure: Structure, index: int, info: dict[str, Any]) -> Path:
        from pymatgen.io.cif import CifWriter

        text = f"# generated by kldm {__version__}\n" + format_cif_metadata(info)
        text += str(CifWriter(structure))
        path = self.path_for(index)
        handle = tempfile.NamedTemporaryFile(
            "w", dir=self.out_dir, prefix=f".{path.name}.", suffix=".tmp", delete=False
        )
        try:
            with handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            respect_umask(handle.name)
            os.replace(handle.name, path)
        except BaseException:  # interrupted or failed: leave neither a half file nor a temp file
            Path(handle.name).unlink(missing_ok=True)
            raise
        return path

    def _append_extxyz(self, structure: Structure, info: dict[str, Any]) -> Path:
        import ase.io
        from ase import Atoms

        atoms = Atoms(
            numbers=structure.atomic_numbers,
            cell=structure.lattice.matrix,
            scaled_positions=structure.frac_coords,
            pbc=True,
        )
        atoms.info.update({str(k): _info_value(v) for k, v in info.items()})
        buffer = io.StringIO()
        ase.io.write(buffer, atoms, format="extxyz")
        with open(self.extxyz_path, "a", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
        return self.extxyz_path

    def existing_indices(self) -> set[int]:
        """Sample indices already written (for resuming an interrupted run)."""
        if self.fmt == "cif":
            return {
                int(match.group(1))
                for path in self.out_dir.iterdir()
                if (match := self._cif_name.match(path.name)) is not None
            }
        indices = set()
        for position, info_line in enumerate(self._extxyz_frames()[0]):
            index = _sample_index_from_info(info_line)
            indices.add(position if index is None else index)
        return indices

    def existing_metadata(self) -> dict[int, dict[str, Any]]:
        """Sample index → the metadata written with it, for every sample already written."""
        if self.fmt == "cif":
            found = {}
            for path in self.out_dir.iterdir():
                if (match := self._cif_name.match(path.name)) is not None:
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        header = "".join(line for line in handle if line.startswith("#"))
                    found[int(match.group(1))] = parse_cif_metadata(header)
            return found
        from ase.io.extxyz import key_val_str_to_dict

        found = {}
        for position, info_line in enumerate(self._extxyz_frames()[0]):
            try:
                info = key_val_str_to_dict(info_line.strip())
            except (ValueError, TypeError):
                info = {}
            info = {key: _plain(value) for key, value in info.items()}
            index = _sample_index_from_info(info_line)
            found[position if index is None else index] = info
        return found

    def read_structures(self, indices: list[int]) -> list[Structure | None]:
        """The written samples ``indices`` read back as pymatgen Structures (in that order);
        ``None`` for a CIF that cannot be read back (e.g. a collapsed cell)."""
        if self.fmt == "cif":
            return [_read_cif_structure(self.path_for(i)) for i in indices]
        import ase.io
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = {}
        for position, atoms in enumerate(ase.io.read(self.extxyz_path, index=":")):
            index = atoms.info.get("sample_index", position)
            frames[int(index)] = atoms
        return [AseAtomsAdaptor.get_structure(frames[i]) for i in indices]

    def refuse_existing(self, resume_hint: str | None = None) -> None:
        """Raise ``ValueError`` if ``out_dir`` already holds samples of this writer's format.

        ``resume_hint`` (e.g. "pass --resume to continue that run") is named in the message.
        """
        existing = self.existing_indices()
        if not existing:
            return
        where = self.extxyz_path if self.fmt == "extxyz" else self.out_dir
        hint = f"{resume_hint}, or choose another --out" if resume_hint else "choose another --out"
        raise ValueError(
            f"{where} already holds {len(existing)} structures from an earlier run; {hint} "
            "(or remove them): writing here would mix two runs"
        )

    def _extxyz_frames(self) -> tuple[list[str], int]:
        """Info lines of the complete frames, and the byte length of those frames."""
        if not self.extxyz_path.exists():
            return [], 0
        data = self.extxyz_path.read_bytes()
        lines = data.splitlines(keepends=True)
        info_lines: list[str] = []
        position = complete_bytes = 0
        while position < len(lines):
            try:
                num_atoms = int(lines[position].decode("utf-8").strip())
            except (UnicodeDecodeError, ValueError):
                break
            end = position + 2 + num_atoms
            if end > len(lines) or not lines[end - 1].endswith(b"\n"):
                break
            info_lines.append(lines[position + 1].decode("utf-8", errors="replace"))
            complete_bytes += sum(len(line) for line in lines[position:end])
            position = end
        return info_lines, complete_bytes

    def _repair_extxyz(self) -> int:
        """Cut a trailing half frame (an interrupted append); returns the bytes removed."""
        if not self.extxyz_path.exists():
            return 0
        size = self.extxyz_path.stat().st_size
        _, complete_bytes = self._extxyz_frames()
        if complete_bytes < size:
            with open(self.extxyz_path, "r+b") as handle:
                handle.truncate(complete_bytes)
        return size - complete_bytes


def _read_cif_structure(path: Path) -> Structure | None:
    """A CIF written by :class:`StructureWriter` as a Structure, as written (no cell checks)."""
    import warnings

    from pymatgen.core import Lattice, Structure

    from kldm_cli.data.cif_p1 import _parse_p1_cif

    text = path.read_text(encoding="utf-8", errors="replace")
    fast = _parse_p1_cif(text)
    try:
        if fast is not None:
            lengths, angles, frac_coords, numbers = fast
            lattice = Lattice.from_parameters(*lengths, *angles)
            return Structure(lattice, [int(z) for z in numbers], frac_coords)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception:  # noqa: BLE001  (pymatgen raises many kinds of errors on a bad cell)
        return None


def _sample_index_from_info(info_line: str) -> int | None:
    from ase.io.extxyz import key_val_str_to_dict

    try:
        value = key_val_str_to_dict(info_line.strip()).get("sample_index")
        return None if value is None else int(value)
    except (ValueError, TypeError):
        return None


def _info_value(value: Any) -> Any:
    """A value ASE's extXYZ writer stores and reads back faithfully; JSON text otherwise."""
    value = _plain(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.array(value)
    return json.dumps(value, default=str)


def _ensure_writable_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"Output path {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError as err:
        raise PermissionError(f"Cannot create output folder {out_dir}: permission denied") from err
    except OSError as err:
        raise ValueError(f"Cannot create output folder {out_dir}: {err.strerror or err}") from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"Output folder {out_dir} is not writable")
