"""A tiny in-memory Hugging Face Hub for tests: enough of the HTTP API for huggingface_hub 2.4 to create a repo,
upload a folder and a model card, and for `from_pretrained(repo_id)` to download it back.

Routes (what the real client calls; see huggingface_hub/hf_api.py, _commit_api.py, file_download.py):

- `POST /api/repos/create` (create_repo)                       → {"url", "name", "id"}
- `POST /api/validate-yaml` (ModelCard.push_to_hub)           → {"errors": [], "warnings": []}
- `POST /api/models/{repo}/preupload/{rev}`                     → every file "regular" (base64 in the commit, so no
                                                                   LFS / xet transfer is ever negotiated)
- `POST /api/models/{repo}/commit/{rev}` (ndjson: header, file, deletedFile, deletedFolder) → {"commitUrl", "commitOid"}
- `GET  /api/models/{repo}[/revision/{rev}]` (model_info)       → id, sha, siblings
- `GET  /api/models/{repo}/tree/{rev}[/{path}]` (list_repo_tree) → file entries, 404 EntryNotFound for no folder
- `HEAD|GET /{repo}/resolve/{rev}/{path}` (hf_hub_download)     → the bytes, with X-Repo-Commit / ETag headers

Threads are bounded (a semaphore), bodies are size-capped, and the server shuts itself down after `lifetime_s`.
Use it as a context manager: `with FakeHub() as hub: ... hub.endpoint ...`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

MAX_BODY_BYTES = 256 * 1024 * 1024
_REPO = r"(?P<repo>[^/]+/[^/]+)"


class _Repo:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.sha = hashlib.sha1(b"init").hexdigest()
        self.commits: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # quiet
        return

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        if not self.server.slots.acquire(timeout=30):
            self._error(503, "Busy", "too many concurrent requests")
            return
        try:
            self.server.requests.append((method, self.path))
            self._route(method, unquote(urlparse(self.path).path))
        except Exception as error:  # report, never hang the client
            self._error(500, "ServerError", repr(error))
        finally:
            self.server.slots.release()

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # ------------------------------------------------------------------ routes
    def _route(self, method: str, path: str) -> None:
        hub = self.server
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(self._body() or b"{}")
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            with hub.lock:
                hub.repos.setdefault(repo_id, _Repo())
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})
            return
        if method == "POST" and path == "/api/validate-yaml":
            self._body()
            self._json(200, {"errors": [], "warnings": []})
            return
        if m := re.fullmatch(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            files = json.loads(self._body())["files"]
            self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})
            return
        if m := re.fullmatch(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            self._commit(m["repo"], repo, self._body())
            return
        if m := re.fullmatch(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            prefix = (m["sub"] or "").strip("/")
            entries = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for p, b in sorted(repo.files.items()) if not prefix or p.startswith(prefix + "/")]
            if prefix and not entries:
                self._error(404, "EntryNotFound", f"{prefix} does not exist")
                return
            self._json(200, entries)
            return
        if m := re.fullmatch(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            self._json(200, {"id": m["repo"], "modelId": m["repo"], "sha": repo.sha, "private": False,
                             "siblings": [{"rfilename": p} for p in sorted(repo.files)], "tags": []})
            return
        if m := re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            head = method == "HEAD"
            repo = self._repo(m["repo"], head=head)
            if repo is None:
                return
            content = repo.files.get(m["file"])
            if content is None:
                self._error(404, "EntryNotFound", f"{m['file']} not found", head=head)
                return
            etag = '"' + hashlib.sha256(content).hexdigest() + '"'
            self._send(200, content, {"X-Repo-Commit": repo.sha, "ETag": etag,
                                      "Content-Type": "application/octet-stream"}, head=head)
            return
        self._error(404, "NotFound", f"no route for {method} {path}", head=method == "HEAD")

    def _repo(self, repo_id: str, head: bool = False) -> _Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
        return repo

    def _commit(self, repo_id: str, repo: _Repo, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        with self.server.lock:
            files = dict(repo.files)
            summary = ""
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    self._error(400, "BadRequest", f"unsupported commit operation {key!r} (LFS is not emulated)")
                    return
            repo.files = files
            repo.sha = hashlib.sha1(f"{repo.sha}{time.time_ns()}{summary}".encode()).hexdigest()
            repo.commits.append({"summary": summary, "files": sorted(p for i in lines if i["key"] == "file"
                                                                     for p in [i["value"]["path"]])})
        self._json(200, {"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha,
                         "success": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, max_threads: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, _Repo] = {}
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_threads)
        self.requests: list[tuple[str, str]] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class FakeHub:
    """Context manager running the fake Hub in a background thread; stops on exit or after `lifetime_s`."""

    def __init__(self, lifetime_s: float = 600, max_threads: int = 16):
        self.server = _Server(max_threads)
        self.endpoint = self.server.endpoint
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def repos(self) -> dict[str, _Repo]:
        return self.server.repos

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.server.requests

    def start(self) -> FakeHub:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual use: python tests/hub_server.py → prints the endpoint, serves 10 minutes
    with FakeHub() as hub:
        print(hub.endpoint, flush=True)
        time.sleep(600)
