"""The candidates of an unfinished ``kldm evaluate csp`` run, kept so that a rerun goes on.

A CSP evaluation of the MP-20 test set samples for an hour or more on a CPU. With ``--out
RECORD.json`` every finished sampling batch is appended to ``RECORD.json.partial.jsonl`` (and
flushed to disk) before the next batch starts: a header line with the run's settings, then one
line per batch with its job indices, its structures and its sampling seconds. A rerun with the
same ``--out`` and the same settings loads those batches and samples only the others. Batches
are seeded by their position in the batch plan (:func:`kldm_cli.sampling.batch_generator`), so
the resumed run draws exactly the candidates an uninterrupted one would. The file is deleted once
the record is written.

A line cut short by the interruption is ignored (its batch is sampled again). Settings that
differ from the header's are refused, naming each difference, rather than mixing candidates of
two runs in one record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

SUFFIX = ".partial.jsonl"
FORMAT = "kldm-csp-candidates/1"


def log_path(out: str | Path) -> Path:
    """Where the candidates of the run writing the record ``out`` are kept."""
    out = Path(out).expanduser()
    return out.with_name(out.name + SUFFIX)


class CandidateLog:
    """Append-only JSON-lines file of sampled batches (see the module docstring)."""

    def __init__(self, path: Path, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)
        self.done: dict[int, Structure] = {}
        self.previous_sampling_s = 0.0

    @classmethod
    def open(cls, out: str | Path, settings: Mapping[str, Any]) -> CandidateLog:
        """The log beside ``out``: the batches of an earlier run with the same ``settings`` are
        loaded into ``done``; a new log is started (parent folders created) otherwise."""
        log = cls(log_path(out), settings)
        if log.path.exists():
            log._load()
        else:
            log.path.parent.mkdir(parents=True, exist_ok=True)
            log._append({"format": FORMAT, "settings": log.settings})
        return log

    def _load(self) -> None:
        for batch in read_log(
            self.path, self._check_header, {"indices", "structures"}, "a batch of candidates"
        ):
            for index, structure in zip(batch["indices"], batch["structures"], strict=True):
                self.done[int(index)] = Structure.from_dict(structure)
            self.previous_sampling_s += float(batch.get("seconds", 0.0))

    def _check_header(self, header: dict[str, Any] | None) -> None:
        if header is None or header.get("format") != FORMAT:
            raise ValueError(
                f"{self.path} is not a kldm candidate log; move it away or choose another --out"
            )
        differences = setting_differences(header.get("settings", {}), self.settings)
        if differences:
            raise ValueError(
                f"{self.path} holds candidates sampled with other settings "
                f"({'; '.join(differences)}). Rerun with those settings to go on, or delete the "
                "file to start over"
            )

    def append(
        self, indices: Sequence[int], structures: Sequence[Structure], seconds: float
    ) -> None:
        """Record one finished batch (flushed and synced before returning)."""
        self._append(
            {
                "indices": [int(i) for i in indices],
                "structures": [s.as_dict() for s in structures],
                "seconds": seconds,
            }
        )

    def _append(self, entry: dict[str, Any]) -> None:
        append_line(self.path, entry)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_log(
    path: Path,
    check_header: Callable[[dict[str, Any] | None], None],
    required: set[str],
    what: str,
) -> list[dict[str, Any]]:
    """The entries of a JSON-lines log after its header (checked by ``check_header``, which
    raises). Every entry must hold the keys ``required``; a last line cut short by an
    interruption is dropped and cut from the file, so that the next append starts a new line;
    a bad line before it is an error naming ``what`` the line should be."""
    text = path.read_text()
    lines = text.splitlines()
    check_header(parse_line(lines[0]) if lines else None)
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        entry = parse_line(line)
        if entry is None or not required <= set(entry):
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not {what}")
            lines.pop()  # the last line, cut short by the interruption
            break
        entries.append(entry)
    if text != "\n".join(lines) + "\n":  # a torn or unterminated last line
        path.write_text("\n".join(lines) + "\n")
    return entries


def append_line(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line, flushed and synced to disk before returning."""
    with path.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def parse_line(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def setting_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: saved → current`` for every setting that changed."""
    names = sorted(set(saved) | set(current))
    return [
        f"{name}: {saved.get(name)!r} → {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]
