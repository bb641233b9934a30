"""The published models (:data:`RELEASES`), their bundled copies in ``weights/``, and turning a
``--weights`` value (a folder, ``hf://OWNER/REPO[@REVISION]`` or a release name) into a model
folder."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kldm_cli.hub.connection import HF_SCHEME, hub_offline, parse_hf_spec
from kldm_cli.hub.download import (
    HubUnreachableError,
    ResolvedWeights,
    cached_snapshot,
    download_snapshot,
    fetch_hub_weights,
)
from kldm_cli.hub.folders import WEIGHTS_NAME, ModelLoadError, card_metrics, is_complete_folder


@dataclass(frozen=True)
class Release:
    """A published model: a Hub repository pinned at ``revision``, bundled in ``weights/<name>``.

    ``max_atoms`` is the largest cell (atoms) the model was trained on, as in its
    ``config.json``; ``kldm predict`` routes a cell by it (:data:`SIZE_ROUTED_RELEASES`).
    """

    name: str
    task: str
    repo_id: str
    revision: str
    description: str
    max_atoms: int


#: Published models. ``revision`` should be the commit hash of the upload (a tag until then).
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release(
            "kldm-csp-mp20", "csp", "kldm-project/kldm-csp-mp20", "v0.1.0",
            "CSP on MP-20 (≤ 20 atoms)", max_atoms=20,
        ),
        Release(
            "kldm-dng-mp20", "dng", "kldm-project/kldm-dng-mp20", "v0.1.0",
            "DNG on MP-20 (≤ 20 atoms)", max_atoms=20,
        ),
        Release(
            "kldm-csp-perov5", "csp", "kldm-project/kldm-csp-perov5", "v0.1.0",
            "CSP on Perov-5 (5-atom perovskites)", max_atoms=5,
        ),
    )
}  # fmt: skip
#: The release used when ``--weights`` is not given, per task.
DEFAULT_RELEASES: dict[str, str] = {"csp": "kldm-csp-mp20", "dng": "kldm-dng-mp20"}
#: The releases ``kldm predict`` chooses from by cell size when ``--weights`` is not given: the
#: smallest ``max_atoms`` that covers the cell (a larger-cell release joins here when it ships).
SIZE_ROUTED_RELEASES: dict[str, tuple[str, ...]] = {"csp": ("kldm-csp-mp20",)}


def bundled_weights_dir() -> Path:
    """The folder of bundled release copies (``weights/`` of the source tree).

    A regular install maps ``weights/`` to the package ``kldm_cli.bundled_weights``; a source
    checkout or an editable install reads ``weights/`` beside ``src/``. The folder may not exist.
    """
    try:
        spec = importlib.util.find_spec("kldm_cli.bundled_weights")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    import kldm_cli

    package_dir = Path(kldm_cli.__file__).resolve().parent
    checkout = package_dir.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    return package_dir / "bundled_weights"


def bundled_release_dir(name: str) -> Path | None:
    """The bundled copy of release ``name`` if it is a complete model folder, else ``None``."""
    folder = bundled_weights_dir() / name
    return folder if is_complete_folder(folder) else None


def get_release(name: str) -> Release:
    """The release called ``name``; a ``ValueError`` lists the known ones."""
    if name not in RELEASES:
        raise ValueError(f"Unknown release {name!r}; known releases: {', '.join(RELEASES)}")
    return RELEASES[name]


def fetch_release(name: str, *, allow_bundled: bool = True) -> ResolvedWeights:
    """A release's model folder: the cache, else the Hub, else (offline) the bundled copy."""
    release = get_release(name)
    cached = cached_snapshot(release.repo_id, release.revision)
    if cached is not None:
        return ResolvedWeights(cached, "cache")
    try:
        return ResolvedWeights(download_snapshot(release.repo_id, release.revision), "hub")
    except ModelLoadError as err:
        bundled = bundled_release_dir(name) if allow_bundled else None
        if bundled is not None:
            if hub_offline():
                reason = "HF_HUB_OFFLINE is set"
            elif isinstance(err, HubUnreachableError):
                reason = "Hub unreachable"
            else:
                reason = f"Hub download failed ({str(err)[:160]})"
            notice = f"{reason}; using bundled {name} ({bundled})"
            return ResolvedWeights(bundled, "bundled", notice)
        hint = (
            f"no bundled copy in {bundled_weights_dir() / name}; run `kldm weights download "
            f"{name}` where the Hub is reachable, or pass --weights FOLDER"
            if allow_bundled
            else "nothing was downloaded"
        )
        raise type(err)(f"release {name}: {err}; {hint}") from err


def resolve_weights(spec: str | None, task: str) -> ResolvedWeights:
    """Turn a ``--weights`` value into a model folder for ``task`` ("csp" or "dng").

    ``spec`` is a local model folder, ``hf://OWNER/REPO[@REVISION]``, a release name from
    :data:`RELEASES`, or ``None`` for the task's default release. Raises ``ValueError`` for an
    unknown release or a path that does not exist, :class:`ModelLoadError` when the weights
    cannot be obtained. The folder's contents are checked by :func:`read_model_folder`.
    """
    if task not in DEFAULT_RELEASES:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(DEFAULT_RELEASES)}")
    if spec is None:
        spec = DEFAULT_RELEASES[task]
    if spec.startswith(HF_SCHEME):
        return fetch_hub_weights(*parse_hf_spec(spec))
    if spec in RELEASES:
        release = RELEASES[spec]
        if release.task != task:
            fitting = [r.name for r in RELEASES.values() if r.task == task]
            raise ValueError(
                f"release {spec} is a {release.task.upper()} model; {task.upper()} needs one of: "
                + ", ".join(fitting)
            )
        return fetch_release(spec)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return ResolvedWeights(folder, "local")
    if folder.exists():
        raise ValueError(f"{spec!r} is a file; pass the model folder that holds {WEIGHTS_NAME}")
    raise ValueError(
        f"{spec!r} is neither an existing model folder nor a known release; known releases: "
        f"{', '.join(RELEASES)} (or hf://OWNER/REPO[@REVISION])"
    )


def download_weights(spec: str) -> ResolvedWeights:
    """Download a release or ``hf://`` model into the Hugging Face cache (no bundled fallback).

    A release already in the cache is not downloaded again (``origin == "cache"``).
    """
    if spec.startswith(HF_SCHEME):
        repo_id, revision = parse_hf_spec(spec)
        return ResolvedWeights(download_snapshot(repo_id, revision), "hub")
    return fetch_release(spec, allow_bundled=False)


@dataclass(frozen=True)
class ReleaseStatus:
    """What is known locally about a release, without network access (for ``kldm weights list``)."""

    release: Release
    is_default: bool
    cached_path: Path | None
    bundled_path: Path | None
    size_bytes: int | None
    metrics: dict[str, Any]


def release_statuses() -> list[ReleaseStatus]:
    """Every release with its cached/bundled copies, weight size and headline metrics."""
    statuses = []
    for release in RELEASES.values():
        cached = cached_snapshot(release.repo_id, release.revision)
        bundled = bundled_release_dir(release.name)
        local = cached or bundled
        try:
            metrics = card_metrics(local) if local is not None else {}
        except ModelLoadError:
            metrics = {}
        statuses.append(
            ReleaseStatus(
                release=release,
                is_default=DEFAULT_RELEASES.get(release.task) == release.name,
                cached_path=cached,
                bundled_path=bundled,
                size_bytes=(local / WEIGHTS_NAME).stat().st_size if local is not None else None,
                metrics=metrics,
            )
        )
    return statuses
