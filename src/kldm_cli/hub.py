"""Model folders, safetensors weights and the Hugging Face Hub.

A *model folder* is what ``kldm train`` writes and what a Hub model repository holds, unchanged::

    model.safetensors   the network's weights (safetensors only; nothing is ever unpickled)
    config.json         a :class:`~kldm_cli.config.KLDMConfig`; the model is rebuilt from it
    README.md           the model card: task, data, training, measured metrics, limitations

:func:`resolve_weights` turns what the user passed to ``--weights`` into such a folder: a local
path, ``hf://OWNER/REPO[@REVISION]`` (downloaded into the standard Hugging Face cache), or the name
of a release in :data:`RELEASES` (a Hub repository pinned at a revision, with an offline copy
bundled in ``weights/<name>/``). :func:`read_model_folder` reads a folder with checks that name
the offending file, and :func:`load_state_dict_strict` refuses any partial load.
:func:`push_model_folder` is the way back: it checks a model folder and uploads it to a Hub
repository in one commit, whose hash pins the ``hf://`` reference it returns.

The Hub's environment variables (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_TOKEN``, ``HF_TOKEN_PATH``) are read each time a function here runs, not
when ``huggingface_hub`` is imported, and passed to it explicitly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kldm_cli.config import KLDMConfig

if TYPE_CHECKING:  # torch is imported only where tensors are handled: `kldm weights` starts fast
    import torch
    from torch import Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: The files of a model folder; only these are downloaded from a Hub repository.
MODEL_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
#: Seconds to wait for the Hub before falling back to a cached or bundled copy.
HUB_TIMEOUT_S = 5.0
HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Largest safetensors header accepted (the format's own limit is 100 MB).
_MAX_HEADER_BYTES = 100_000_000
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

Origin = Literal["local", "hub", "cache", "bundled"]


class ModelLoadError(ValueError):
    """A model folder or its weights could not be obtained or read; the message names the file."""


class HubUnreachableError(ModelLoadError):
    """The Hub could not be reached (no network, offline mode, time-out) and no copy was found."""


class HubPushError(ValueError):
    """An upload to the Hub was refused or failed; the message says what the Hub now holds."""


@dataclass(frozen=True)
class Release:
    """A published model: a Hub repository pinned at ``revision``, bundled in ``weights/<name>``."""

    name: str
    task: str
    repo_id: str
    revision: str
    description: str


#: Published models. ``revision`` should be the commit hash of the upload (a tag until then).
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release(
            "kldm-csp-mp20", "csp", "kldm-project/kldm-csp-mp20", "v0.1.0",
            "CSP on MP-20 (≤ 20 atoms)",
        ),
        Release(
            "kldm-dng-mp20", "dng", "kldm-project/kldm-dng-mp20", "v0.1.0",
            "DNG on MP-20 (≤ 20 atoms)",
        ),
        Release(
            "kldm-csp-perov5", "csp", "kldm-project/kldm-csp-perov5", "v0.1.0",
            "CSP on Perov-5 (5-atom perovskites)",
        ),
    )
}  # fmt: skip
#: The release used when ``--weights`` is not given, per task.
DEFAULT_RELEASES: dict[str, str] = {"csp": "kldm-csp-mp20", "dng": "kldm-dng-mp20"}


@dataclass(frozen=True)
class ResolvedWeights:
    """A model folder ready for :func:`read_model_folder`, where it came from, and a notice.

    ``notice`` is a one-line message for the user when something unexpected was used (for example
    the bundled copy because the Hub was unreachable); ``None`` otherwise.
    """

    path: Path
    origin: Origin
    notice: str | None = None


# ------------------------------------------------------------------------------ model folders
def write_model_folder(
    out_dir: str | Path, state_dict: Mapping[str, Tensor], config: KLDMConfig, card: str
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``out_dir``.

    Each file is written to a temporary name in ``out_dir`` and renamed, so a reader never sees a
    half-written file. Tensors are saved detached, contiguous and on the CPU. Returns ``out_dir``.
    """
    if not isinstance(config, KLDMConfig):
        raise TypeError(f"config must be a KLDMConfig, got {type(config).__name__}")
    if not state_dict:
        raise ValueError("state_dict is empty: nothing to save")
    import torch

    bad = [name for name, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict entries that are not tensors: {bad[:5]}")
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share memory (tied or sliced parameters).
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state_dict.items()}
    with _atomic_path(out / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(save(tensors, metadata={"format": "pt"}))
    with _atomic_path(out / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    with _atomic_path(out / CARD_NAME) as tmp:
        tmp.write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")
    return out


@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is synced and renamed to it."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_model_folder(path: str | Path) -> tuple[KLDMConfig, dict[str, Tensor]]:
    """Read a model folder: its config and its weights (``{name: tensor}`` on the CPU).

    Raises :class:`ModelLoadError` naming the file when the folder or a file is missing, the
    weights are truncated or not safetensors, or ``config.json`` is not JSON, not a kldm config,
    or from a newer kldm.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a model folder (expected a directory)")
    weights_path, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for required in (weights_path, config_path):
        if not required.is_file():
            raise ModelLoadError(
                f"{required}: missing; a model folder holds {WEIGHTS_NAME} and {CONFIG_NAME}"
            )
    config = _read_config(config_path)
    return config, read_safetensors(weights_path)


def _read_config(path: Path) -> KLDMConfig:
    try:
        return KLDMConfig.load(path)
    except (ValueError, AttributeError, OSError) as err:
        # KLDMConfig.load raises ValueError for non-JSON, non-config and newer-format files;
        # AttributeError when the JSON is not an object.
        message = str(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        raise ModelLoadError(message) from err


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file after checking its header; errors name the file."""
    from safetensors.torch import load_file

    path = Path(path)
    _check_safetensors_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise ModelLoadError(f"{path}: corrupt safetensors file ({err})") from err
    if not tensors:
        raise ModelLoadError(f"{path}: contains no tensors")
    return tensors


def _check_safetensors_header(path: Path) -> None:
    """Verify the 8-byte header length, the JSON header and that every tensor's bytes exist."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len == 0 or header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise ModelLoadError(
                f"{path}: truncated or not a safetensors file (header of {header_len} bytes "
                f"announced, file has {size} bytes)"
            )
        raw_header = handle.read(header_len)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_bytes = size - 8 - header_len
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise ModelLoadError(f"{path}: corrupt safetensors header (tensor {name!r})")
        needed = max(needed, offsets[1])
    if needed > data_bytes:
        raise ModelLoadError(
            f"{path}: truncated: its tensors need {needed} bytes of data, the file has {data_bytes}"
        )


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str
) -> None:
    """Load ``state_dict`` into ``module``; a missing, unexpected or mis-shaped tensor is an error.

    ``source`` (a file or release name) is named in the error, which lists the first few
    offending tensor names. Nothing is loaded unless everything matches.
    """
    expected = module.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    mismatched = [
        f"{name} {list(state_dict[name].shape)} (model expects {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    problems = [
        f"{len(items)} {label}: {', '.join(items[:5])}{', …' if len(items) > 5 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", mismatched),
        )
        if items
    ]
    if problems:
        raise ModelLoadError(
            f"{source}: weights do not fit the model built from its config.json; tensors "
            + "; ".join(problems)
        )
    module.load_state_dict(dict(state_dict), strict=True)


# ------------------------------------------------------------------------------ model cards
def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card (``README.md`` or its folder); ``{}`` if none.

    kldm's own keys are ``task``, ``kldm_metrics`` (a mapping of headline metric -> value) and
    ``kldm_metrics_command`` (the command that measured them); see ``weights/README.md``.
    """
    from huggingface_hub import metadata_load

    card = Path(path)
    if card.is_dir():
        card = card / CARD_NAME
    if not card.is_file():
        return {}
    try:
        return metadata_load(card) or {}
    except Exception as err:  # yaml.YAMLError, ValueError (front matter is not a mapping)
        raise ModelLoadError(f"{card}: unreadable YAML front matter ({err})") from err


def card_metrics(path: str | Path) -> dict[str, Any]:
    """The ``kldm_metrics`` block of a model card, ``{}`` when absent."""
    metrics = read_card_metadata(path).get("kldm_metrics")
    return dict(metrics) if isinstance(metrics, dict) else {}


# ------------------------------------------------------------------------------ environment
def hub_endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` if set, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_home() -> Path:
    """``HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """The Hugging Face cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    return hf_home() / "hub"


def hub_token() -> str | None:
    """The user's Hub token: ``HF_TOKEN``, else the login cache (``hf auth login``), else None.

    The same order as huggingface_hub's ``get_token``: ``HF_TOKEN`` (or the older
    ``HUGGING_FACE_HUB_TOKEN``), then the file ``HF_TOKEN_PATH`` or ``$HF_HOME/token``.
    """
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(name) or "").strip()
        if value:
            return value
    token_path = os.environ.get("HF_TOKEN_PATH")
    path = Path(os.path.expandvars(token_path)).expanduser() if token_path else hf_home() / "token"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value or None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE_VALUES


# ------------------------------------------------------------------------------ bundled copies
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
    return folder if _is_complete(folder) else None


def _is_complete(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()


# ------------------------------------------------------------------------------ the Hub
def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """Split ``hf://OWNER/REPO[@REVISION]`` into ``(repo_id, revision or None)``."""
    body = spec[len(HF_SCHEME) :] if spec.startswith(HF_SCHEME) else spec
    repo_id, _, revision = body.partition("@")
    if (
        not _REPO_ID.match(repo_id)
        or ("@" in spec and not revision)
        or any(c.isspace() for c in revision)
    ):
        raise ValueError(f"invalid Hub model {spec!r}; expected hf://OWNER/REPO[@REVISION]")
    return repo_id, revision or None


def _hf_label(repo_id: str, revision: str | None) -> str:
    return f"{HF_SCHEME}{repo_id}" + (f"@{revision}" if revision else "")


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
    return folder if _is_complete(folder) else None


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

    endpoint, label = hub_endpoint(), _hf_label(repo_id, revision)
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
        if _is_connection_error(err) or _is_server_error(err):
            raise HubUnreachableError(
                f"cannot reach the Hub at {endpoint} ({_short(err)})"
            ) from err
        if isinstance(err, HfHubHTTPError):
            raise ModelLoadError(f"{label}: the Hub at {endpoint} answered {_short(err)}") from err
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
        if _is_connection_error(err):
            raise HubUnreachableError(
                f"lost the connection to the Hub at {endpoint} ({_short(err)})"
            ) from err
        if isinstance(err, (OSError, HfHubHTTPError)):
            raise ModelLoadError(f"{label}: download failed ({_short(err)})") from err
        raise
    return Path(folder)


def _error_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level error classes of whichever HTTP client huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # incl. offline mode
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _is_connection_error(err: BaseException) -> bool:
    transport = _transport_errors()
    return any(isinstance(e, transport) for e in _error_chain(err))


def _is_server_error(err: BaseException) -> bool:
    """An HTTP 5xx answer: the Hub is down, which counts as unreachable."""
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(err, "response", None)
    return isinstance(err, HfHubHTTPError) and getattr(response, "status_code", 0) >= 500


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def fetch_hub_weights(repo_id: str, revision: str | None = None) -> ResolvedWeights:
    """A Hub model folder: from the cache when the revision is a commit hash, else from the Hub.

    When the Hub cannot be reached, an earlier download of the same revision is used with a
    notice; otherwise :class:`HubUnreachableError` is raised.
    """
    if revision is not None and _COMMIT_HASH.match(revision):
        cached = cached_snapshot(repo_id, revision)
        if cached is not None:
            return ResolvedWeights(cached, "cache")
    try:
        return ResolvedWeights(download_snapshot(repo_id, revision), "hub")
    except HubUnreachableError as err:
        cached = cached_snapshot(repo_id, revision)
        if cached is None:
            raise HubUnreachableError(
                f"{err}; {_hf_label(repo_id, revision)} is not in the cache {hub_cache_dir()}"
            ) from err
        # Offline mode was asked for: using the cache is expected, not worth a notice.
        notice = None if hub_offline() else f"Hub unreachable; using the cached copy ({cached})"
        return ResolvedWeights(cached, "cache", notice)


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


def get_release(name: str) -> Release:
    """The release called ``name``; a ``ValueError`` lists the known ones."""
    if name not in RELEASES:
        raise ValueError(f"Unknown release {name!r}; known releases: {', '.join(RELEASES)}")
    return RELEASES[name]


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


# ------------------------------------------------------------------------------ listing
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


# ------------------------------------------------------------------------------ pushing
#: Files of a training run that are never uploaded (resumable state, logs, plots, best/).
_RUN_FILES_NOT_PUSHED = "checkpoint.safetensors, train_log.jsonl, training_curves.png, best/"


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_model_folder` did.

    ``commit`` is the commit that holds the model folder (``unchanged``: the branch already held
    these exact files, so no new commit was made); ``reference`` is ``hf://OWNER/REPO@commit``.
    ``notices`` are one-line messages for the user (a card written, files left behind, ...).
    """

    repo_id: str
    branch: str
    commit: str
    created: bool
    unchanged: bool
    url: str
    notices: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return _hf_label(self.repo_id, self.commit)


def check_model_folder(path: str | Path) -> KLDMConfig:
    """Check that a model folder loads: ``config.json`` builds a model, ``model.safetensors``
    fits it strictly (every tensor present, none extra, right shapes, all finite), and the card's
    front matter, if there is a card, is readable YAML naming the same task.

    Returns the config; raises :class:`ModelLoadError` naming the offending file.
    """
    import torch

    from kldm_cli.model import KLDM

    folder = Path(path)
    config, state_dict = read_model_folder(folder)
    weights = str(folder / WEIGHTS_NAME)
    try:
        model = KLDM(config)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: cannot build the model ({err})") from err
    load_state_dict_strict(model.network, state_dict, weights)
    not_finite = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if not_finite:
        raise ModelLoadError(f"{weights}: NaN or infinite values in {', '.join(not_finite[:5])}")
    card_task = read_card_metadata(folder).get("task")
    if card_task is not None and card_task != config.task:
        raise ModelLoadError(
            f"{folder / CARD_NAME}: the card says task {card_task!r}, config.json {config.task!r}"
        )
    return config


def write_missing_card(folder: str | Path, config: KLDMConfig) -> Path | None:
    """Write ``README.md`` from the run's metadata when the folder has none; returns its path.

    The card is :func:`kldm_cli.training.model_card` of ``config`` (task, data and its sha256 from
    ``provenance``, network) and of the last step/epoch in ``train_log.jsonl`` if there is one.
    Returns ``None`` (and writes nothing) when a card exists.
    """
    from kldm_cli.training import LOG_NAME, model_card, read_training_log

    folder = Path(folder)
    card_path = folder / CARD_NAME
    if card_path.exists():
        return None
    summary: dict[str, Any] = {}
    log = folder / LOG_NAME
    records = read_training_log(log) if log.is_file() else []
    if records:
        summary = {"steps": records[-1]["step"], "epochs": records[-1].get("epoch", "?")}
    card = model_card(config, summary)
    try:
        with _atomic_path(card_path) as tmp:
            tmp.write_text(card, encoding="utf-8")
    except OSError as err:
        raise ModelLoadError(f"{card_path}: missing, and it cannot be written ({err})") from err
    return card_path


def push_model_folder(
    folder: str | Path,
    destination: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> PushResult:
    """Check a model folder and upload it to ``destination`` (``hf://OWNER/REPO``) in one commit.

    In order: the folder is checked (:func:`check_model_folder`; a missing card is written, see
    :func:`write_missing_card`), nothing is sent when that fails; the token is looked up
    (:func:`hub_token`); the repository is created if it does not exist (``private`` applies
    only then) and the branch ``revision`` (default ``main``) too; a copy of the three model
    files, checked again, is committed with huggingface_hub's ``create_commit`` on top of the
    branch head seen before. Only ``model.safetensors``, ``config.json`` and ``README.md`` are
    uploaded, never checkpoints, optimizer state or logs.

    A commit is atomic on the Hub: when the upload fails, the error says whether the branch is
    unchanged (nothing committed) or could not be checked. Raises :class:`HubPushError`.
    """
    repo_id, pinned = parse_hf_spec(destination)
    if pinned is not None:
        raise ValueError(
            f"{destination}: push to hf://{repo_id} (a branch goes in --revision); the commit "
            "to pin is printed after the upload"
        )
    if revision is not None and (not revision.strip() or _COMMIT_HASH.match(revision)):
        raise ValueError(f"--revision {revision!r}: give a branch name to commit to")
    source = Path(folder)
    config = check_model_folder(source)
    notices = []
    if (card := write_missing_card(source, config)) is not None:
        notices.append(f"{card}: was missing; written from config.json and the training log")
        check_model_folder(source)
    left_behind = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in source.iterdir()
        if entry.name not in MODEL_FILES and not entry.name.startswith(".")
    )
    if left_behind:
        notices.append(f"not uploaded (not part of a model folder): {', '.join(left_behind)}")

    token = hub_token()
    if token is None:
        raise HubPushError(
            f"{_hf_label(repo_id, None)}: no Hugging Face token; set HF_TOKEN or run "
            "`hf auth login` with a token that has write access (nothing was uploaded)"
        )
    if hub_offline():
        raise HubPushError("HF_HUB_OFFLINE is set, so nothing was uploaded; unset it to push")

    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    with tempfile.TemporaryDirectory(prefix="kldm-push-") as tmp:
        staged = Path(tmp)
        for name in MODEL_FILES:  # upload exactly the bytes that were checked
            shutil.copyfile(source / name, staged / name)
        check_model_folder(staged)
        head, created, is_private = _prepare_branch(api, repo_id, branch, private)
        if private and not created and not is_private:
            notices.append(f"{repo_id} already exists and is public: --private applies only to new")
        operations = [CommitOperationAdd(name, str(staged / name)) for name in MODEL_FILES]
        summary = message or f"Upload kldm {config.task.upper()} model with `kldm weights push`"
        try:
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=summary,
                revision=branch,
                parent_commit=head,
            )
        except Exception as err:
            failure = _failed_commit(api, repo_id, branch, head, created, err)
            if failure is None:
                raise
            raise failure from err
    commit = str(info.oid)
    return PushResult(
        repo_id=repo_id,
        branch=branch,
        commit=commit,
        created=created,
        unchanged=commit == head,
        url=f"{endpoint}/{repo_id}/tree/{commit}",
        notices=tuple(notices),
    )


def _prepare_branch(api: Any, repo_id: str, branch: str, private: bool) -> tuple[str, bool, bool]:
    """Make sure ``repo_id`` and its ``branch`` exist; ``(branch head, created, private)``."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    label = _hf_label(repo_id, None)
    created = False
    try:
        try:
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
        except RevisionNotFoundError:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=private, exist_ok=True)
            created = True
            if branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
    except Exception as err:
        reason = _push_reason(err, api.endpoint, label)
        if reason is None:
            raise
        raise HubPushError(f"{reason}; nothing was uploaded") from err
    return str(info.sha), created, bool(info.private)


def _failed_commit(
    api: Any, repo_id: str, branch: str, head: str, created: bool, err: BaseException
) -> HubPushError | None:
    """The error for a commit that failed, saying what the branch holds now (``None``: the
    error is not the Hub's and is raised as it is)."""
    label = _hf_label(repo_id, None)
    reason = _push_reason(err, api.endpoint, label)
    if reason is None:
        return None
    status = getattr(getattr(err, "response", None), "status_code", 0)
    transient = _is_connection_error(err) or status >= 500
    commits_url = f"{api.endpoint}/{repo_id}/commits/{branch}"
    try:
        now = str(api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S).sha)
    except Exception:
        now = None
    if now == head:
        state = f"nothing was committed: branch {branch} is unchanged at {head[:12]}"
        if created:
            state += f" (the empty repository {repo_id} created by this push is left in place)"
        if transient:
            state += "; run the same command again"
    elif now is None:
        state = f"the upload may be incomplete and the Hub could not be asked; see {commits_url}"
    else:
        state = (
            f"branch {branch} moved from {head[:12]} to {now[:12]} meanwhile; see {commits_url} "
            "before pushing again"
        )
    return HubPushError(f"upload failed: {reason}; {state}")


def _push_reason(err: BaseException, endpoint: str, label: str) -> str | None:
    """A one-line reason for a failed Hub call, or ``None`` for an error that is not the Hub's."""
    from huggingface_hub.errors import HfHubHTTPError

    if _is_connection_error(err):
        return f"cannot reach the Hub at {endpoint} ({_short(err)})"
    if not isinstance(err, HfHubHTTPError):
        return None
    status = getattr(err.response, "status_code", 0)
    if status == 401:
        return (
            f"the Hub at {endpoint} rejected the token (401 Unauthorized); set a valid HF_TOKEN "
            "or run `hf auth login`"
        )
    if status == 403:
        return (
            f"{label}: this token may not write there (403 Forbidden); push to your own "
            "namespace, ask the owner for write access, or use a token with write permission"
        )
    if status == 412:
        return f"{label}: the branch changed while uploading (412 Precondition Failed)"
    if status >= 500:
        return f"the Hub at {endpoint} failed ({status}: {_short(err)})"
    return f"{label}: the Hub at {endpoint} answered {_short(err)}"
