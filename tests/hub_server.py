"""
A local Hugging Face Hub-compatible HTTP endpoint for tests (stdlib `http.server` + threading, 127.0.0.1 only).

`LocalHub` implements the subset of the Hub HTTP API that huggingface_hub 2.4 (`create_repo`, `upload_folder` /
`create_commit`, `repo_info`, `list_repo_tree`, `hf_hub_download`, `snapshot_download`) and transformers'
`from_pretrained` (with `trust_remote_code`) call, for model repositories:

    POST /api/repos/create                               create_repo: {"url"}; 409 when it exists
    POST /api/validate-yaml                              README.md metadata check: always valid
    POST /api/models/{repo_id}/preupload/{revision}      every file "regular" (content inline: no LFS, no Xet),
                                                         with the git oid of the file already there (unchanged
                                                         files are then skipped by the client, as on the Hub)
    POST /api/models/{repo_id}/commit/{revision}         ndjson commit: header, file (base64), deletedFile,
                                                         deletedFolder; `parentCommit` checked (412)
    GET  /api/models/{repo_id}[/revision/{revision}]     model_info / repo_info: id, sha, private, siblings
    GET  /api/models/{repo_id}/tree/{revision}[/{path}]  list_repo_tree (recursive or not, one page)
    HEAD|GET /{repo_id}/resolve/{revision}/{path}        file metadata / content: X-Repo-Commit, ETag (git blob
                                                         sha1), Content-Length

Errors carry the Hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so that
huggingface_hub raises the same exception types as against the real Hub (and transformers falls back cleanly
for optional files). Not implemented: LFS / Xet transfers, pull requests, branches other than `main`, tags,
auth beyond "writes must carry the server's token", datasets and spaces. Any other request is answered 404
and recorded in `LocalHub.unhandled`, so a test can assert that the clients needed nothing more.

Storage: `<root>/<namespace>/<name>/<commit sha>/` holds a full snapshot of every commit, `refs/main` the head.
Commit shas are 40-hex sha1s of (parent, commit number, payload): new for every commit, reproducible between
runs that push the same content.

`local_hub` (pytest fixture) starts a server, points huggingface_hub at it (`HF_ENDPOINT` and the constants read
at import time), turns offline mode off and refuses every connection that is not to the loopback interface.
`subprocess_env` gives the same for a child process (train.py, a clean loader), with its own `HF_HOME`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["LocalHub", "git_blob_sha1", "install_network_guard", "local_hub", "read_blocked_log", "subprocess_env"]

DEFAULT_USER = "xmodal-tester"
TEST_TOKEN = "hf_xmodal_local_test_token"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid` / ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubError(Exception):
    """An HTTP error answer with the Hub's `X-Error-Code` header."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.body = status, code, message, commit, body


