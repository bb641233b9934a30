"""Downloads from the Hub into the standard Hugging Face cache, and reading that cache offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kldm_cli.hub.connection import (
    COMMIT_HASH,
    HUB_TIMEOUT_S,
    hf_label,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    is_connection_error,
    is_server_error,
    short_error,
)
from kldm_cli.hub.folders import MODEL_FILES, ModelLoadError, is_complete_folder

Origin = Literal["local", "hub", "cache", "bundled"]


class HubUnreachableError(ModelLoadError):
    """The Hub could not be reached (no network, offline mode, time-out) and no copy was found."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A model folder ready for :func:`read_model_folder`, where it came from, and a notice.

    ``notice`` is a one-line message for the user when something unexpected was used (for example
    the bundled copy because the Hub was unreachable); ``None`` otherwise.
    """

    path: Path
    origin: Origin
    notice: str | None = None


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached copy of a Hub model folder, without any network access; ``None`` if not cached."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=True,
            allow_patterns=list(MODEL_FILES),
        )
    except (OSError, ValueError):  # LocalEntryNotFoundError, IncompleteSnapshotError, ...
        return None
    folder = Path(folder)
    return folder if is_complete_folder(folder) else None


def download_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Download a model folder from the Hub into the cache and return its path there.

    Raises :class:`HubUnreachableError` when the Hub cannot be reached (offline mode, no network,
    time-out, server error) and :class:`ModelLoadError` when it answers with an error (no such
    repository or revision, a file that cannot be fetched, an inconsistent download).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, label = hub_endpoint(), hf_label(repo_id, revision)
    if hub_offline():
        raise HubUnreachableError(f"{label}: HF_HUB_OFFLINE is set, so the Hub is not contacted")
    # One quick request first: huggingface_hub's own calls wait without limit on a silent network.
    try:
        HfApi(endpoint=endpoint).repo_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except RevisionNotFoundError as err:
        raise ModelLoadError(f"{label}: revision {revision!r} not found on {endpoint}") from err
    except RepositoryNotFoundError as err:
        raise ModelLoadError(
            f"{label}: no such model repository on {endpoint} (or it is private or gated: "
            "log in with `hf auth login`)"
        ) from err
    except Exception as err:
        if is_connection_error(err) or is_server_error(err):
            raise HubUnreachableError(
                f"cannot reach the Hub at {endpoint} ({short_error(err)})"
            ) from err
        if isinstance(err, HfHubHTTPError):
            raise ModelLoadError(
                f"{label}: the Hub at {endpoint} answered {short_error(err)}"
            ) from err
        raise
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            endpoint=endpoint,
            etag_timeout=HUB_TIMEOUT_S,
            allow_patterns=list(MODEL_FILES),
        )
    except RemoteEntryNotFoundError as err:
        missing = str(err.response.url).rsplit("/", 1)[-1] if err.response is not None else "?"
        raise ModelLoadError(f"{label}: {missing} is listed but not found on {endpoint}") from err
    except Exception as err:
        if is_connection_error(err):
            raise HubUnreachableError(
                f"lost the connection to the Hub at {endpoint} ({short_error(err)})"
            ) from err
        if isinstance(err, (OSError, HfHubHTTPError)):
            raise ModelLoadError(f"{label}: download failed ({short_error(err)})") from err
        raise
    return Path(folder)


def fetch_hub_weights(repo_id: str, revision: str | None = None) -> ResolvedWeights:
    """A Hub model folder: from the cache when the revision is a commit hash, else from the Hub.

    When the Hub cannot be reached, an earlier download of the same revision is used with a
    notice; otherwise :class:`HubUnreachableError` is raised.
    """
    if revision is not None and COMMIT_HASH.match(revision):
        cached = cached_snapshot(repo_id, revision)
        if cached is not None:
            return ResolvedWeights(cached, "cache")
    try:
        return ResolvedWeights(download_snapshot(repo_id, revision), "hub")
    except HubUnreachableError as err:
        cached = cached_snapshot(repo_id, revision)
        if cached is None:
            raise HubUnreachableError(
                f"{err}; {hf_label(repo_id, revision)} is not in the cache {hub_cache_dir()}"
            ) from err
        # Offline mode was asked for: using the cache is expected, not worth a notice.
        notice = None if hub_offline() else f"Hub unreachable; using the cached copy ({cached})"
        return ResolvedWeights(cached, "cache", notice)
