"""A local stand-in for the Hugging Face Hub, enough for ``snapshot_download``/``hf_hub_download``.

Serves, on 127.0.0.1 and an ephemeral port, the endpoints huggingface_hub 2.x calls:

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (``oid``, ``size``, ``lfs`` for
  LFS-tracked files), one page;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}``: ``X-Repo-Commit`` always; ``ETag`` (git blob
  sha1) for regular files, ``X-Linked-Etag``/``X-Linked-Size`` (sha256) for LFS files, as the
  Hub does; 404 with ``X-Error-Code: EntryNotFound``/``RepoNotFound``/``RevisionNotFound``.

Faults for tests: ``missing`` files are listed but answer 404; ``short_reads`` files announce
their full size but send fewer bytes. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors",)
_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+))?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str
    missing: set[str] = field(default_factory=set)
    short_reads: dict[str, int] = field(default_factory=dict)
    aliases: set[str] = field(default_factory=lambda: {"main"})

    def resolves(self, revision: str) -> bool:
        return revision == self.sha or revision in self.aliases


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Start with ``start()`` (or as a context manager); always ``stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], **faults: object) -> str:
        """Publish ``files`` as ``repo_id``; returns the commit hash (also reachable as "main")."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        sha = digest.hexdigest()
        self.repos[repo_id] = FakeRepo(dict(files), sha, **faults)  # type: ignore[arg-type]
        return sha

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(
                1 for m, p in self.requests if (method is None or m == method) and contains in p
            )

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                hub._handle(self, send_body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, send_body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------- routing
    def _handle(self, request: BaseHTTPRequestHandler, send_body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.requests.append((request.command, path))
        if match := _API.match(path):
            repo = self._repo(request, match["repo"], match["rev"] or "main")
            if repo is None:
                return
            if match["kind"] in ("revision", None):
                siblings = [{"rfilename": name} for name in sorted(repo.files)]
                info = {"id": match["repo"], "sha": repo.sha, "siblings": siblings, "tags": []}
                self._send(request, 200, json.dumps(info).encode(), send_body, {})
            else:
                self._send(request, 200, json.dumps(self._tree(repo)).encode(), send_body, {})
            return
        if match := _RESOLVE.match(path):
            repo = self._repo(request, match["repo"], match["rev"])
            if repo is None:
                return
            name = match["file"]
            commit = {"X-Repo-Commit": repo.sha}
            if name not in repo.files or name in repo.missing:
                self._error(request, 404, "EntryNotFound", commit)
                return
            data = repo.files[name]
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                headers = {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"'}
                headers["X-Linked-Size"] = str(len(data))
            else:
                headers = {"ETag": f'"{git_blob_sha1(data)}"'}
            if request.command == "GET" and name in repo.short_reads:
                data = data[: repo.short_reads[name]]
            self._send(request, 200, data, send_body, {**commit, **headers})
            return
        self._error(request, 404, "RepoNotFound", {})

    def _repo(self, request: BaseHTTPRequestHandler, repo_id: str, rev: str) -> FakeRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", {})
        elif not repo.resolves(rev):
            self._error(request, 404, "RevisionNotFound", {})
        else:
            return repo
        return None

    @staticmethod
    def _tree(repo: FakeRepo) -> list[dict[str, object]]:
        entries = []
        for name, data in sorted(repo.files.items()):
            entry: dict[str, object] = {
                "type": "file",
                "path": name,
                "size": len(data),
                "oid": git_blob_sha1(data),
            }
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return entries

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        send_body: bool,
        headers: dict[str, str],
    ) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if send_body:
            request.wfile.write(body)

    @classmethod
    def _error(
        cls, request: BaseHTTPRequestHandler, status: int, code: str, headers: dict[str, str]
    ) -> None:
        body = json.dumps({"error": code}).encode()
        send_body = request.command != "HEAD"
        cls._send(request, status, body, send_body, {**headers, "X-Error-Code": code})
