"""A local stand-in for the Hugging Face Hub: downloads, and uploads through ``create_commit``.

Serves, on 127.0.0.1 and an ephemeral port, the endpoints huggingface_hub 2.x calls to download
(``snapshot_download``/``hf_hub_download``):

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (``oid``, ``size``, ``lfs`` for
  LFS-tracked files), one page;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}``: ``X-Repo-Commit`` always; ``ETag`` (git blob
  sha1) for regular files, ``X-Linked-Etag``/``X-Linked-Size`` (sha256) for LFS files, as the
  Hub does; 404 with ``X-Error-Code: EntryNotFound``/``RepoNotFound``/``RevisionNotFound``.

and to upload (``create_repo``, ``create_branch``, ``create_commit``):

- ``POST /api/repos/create``: 401 without a known token, 403 outside the token's namespaces, 409
  when the repository exists;
- ``POST /api/validate-yaml``: accepts any card; ``GET /api/whoami-v2``: the token's user;
- ``POST /api/models/{repo}/branch/{branch}``: a branch from ``main`` (409 if it exists);
- ``POST /api/models/{repo}/preupload/{rev}``: every file ``regular`` (sent inline in the commit),
  with the ``oid`` of the file already there, so that unchanged files are skipped. The real Hub
  answers ``lfs`` for large and binary files, which huggingface_hub then sends through Xet/LFS:
  that transfer is huggingface_hub's own code and is not served here;
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit, applied atomically (a new commit on
  the branch; earlier commits stay resolvable by hash); 412 when ``parentCommit`` is not the head.

Writing needs ``Authorization: Bearer TOKEN`` for a token in ``tokens`` (token -> user name),
into a repository owned by that user or one of ``orgs[user]``; a private repository is invisible
(404) to anyone else, as on the Hub.

Faults for tests: ``missing`` files are listed but answer 404; ``short_reads`` files announce
their full size but send fewer bytes; ``commit_fault`` makes the next commits fail (an HTTP status,
or ``"drop"`` to close the connection without an answer). Every request is recorded in
``requests`` and every applied commit in ``commits``.
"""

from __future__ import annotations

import base64
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
_WRITE = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>preupload|commit|branch)/(?P<rev>[^/]+)$"
)


