"""A small local stand-in for the Hugging Face Hub's HTTP API, for the --push_to_hub tests.

It speaks the part of the API that `huggingface_hub` uses to check a token and upload a
model: who-am-i (`GET /api/whoami-v2`), create a repository (`POST /api/repos/create`),
README metadata validation (`POST /api/validate-yaml`), pre-upload
(`POST /api/models/{repo}/preupload/{revision}`), commit
(`POST /api/models/{repo}/commit/{revision}`, NDJSON), and repository info. Every file
is answered as a "regular" (inline base64) upload, so no LFS or Xet storage is involved.

It listens on 127.0.0.1 only, on a free port, in a background thread; `stop()` shuts it
down. Everything it receives is kept for the tests: the repositories with their files and
commits, every request line, and every request body. `fail_commits` makes chosen commit
attempts (1-based) answer 500, to simulate a network failure mid-run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

MAX_BODY = 256 * 1024 * 1024
REPO_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    summary: str
    description: str
    files: dict  # path -> bytes added in this commit
    deleted: list


@dataclass
class Repo:
    repo_id: str
    visibility: str | None  # "private", "public", or None (not given)
    files: dict = field(default_factory=dict)  # path -> bytes, the head of main
    commits: list = field(default_factory=list)

    @property
    def head(self) -> str:
        return hashlib.sha1(f"{self.repo_id}:{len(self.commits)}".encode()).hexdigest()


@dataclass
class User:
    name: str
    orgs: tuple = ()
    role: str = "write"


class FakeHub:
    def __init__(self, users: dict[str, User]):
        self.users = users  # token -> user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bodies: list[bytes] = []
        self.unknown: list[tuple[str, str]] = []
        self.fail_commits: set[int] = set()
        self.commit_attempts = 0
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    # ------------------------------------------------------------------ what arrived

    def received_files(self) -> dict[str, bytes]:
        """Every file content ever committed, keyed by 'repo/path@commit-number'."""
        found = {}
        for repo in self.repos.values():
            for number, commit in enumerate(repo.commits, start=1):
                for path, data in commit.files.items():
                    found[f"{repo.repo_id}/{path}@{number}"] = data
        return found

    def commit_messages(self, repo_id: str) -> list[str]:
        return [commit.summary for commit in self.repos[repo_id].commits]

    # ------------------------------------------------------------------ the API

    def user_for(self, headers) -> User | None:
        auth = headers.get("Authorization") or ""
        return self.users.get(auth[len("Bearer ") :]) if auth.startswith("Bearer ") else None

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
            if body:
                self.bodies.append(body)
            if method == "GET" and path == "/api/whoami-v2":
                return self._whoami(headers)
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(body)
            if method == "POST" and path == "/api/repos/create":
                return self._create(headers, body)
            match = REPO_PATH.match(path)
            if match:
                repo = self.repos.get(match["repo"])
                rest = match["rest"] or ""
                user = self.user_for(headers)
                if repo is None or (repo.visibility == "private" and user is None):
                    return 404, {"error": "Repository not found"}
                if method == "GET" and (rest == "" or rest.startswith("/revision/")):
                    return 200, {
                        "id": repo.repo_id,
                        "sha": repo.head,
                        "private": repo.visibility == "private",
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                    }
                if user is None or not self._may_write(user, repo.repo_id):
                    return 401 if user is None else 403, {"error": "not allowed"}
                if method == "POST" and rest.startswith("/preupload/"):
                    return self._preupload(repo, body)
                if method == "POST" and rest.startswith("/commit/"):
                    return self._commit(repo, body)
            self.unknown.append((method, path))
            return 404, {"error": f"fake hub: no route for {method} {path}"}

    @staticmethod
    def _may_write(user: User, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return namespace == user.name or namespace in user.orgs

    def _whoami(self, headers):
        user = self.user_for(headers)
        if user is None:
            return 401, {"error": "Invalid credentials in Authorization header"}
        return 200, {
            "type": "user",
            "name": user.name,
            "orgs": [{"name": org} for org in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user.role}},
        }

    def _validate_yaml(self, body):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": str(error)}], "warnings": []}
        if match and not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _create(self, headers, body):
        user = self.user_for(headers)
        if user is None:
            return 401, {"error": "Invalid credentials"}
        if user.role == "read":
            return 403, {"error": "read-only token"}
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or user.name}/{payload['name']}"
        if not self._may_write(user, repo_id):
            return 403, {
                "error": f"You don't have the rights to create a model under the namespace {repo_id.split('/')[0]}"
            }
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = Repo(repo_id, payload.get("visibility"))
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _preupload(self, repo: Repo, body):
        files = json.loads(body)["files"]
        return 200, {
            "files": [
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(repo.files[item["path"]]) if item["path"] in repo.files else None,
                }
                for item in files
            ]
        }

    def _commit(self, repo: Repo, body):
        self.commit_attempts += 1
        if self.commit_attempts in self.fail_commits:
            return 500, {"error": f"fake hub: commit attempt {self.commit_attempts} fails on purpose"}
        header, added, deleted = None, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                added[value["path"]] = (
                    base64.b64decode(value["content"])
                    if value.get("encoding") == "base64"
                    else value["content"].encode()
                )
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return 400, {"error": f"fake hub: unsupported commit operation {key}"}
        if header is None:
            return 400, {"error": "fake hub: commit without header"}
        for path in deleted:
            for name in [p for p in repo.files if p == path or p.startswith(path.rstrip("/") + "/")]:
                del repo.files[name]
        repo.files.update(added)
        repo.commits.append(Commit(header["summary"], header.get("description", ""), added, deleted))
        return 200, {
            "success": True,
            "commitOid": repo.head,
            "commitUrl": f"{self.url}/{repo.repo_id}/commit/{repo.head}",
            "pullRequestUrl": None,
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub = None
    timeout = 30  # a stuck client cannot hold a handler thread forever

    def log_message(self, format, *args):  # quiet
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": "too large"})
            return
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        status, payload = self.fake.handle(method, path, self.headers, body)
        self._reply(status, payload)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")


def hub_env(endpoint: str, tmp_path, hf_token: str = "", stored: str | None = None, offline: str = "0") -> dict:
    """The environment of a script run against the fake hub at `endpoint`: its own HF_HOME under tmp_path
    (with a stored login token if `stored`), the token in HF_TOKEN."""
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    if stored is not None:
        (home / "token").write_text(stored)  # what `hf auth login` leaves behind
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": offline,
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_TOKEN": hf_token,
    }
