"""A loopback HTTP server speaking enough of the Hugging Face and CivitAI download APIs for huggingface_hub
and the known_models plugin: resolve URLs with checksum headers and ranges, repo info and trees, CivitAI
model versions and redirected downloads. It records every request so tests can count downloads."""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class HubFile:
    content: bytes
    lfs: bool = True
    # What the hub claims the file's SHA-256 is; the real one unless a test wants a mismatch.
    claimed_sha256: Optional[str] = None
    # Drop the connection after this many bytes, for this many GETs.
    cut_after: Optional[int] = None
    cuts_left: int = 0
    # Seconds to pause after each chunk, so concurrent requests overlap.
    delay: float = 0.0

    @property
    def etag(self) -> str:
        if not self.lfs:
            return git_blob_id(self.content)
        return self.claimed_sha256 or sha256(self.content)


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = field(default_factory=lambda: secrets.token_hex(20))
    # When set, requests need "Authorization: Bearer <token>": none gets 401, a wrong one 403.
    token: Optional[str] = None


@dataclass
class CivitaiVersion:
    model_id: int
    file_name: str
    file: HubFile
    token: Optional[str] = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: Optional[str]
    authorization: Optional[str]


class FakeHub:
    """Start with ``with FakeHub() as hub``; ``hub.url`` is its address."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.civitai: dict[int, CivitaiVersion] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def add_repo(self, repo_id: str, files: dict[str, HubFile], token: Optional[str] = None) -> HubRepo:
        repo = HubRepo(files, token=token)
        self.repos[repo_id] = repo
        return repo

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def gets(self, path_end: str) -> list[Request]:
        """The GET requests whose path ends with ``path_end`` (file downloads, say)."""
        with self._lock:
            return [request for request in self.requests if request.method == "GET" and request.path.endswith(path_end)]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._dispatch(send_body=False)

        def do_GET(self) -> None:
            self._dispatch(send_body=True)

        def _dispatch(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.record(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
            if path.startswith("/api/models/"):
                self._repo_api(path[len("/api/models/"):])
            elif path.startswith("/api/v1/model-versions/"):
                self._civitai_version(int(path.rsplit("/", 1)[1]))
            elif path.startswith("/api/download/models/"):
                version_id = int(path.rsplit("/", 1)[1])
                version = hub.civitai.get(version_id)
                if version is None:
                    self._reply(404, b"no such version")
                elif self._authorized(version.token):
                    # CivitAI sends downloads to a signed storage URL.
                    self._reply(307, b"", {"Location": f"/storage/{version_id}/{version.file_name}"})
            elif path.startswith("/storage/"):
                version = hub.civitai[int(path.split("/")[2])]
                self._send_file(version.file, {}, send_body)
            elif "/resolve/" in path:
                self._resolve(path, send_body)
            else:
                self._reply(404, b"not found")

        def _authorized(self, token: Optional[str], hf_errors: bool = False) -> bool:
            if token is None:
                return True
            given = self.headers.get("Authorization")
            if given == f"Bearer {token}":
                return True
            headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."} \
                if hf_errors else {}
            self._reply(401 if given is None else 403, b"gated", headers)
            return False

        def _resolve(self, path: str, send_body: bool) -> None:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            _revision, _, filename = rest.partition("/")
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._reply(404, b"no such repo", {"X-Error-Code": "RepoNotFound"})
                return
            if not self._authorized(repo.token, hf_errors=True):
                return
            file = repo.files.get(filename)
            if file is None:
                self._reply(404, b"no such file", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
                return
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{file.etag}"'}
            if file.lfs:
                headers.update({"X-Linked-Etag": f'"{file.etag}"', "X-Linked-Size": str(len(file.content))})
            self._send_file(file, headers, send_body)

        def _send_file(self, file: HubFile, headers: dict[str, str], send_body: bool) -> None:
            content, start, status = file.content, 0, 200
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes=") and send_body:
                start = int(requested[len("bytes="):].split("-")[0])
                if start >= len(content):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            body = content[start:]
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body)), "Accept-Ranges": "bytes"}.items():
                self.send_header(name, value)
            self.end_headers()
            if not send_body:
                return
            with hub._lock:
                cut = file.cut_after if file.cuts_left > 0 else None
                if cut is not None:
                    file.cuts_left -= 1
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            for offset in range(0, len(body), 4096):
                self.wfile.write(body[offset:offset + 4096])
                if file.delay:
                    time.sleep(file.delay)

        def _repo_api(self, rest: str) -> None:
            # <owner>/<name>/revision/<rev>  or  <owner>/<name>/tree/<rev>[/<path>]
            parts = rest.split("/")
            repo_id, kind = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._reply(404, b"no such repo", {"X-Error-Code": "RepoNotFound"})
                return
            if not self._authorized(repo.token, hf_errors=True):
                return
            if kind == "revision":
                body = {"id": repo_id, "sha": repo.commit, "private": False,
                        "siblings": [{"rfilename": name} for name in repo.files]}
            elif kind == "tree":
                body = [{"type": "file", "path": name, "size": len(file.content), "oid": git_blob_id(file.content),
                         **({"lfs": {"oid": file.etag, "size": len(file.content), "pointerSize": 134}}
                            if file.lfs else {})}
                        for name, file in repo.files.items()]
            else:
                self._reply(404, b"unknown api")
                return
            self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _civitai_version(self, version_id: int) -> None:
            version = hub.civitai.get(version_id)
            if version is None:
                self._reply(404, b'{"error": "No model version"}', {"Content-Type": "application/json"})
                return
            file = version.file
            body = {"id": version_id, "modelId": version.model_id, "files": [{
                "name": version.file_name, "sizeKB": len(file.content) / 1024, "primary": True, "type": "Model",
                "hashes": {"SHA256": (file.claimed_sha256 or sha256(file.content)).upper()},
                "downloadUrl": f"{hub.url}/api/download/models/{version_id}"}]}
            self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _reply(self, status: int, body: bytes, headers: Optional[dict[str, str]] = None) -> None:
            self.send_response(status)
            for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