@dataclass
class FakeRepo:
    """A repository: ``files`` at commit ``sha``, the head of ``main``; earlier commits in
    ``snapshots`` (commit -> files), other branches in ``branches`` (name -> commit)."""

    files: dict[str, bytes]
    sha: str
    missing: set[str] = field(default_factory=set)
    short_reads: dict[str, int] = field(default_factory=dict)
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.branches.setdefault("main", self.sha)
        self.snapshots.setdefault(self.sha, self.files)

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """``(commit, files)`` of a branch name or commit hash, ``None`` if unknown."""
        commit = self.branches.get(revision, revision)
        files = self.snapshots.get(commit)
        return None if files is None else (commit, files)

    def resolves(self, revision: str) -> bool:
        return self.resolve(revision) is not None


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Start with ``start()`` (or as a context manager); always ``stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        #: Write access: token -> user name; user name -> organisations it may write to.
        self.tokens: dict[str, str] = {}
        self.orgs: dict[str, set[str]] = {}
        #: Applied commits: (repo_id, branch, commit, summary, paths committed).
        self.commits: list[tuple[str, str, str, str, list[str]]] = []
        #: Fault: an HTTP status the commit endpoint answers, or "drop" to close the connection.
        self.commit_fault: int | str | None = None
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

    def add_user(self, name: str, token: str, orgs: tuple[str, ...] = ()) -> None:
        """A user who may write to ``name/*`` and ``org/*`` for each of ``orgs``."""
        self.tokens[token] = name
        self.orgs[name] = set(orgs)

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        resolved = self.repos[repo_id].resolve(revision)
        assert resolved is not None, f"{repo_id}@{revision} does not exist"
        return dict(resolved[1])

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

            def do_POST(self) -> None:  # noqa: N802
                hub._handle_post(self)

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
            found = self._repo(request, match["repo"], match["rev"] or "main")
            if found is None:
                return
            repo, commit, files = found
            if match["kind"] in ("revision", None):
                siblings = [{"rfilename": name} for name in sorted(files)]
                info = {
                    "id": match["repo"], "sha": commit, "siblings": siblings, "tags": [],
                    "private": repo.private,
                }  # fmt: skip
                self._send(request, 200, json.dumps(info).encode(), send_body, {})
            else:
                self._send(request, 200, json.dumps(self._tree(files)).encode(), send_body, {})
            return
        if match := _RESOLVE.match(path):
            found = self._repo(request, match["repo"], match["rev"])
            if found is None:
                return
            repo, sha, files = found
            name = match["file"]
            commit = {"X-Repo-Commit": sha}
            if name not in files or name in repo.missing:
                self._error(request, 404, "EntryNotFound", commit)
                return
            data = files[name]
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
        if path == "/api/whoami-v2":
            user = self._user(request)
            if user is None:
                self._error(request, 401, "Unauthorized", {})
            else:
                body = json.dumps({"type": "user", "name": user, "orgs": []}).encode()
                self._send(request, 200, body, send_body, {})
            return
        self._error(request, 404, "RepoNotFound", {})

    def _repo(
        self, request: BaseHTTPRequestHandler, repo_id: str, rev: str
    ) -> tuple[FakeRepo, str, dict[str, bytes]] | None:
        """The repository and ``(commit, files)`` at ``rev``, or answer 404 and return ``None``."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._may_write(request, repo_id)):
            self._error(request, 404, "RepoNotFound", {})
            return None
        resolved = repo.resolve(rev)
        if resolved is None:
            self._error(request, 404, "RevisionNotFound", {})
            return None
        return (repo, *resolved)

    # -------------------------------------------------------------------------- uploads
    def _user(self, request: BaseHTTPRequestHandler) -> str | None:
        auth = request.headers.get("Authorization") or ""
        return self.tokens.get(auth.removeprefix("Bearer ").strip()) if auth else None

    def _may_write(self, request: BaseHTTPRequestHandler, repo_id: str) -> bool:
        user = self._user(request)
        owner = repo_id.split("/")[0]
        return user is not None and (owner == user or owner in self.orgs.get(user, set()))

    def _handle_post(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.requests.append(("POST", path))
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if path == "/api/validate-yaml":
            self._json(request, 200, {"errors": [], "warnings": []})
            return
        if self._user(request) is None:
            self._error(request, 401, "Unauthorized", {})
            return
        if path == "/api/repos/create":
            self._create_repo(request, json.loads(body))
            return
        match = _WRITE.match(path)
        if match is None:
            self._error(request, 404, "RepoNotFound", {})
            return
        repo_id, kind, rev = match["repo"], match["kind"], match["rev"]
        found = self._repo(request, repo_id, "main" if kind == "branch" else rev)
        if found is None:
            return
        repo, head, files = found
        if not self._may_write(request, repo_id):
            self._error(request, 403, "Forbidden", {})
        elif kind == "branch":
            if rev in repo.branches:
                self._error(request, 409, "Conflict", {})
            else:
                with self._lock:
                    repo.branches[rev] = head
                self._json(request, 200, {})
        elif kind == "preupload":
            answer = [
                {
                    "path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                    "oid": git_blob_sha1(files[entry["path"]]) if entry["path"] in files else None,
                }
                for entry in json.loads(body)["files"]
            ]  # fmt: skip
            self._json(request, 200, {"files": answer})
        else:
            self._commit(request, repo_id, repo, rev, head, body)

    def _create_repo(self, request: BaseHTTPRequestHandler, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or self._user(request)}/{payload['name']}"
        if not self._may_write(request, repo_id):
            self._error(request, 403, "Forbidden", {})
            return
        if repo_id in self.repos:
            self._error(request, 409, "Conflict", {})
            return
        sha = self.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"})
        self.repos[repo_id].private = payload.get("visibility") == "private" or bool(
            payload.get("private")
        )
        self._json(request, 200, {"url": f"{self.url}/{repo_id}", "sha": sha})

    def _commit(
        self,
        request: BaseHTTPRequestHandler,
        repo_id: str,
        repo: FakeRepo,
        branch: str,
        head: str,
        body: bytes,
    ) -> None:
        if self.commit_fault == "drop":
            request.close_connection = True
            request.connection.shutdown(2)  # no answer at all
            return
        if isinstance(self.commit_fault, int):
            self._error(request, self.commit_fault, "CommitFailed", {})
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if header.get("parentCommit") not in (None, head):
            self._error(request, 412, "PreconditionFailed", {})
            return
        files = dict(repo.snapshots[head])
        paths = []
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                paths.append(line["value"]["path"])
            elif line["key"] == "deletedFile":
                files.pop(line["value"]["path"], None)
            elif line["key"] != "header":
                self._error(request, 400, "UnsupportedOperation", {})
                return
        digest = hashlib.sha1(f"{repo_id}@{head}:{header['summary']}".encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        sha = digest.hexdigest()
        with self._lock:
            repo.snapshots[sha] = files
            repo.branches[branch] = sha
            if branch == "main":
                repo.files, repo.sha = files, sha
            self.commits.append((repo_id, branch, sha, header["summary"], paths))
        url = f"{self.url}/{repo_id}/commit/{sha}"
        self._json(request, 200, {"success": True, "commitOid": sha, "commitUrl": url})

    @classmethod
    def _json(cls, request: BaseHTTPRequestHandler, status: int, payload: object) -> None:
        cls._send(request, status, json.dumps(payload).encode(), True, {})

    @staticmethod
    def _tree(files: dict[str, bytes]) -> list[dict[str, object]]:
        entries = []
        for name, data in sorted(files.items()):
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
