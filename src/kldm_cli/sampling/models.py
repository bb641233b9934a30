"""A model ready to sample, and what it can sample.

- :func:`load_model` — resolve ``--weights`` (folder, ``hf://``, release name) and rebuild the
  :class:`~kldm_cli.model.KLDM` from its ``config.json``, loading ``model.safetensors`` strictly;
- :func:`check_compositions` — refuse compositions the model cannot generate (unknown element,
  too many atoms), before anything is sampled;
- :func:`size_routed_releases` — the CSP releases ``kldm predict`` chooses from by cell size when
  no ``--weights`` is given (:func:`route_cell`: the smallest release whose ``max_atoms`` covers
  the cell).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kldm_cli.config import KLDMConfig
from kldm_cli.device import resolve_device
from kldm_cli.model import KLDM

if TYPE_CHECKING:
    from kldm_cli.hub.releases import Release


@dataclass
class LoadedModel:
    """A model in eval mode, where its weights came from, and a one-line notice for the user."""

    model: KLDM
    source: str  # where the weights came from (folder path or release)
    notice: str | None = None
    weights_sha256: str | None = None


def load_model(weights: str | None, task: str, device: str = "cpu") -> LoadedModel:
    """Resolve and load a model folder for ``task`` ("csp" or "dng"); ``weights=None`` is the
    task's default release."""
    from kldm_cli.data.readers import file_sha256
    from kldm_cli.hub import load_state_dict_strict, read_model_folder, resolve_weights

    resolved = resolve_weights(weights, task)
    config, state_dict = read_model_folder(resolved.path)
    if config.task != task:
        raise ValueError(
            f"the model in {resolved.path} was trained for {config.task.upper()}, "
            f"not {task.upper()}; pass a {task.upper()} model with --weights"
        )
    model = KLDM(config)
    load_state_dict_strict(model.network, state_dict, str(resolved.path / "model.safetensors"))
    model = model.to(resolve_device(device)).eval()
    weights_file = Path(resolved.path) / "model.safetensors"
    sha256 = file_sha256(weights_file) if weights_file.exists() else None
    return LoadedModel(model, str(resolved.path), resolved.notice, sha256)


def check_compositions(
    config: KLDMConfig, compositions: Iterable[Sequence[int]], label: str = "composition"
) -> None:
    """Refuse, with a one-line ``ValueError``, a composition (atomic numbers of one cell) the
    model cannot generate: an element it was never trained on, or more atoms than
    ``config.max_atoms``. Each distinct composition is checked once."""
    from pymatgen.core import Element

    for composition in {tuple(c) for c in compositions}:
        unknown = sorted(set(composition) - set(config.elements))
        if unknown:
            symbols = ", ".join(Element.from_Z(z).symbol for z in unknown)
            raise ValueError(
                f"{label} ({len(composition)} atoms): the model was never trained on {symbols}"
            )
        if len(composition) > config.max_atoms:
            raise ValueError(
                f"{label}: {len(composition)} atoms per cell, but the model was trained on "
                f"cells of at most {config.max_atoms} atoms"
            )


# ---------------------------------------------------------------------- routing by cell size
def size_routed_releases(task: str = "csp") -> list[Release]:
    """The releases chosen by cell size when ``--weights`` is not given, smallest cells first
    (:data:`kldm_cli.hub.SIZE_ROUTED_RELEASES`)."""
    from kldm_cli.hub import releases as hub

    names = hub.SIZE_ROUTED_RELEASES.get(task, ())
    return sorted((hub.RELEASES[name] for name in names), key=lambda release: release.max_atoms)


def route_cell(num_atoms: int, releases: Sequence[Release]) -> Release | None:
    """The smallest-cell release whose ``max_atoms`` covers a cell of ``num_atoms`` atoms, or
    ``None`` when none does (``releases`` sorted smallest first)."""
    return next((release for release in releases if num_atoms <= release.max_atoms), None)