class LocalHub:
    """
    A threaded Hub-compatible HTTP server on 127.0.0.1 (free port) storing repositories under `root`.

    Attributes:
        endpoint: `http://127.0.0.1:<port>`, the value for `HF_ENDPOINT`.
        requests: `(method, path, status)` of every request, in order.
        unhandled: requests that matched no route (should stay empty).
        errors: malformed requests answered 400 (should stay empty).
        blocked: connections / lookups to other hosts refused by `install_network_guard` (should stay empty).
    """

    def __init__(self, root: str | os.PathLike, token: str | None = TEST_TOKEN, user: str = DEFAULT_USER):
        self.root, self.token, self.user = Path(root), token, user
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._commit_count = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length

            def do_GET(self):
                hub._dispatch(self)

            do_HEAD = do_POST = do_GET

            def log_message(self, format, *args):  # quiet: requests are recorded in `hub.requests`
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ------------------------------------------------------------------ storage (also the tests' view)

    def _repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    def head(self, repo_id: str) -> str:
        """The commit sha `main` points to (RepoNotFound when the repository does not exist)."""
        ref = self._repo_dir(repo_id) / "refs" / "main"
        if not ref.is_file():
            raise _HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        return ref.read_text()

    def resolve(self, repo_id: str, revision: str = "main") -> tuple[str, Path]:
        """`(commit sha, snapshot folder)` of `revision`: `main` or a full commit sha."""
        head = self.head(repo_id)
        sha = head if revision == "main" else revision
        snapshot = self._repo_dir(repo_id) / sha
        if len(sha) != 40 or not snapshot.is_dir():
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, snapshot

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of the repository at `revision`, by path in the repository."""
        _, snapshot = self.resolve(repo_id, revision)
        return {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in sorted(snapshot.rglob("*")) if p.is_file()}

    def commits(self, repo_id: str) -> list[dict]:
        """Commit log, oldest first: `{"sha", "parent", "summary"}`."""
        log = self._repo_dir(repo_id) / "commits.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()]

    def _commit(self, repo_id: str, parent: str | None, summary: str, payload: bytes, apply: Callable[[Path], None]):
        """A new snapshot: copy of `parent`, changed by `apply`; `main` moves to it."""
        self._commit_count += 1
        sha = hashlib.sha1(f"{repo_id}\n{parent}\n{self._commit_count}\n".encode() + payload).hexdigest()
        repo = self._repo_dir(repo_id)
        snapshot = repo / sha
        if parent is None:
            snapshot.mkdir(parents=True)
        else:
            shutil.copytree(repo / parent, snapshot)
        try:
            apply(snapshot)
        except BaseException:
            shutil.rmtree(snapshot)  # a failed commit leaves no trace
            raise
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        with open(repo / "commits.jsonl", "a") as log:
            log.write(json.dumps({"sha": sha, "parent": parent, "summary": summary}) + "\n")
        return sha

    # ------------------------------------------------------------------ HTTP plumbing

    def _dispatch(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        method = request.command
        try:
            if any(part in (".", "..") for part in parts):
                raise _HubError(400, None, f"invalid path {url.path!r}")
            if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and method == "POST":
                self._check_token(request)
                return self._create_repo(request, json.loads(body))
            if parts[:2] == ["api", "validate-yaml"] and method == "POST":
                return self._send(request, 200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 3:
                # `{namespace}/{name}`; a bare `{name}` (no namespace) is never a repository here, as on the Hub
                n = 3 if len(parts) > 3 and parts[3] in ("revision", "tree", "preupload", "commit") else 4
                repo_id, action, rest = "/".join(parts[2:n]), parts[n] if len(parts) > n else None, parts[n + 1 :]
                if action is None and method == "GET":
                    return self._model_info(request, repo_id, "main", query)
                if action == "revision" and len(rest) == 1 and method == "GET":
                    return self._model_info(request, repo_id, rest[0], query)
                if action == "tree" and rest and method == "GET":
                    return self._tree(request, repo_id, rest[0], "/".join(rest[1:]), query)
                if action == "preupload" and len(rest) == 1 and method == "POST":
                    self._check_token(request)
                    return self._preupload(request, repo_id, rest[0], json.loads(body), query)
                if action == "commit" and len(rest) == 1 and method == "POST":
                    self._check_token(request)
                    return self._commit_ndjson(request, repo_id, rest[0], body, query)
            if "resolve" in parts[1:3] and method in ("GET", "HEAD"):
                n = parts.index("resolve", 1)
                if len(parts) >= n + 3:
                    return self._resolve(request, "/".join(parts[:n]), parts[n + 1], "/".join(parts[n + 2 :]))
            if url.path == "/api/agent-harnesses":
                # huggingface_hub's user-agent helper tolerates its absence; a registry served here would be
                # cached for a day in the user's HF_HOME, so answer like an endpoint without this API.
                raise _HubError(404, None, "no agent harnesses registry on LocalHub")
            self.unhandled.append((method, url.path))
            raise _HubError(404, None, f"LocalHub does not implement {method} {url.path}")
        except (KeyError, TypeError, ValueError) as error:  # a malformed request: 400 (5xx would be retried)
            self.errors.append(f"{method} {url.path}: {error!r}")
            self._send(request, 400, {"error": f"malformed request: {error!r}"})
        except _HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self._send(request, error.status, {"error": error.message, **error.body}, headers)

    def _send(self, request: BaseHTTPRequestHandler, status: int, body: bytes | dict | list, headers=None) -> None:
        # every answer has a Content-Length (HTTP/1.1 keep-alive); HEAD gets the headers only
        self.requests.append((request.command, urlsplit(request.path).path, status))
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _check_token(self, request: BaseHTTPRequestHandler) -> None:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _HubError(401, None, "Invalid credentials in Authorization header")

    # ------------------------------------------------------------------ routes

    def _create_repo(self, request, payload: dict) -> None:
        if payload.get("type", "model") != "model":
            raise _HubError(400, None, "LocalHub serves model repositories only")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if not re.fullmatch(r"[\w-]+/[\w][\w.-]*", repo_id):
            raise _HubError(400, None, f"invalid repository name {repo_id!r}")
        with self._lock:
            if (self._repo_dir(repo_id) / "refs" / "main").is_file():
                # create_repo(exist_ok=True) reads the url from this answer, as from the Hub's
                raise _HubError(409, None, "You already created this model repo", url=f"{self.endpoint}/{repo_id}")
            self._commit(repo_id, None, "initial commit", b"", lambda snapshot: None)
            meta = {"private": payload.get("visibility", "public") != "public"}
            (self._repo_dir(repo_id) / "repo.json").write_text(json.dumps(meta))
        self._send(request, 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _model_info(self, request, repo_id: str, revision: str, query: dict) -> None:
        sha, snapshot = self.resolve(repo_id, revision)
        files = self.files(repo_id, sha)
        meta = json.loads((self._repo_dir(repo_id) / "repo.json").read_text())
        siblings = [{"rfilename": p, "size": len(c), "blobId": git_blob_sha1(c)} for p, c in files.items()]
        info = {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha, "tags": [],
                "private": meta["private"], "siblings": siblings}  # fmt: skip
        self._send(request, 200, info)

    def _tree(self, request, repo_id: str, revision: str, path: str, query: dict) -> None:
        sha, snapshot = self.resolve(repo_id, revision)
        base = snapshot / path
        if not base.is_dir():
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=sha)
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries = []
        for entry in sorted(base.rglob("*") if recursive else base.iterdir()):
            rel = entry.relative_to(snapshot).as_posix()
            if entry.is_dir():
                oid = hashlib.sha1(rel.encode()).hexdigest()  # any stable id: clients only carry it along
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": rel})
            else:
                content = entry.read_bytes()
                entries.append({"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": rel})
        self._send(request, 200, entries)

    def _preupload(self, request, repo_id: str, revision: str, payload: dict, query: dict) -> None:
        if query.get("create_pr"):
            raise _HubError(400, None, "LocalHub does not implement pull requests")
        sha, snapshot = self.resolve(repo_id, revision)
        answers = []
        for file in payload["files"]:
            existing = snapshot / file["path"]
            oid = git_blob_sha1(existing.read_bytes()) if existing.is_file() else None
            answers.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._send(request, 200, {"files": answers, "commitOid": sha})

    def _commit_ndjson(self, request, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        if query.get("create_pr"):
            raise _HubError(400, None, "LocalHub does not implement pull requests")
        if revision != "main":
            raise _HubError(404, "RevisionNotFound", f"LocalHub commits to main only, not {revision!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, None, "commit payload must start with a header line")
        header, operations = lines[0]["value"], lines[1:]
        for op in operations:
            if op["key"] not in ("file", "deletedFile", "deletedFolder"):
                raise _HubError(400, None, f"LocalHub does not accept {op['key']!r} operations (no LFS / Xet)")
            if op["key"] == "file" and op["value"].get("encoding") != "base64":
                raise _HubError(400, None, f"{op['value']['path']}: only base64 content is accepted")
            if any(part in ("", ".", "..") for part in op["value"]["path"].split("/")):
                raise _HubError(400, None, f"invalid path in repo {op['value']['path']!r}")

        def apply(snapshot: Path) -> None:
            for op in operations:
                target = snapshot / op["value"]["path"]
                if op["key"] == "file":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(op["value"]["content"]))
                elif op["key"] == "deletedFile":
                    if not target.is_file():
                        raise _HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                    target.unlink()
                else:
                    shutil.rmtree(target, ignore_errors=True)

        with self._lock:
            parent = self.head(repo_id)
            if header.get("parentCommit") not in (None, parent):
                raise _HubError(412, None, "A commit has happened since. Please refresh and try again.")
            sha = self._commit(repo_id, parent, header.get("summary", ""), body, apply)
        url = f"{self.endpoint}/{repo_id}/commit/{sha}"
        self._send(request, 200, {"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": ""})

    def _resolve(self, request, repo_id: str, revision: str, path: str) -> None:
        sha, snapshot = self.resolve(repo_id, revision)
        target = snapshot / path
        if not target.is_file():
            raise _HubError(404, "EntryNotFound", f"Entry not found: {path}", commit=sha)
        content = target.read_bytes()
        etag = f'"{git_blob_sha1(content)}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "Content-Type": "application/octet-stream"}
        self._send(request, 200, content, headers)


# ---------------------------------------------------------------------- no network but 127.0.0.1


def _is_loopback(host) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def install_network_guard(record: Callable[[str], None]) -> Callable[[], None]:
    """
    Refuses (OSError) and records every name lookup or connection to a host that is not the loopback interface.

    Covers Python-level sockets (httpx, requests, urllib); returns a function that removes the guard.
    """
    original_connect, original_connect_ex, original_getaddrinfo = (
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    )  # fmt: skip

    def check(address, what: str) -> None:
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            record(f"{what} {address[0]}:{address[1]}")
            raise OSError(f"network disabled in tests: {what} to {address[0]} refused (only 127.0.0.1 is allowed)")

    def connect(sock, address):
        check(address, "connect")
        return original_connect(sock, address)

    def connect_ex(sock, address):
        check(address, "connect")
        return original_connect_ex(sock, address)

    def getaddrinfo(host, port, *args, **kwargs):
        check((host.decode() if isinstance(host, bytes) else host, port), "getaddrinfo")
        return original_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

    def remove() -> None:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
            original_connect, original_connect_ex, original_getaddrinfo
        )  # fmt: skip

    return remove


# Loaded by a child Python process through PYTHONPATH: the same guard, recording refused hosts in a file.
_SITECUSTOMIZE = """\
import importlib.util, os
_spec = importlib.util.spec_from_file_location("_xmodal_hub_server", {path!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
def _record(line, _log=os.environ["XMODAL_BLOCKED_LOG"]):
    with open(_log, "a") as f:
        f.write(line + "\\n")
_module.install_network_guard(_record)
"""


def subprocess_env(hub: LocalHub, workdir: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
    """
    Environment for a child process that must talk to `hub` and nothing else: `HF_ENDPOINT`, online, the hub's
    token, a private `HF_HOME` under `workdir`, and the network guard, installed by a `sitecustomize.py` put first
    on `PYTHONPATH` (this venv has none of its own); refused hosts go to `<workdir>/blocked.log`, see
    `read_blocked_log`.
    """
    workdir = Path(workdir)
    guard_dir = workdir / "network_guard"
    guard_dir.mkdir(parents=True, exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(path=str(Path(__file__).resolve())))
    env = dict(os.environ if base is None else base)
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(workdir / "hf_home"),
        HF_TOKEN=hub.token or "",
        NO_PROXY="127.0.0.1,localhost",
        XMODAL_BLOCKED_LOG=str(workdir / "blocked.log"),
        PYTHONPATH=os.pathsep.join([str(guard_dir), *filter(None, [env.get("PYTHONPATH")])]),
    )
    return env


def read_blocked_log(workdir: str | os.PathLike) -> list[str]:
    """Hosts a child process started with `subprocess_env(hub, workdir)` tried to reach (should be empty)."""
    log = Path(workdir) / "blocked.log"
    return log.read_text().splitlines() if log.is_file() else []


@pytest.fixture
def local_hub(tmp_path, monkeypatch) -> Iterator[LocalHub]:
    """A running `LocalHub` that huggingface_hub (and transformers) in this process talk to, with the network off."""
    from huggingface_hub import constants

    with LocalHub(tmp_path / "local_hub") as hub:
        # huggingface_hub reads these at import time (and conftest.py made the session offline): patch both.
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", hub.token or "")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet"))  # hf_xet's logs (it starts with upload_folder)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        remove_guard = install_network_guard(hub.blocked.append)
        try:
            yield hub
        finally:
            remove_guard()
    assert not hub.blocked, f"connections to other hosts than 127.0.0.1 were attempted: {hub.blocked}"
