"""Where the Hub is (read from the Hugging Face environment variables each time, not at import)
and how its errors read: connection failures and server errors count as unreachable."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

#: Seconds to wait for the Hub before falling back to a cached or bundled copy.
HUB_TIMEOUT_S = 5.0
HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """Split ``hf://OWNER/REPO[@REVISION]`` into ``(repo_id, revision or None)``."""
    body = spec[len(HF_SCHEME) :] if spec.startswith(HF_SCHEME) else spec
    repo_id, _, revision = body.partition("@")
    if (
        not REPO_ID.match(repo_id)
        or ("@" in spec and not revision)
        or any(c.isspace() for c in revision)
    ):
        raise ValueError(f"invalid Hub model {spec!r}; expected hf://OWNER/REPO[@REVISION]")
    return repo_id, revision or None


def hf_label(repo_id: str, revision: str | None) -> str:
    return f"{HF_SCHEME}{repo_id}" + (f"@{revision}" if revision else "")


def error_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level error classes of whichever HTTP client huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # incl. offline mode
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def is_connection_error(err: BaseException) -> bool:
    transport = transport_errors()
    return any(isinstance(e, transport) for e in error_chain(err))


def is_server_error(err: BaseException) -> bool:
    """An HTTP 5xx answer: the Hub is down, which counts as unreachable."""
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(err, "response", None)
    return isinstance(err, HfHubHTTPError) and getattr(response, "status_code", 0) >= 500


def short_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
