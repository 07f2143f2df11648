"""GitLab REST API v4 emulator: state, routes and the HTTP server thread.

Behaviour follows GitLab's API documentation (17.x): PRIVATE-TOKEN / Bearer auth with scopes,
admin-only endpoints answering 403, objects found by id or URL-encoded full path (404 otherwise),
validation errors as 400 with GitLab's `message` shapes, 409 for taken user names and existing
protected branches, X-Total/X-Page/Link pagination headers, personal access token expiry,
revocation and rotation (replaying a rotated, revoked token revokes its whole family), runners
created with `POST /user/runners` returning a `glrt-` token once.

Only what bidsflux uses is served; anything else answers 404 like an unknown GitLab route, so a
test notices when code starts calling something the emulator does not know."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

ACCESS_LEVELS = {0: "No access", 30: "Developers + Maintainers", 40: "Maintainers", 60: "Admins"}
SCOPES = {"api", "read_api", "read_user", "read_repository", "write_repository", "read_registry",
          "write_registry", "sudo", "admin_mode", "create_runner", "manage_runner", "k8s_proxy",
          "ai_features", "self_rotate"}
# GitLab's rule for masked variable values: 8+ characters of the Base64 alphabet plus @:.~-_+=/
MASKABLE = re.compile(r"^[A-Za-z0-9@:.~\-_+=/]{8,}$")
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")


class HTTPError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def not_found(what: str) -> HTTPError:
    return HTTPError(404, {"message": f"404 {what} Not Found"})


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("true", "1", "yes", "on")


def as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(",") if s.strip()]


@dataclass
class Request:
    """One API request as the emulator saw it (for tests counting reads and writes)."""

    method: str
    path: str  # decoded path without the query string
    query: dict[str, Any]
    status: int
    user: str | None

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Token:
    id: int
    value: str
    name: str
    user_id: int
    scopes: list[str]
    expires_at: dt.date | None
    created_at: dt.datetime
    revoked: bool = False
    family: int = 0  # id of the first token of a rotation chain
    rotated_to: int | None = None
    last_used_at: dt.datetime | None = None
    description: str = ""

    def active(self) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now().date())

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "revoked": self.revoked, "created_at": iso(self.created_at),
                "description": self.description, "scopes": list(self.scopes), "user_id": self.user_id,
                "last_used_at": iso(self.last_used_at), "active": self.active(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


@dataclass
class Runner:
    id: int
    token: str
    description: str
    runner_type: str
    tag_list: list[str]
    run_untagged: bool
    locked: bool
    paused: bool
    access_level: str
    maximum_timeout: int | None
    created_at: dt.datetime
    creator_id: int
    token_expires_at: dt.datetime | None = None
    contacted_at: dt.datetime | None = None
    online: bool = False
    version: str | None = None

    def status(self) -> str:
        if self.contacted_at is None:
            return "stale" if now() - self.created_at > dt.timedelta(days=7) else "never_contacted"
        if self.online:
            return "online"
        if now() - self.contacted_at > dt.timedelta(days=7):
            return "stale"
        return "offline"

    def short(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "ip_address": None, "active": not self.paused,
                "paused": self.paused, "is_shared": self.runner_type == "instance_type",
                "runner_type": self.runner_type, "name": "gitlab-runner" if self.contacted_at else None,
                "online": self.status() == "online", "status": self.status()}

    def details(self) -> dict[str, Any]:
        d = self.short()
        d.update({"tag_list": list(self.tag_list), "run_untagged": self.run_untagged, "locked": self.locked,
                  "access_level": self.access_level, "maximum_timeout": self.maximum_timeout,
                  "contacted_at": iso(self.contacted_at), "created_at": iso(self.created_at),
                  "maintenance_note": None, "version": self.version, "projects": [], "groups": [],
                  "token_expires_at": iso(self.token_expires_at)})
        return d


@dataclass
class State:
    """Everything the emulated GitLab holds. Tests may read it; change it through GitLabEmulator."""

    next_id: dict[str, int] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[int, Token] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    projects: dict[int, dict[str, Any]] = field(default_factory=dict)
    protected: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # project -> name -> pb
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedules: dict[int, dict[str, Any]] = field(default_factory=dict)
    runners: dict[int, Runner] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    merge_requests: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)

    def new_id(self, kind: str) -> int:
        self.next_id[kind] = self.next_id.get(kind, 0) + 1
        return self.next_id[kind]


Handler = Callable[["Ctx"], Any]


@dataclass
class Ctx:
    method: str
    args: list[str]
    params: dict[str, Any]
    user: dict[str, Any] | None
    token: Token | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    link_base: str = ""  # absolute URL of this request, for pagination links
    query: dict[str, Any] = field(default_factory=dict)


class GitLabEmulator:
    """A GitLab emulator serving REST API v4 on http://127.0.0.1:<random port>.

    Served (under /api/v4): `GET /user`, users (list by `username`, get, create, delete),
    `POST /users/:id/personal_access_tokens`, personal access tokens (list with `user_id`/`state`/
    `revoked` filters, `self`, get, `rotate` and `self/rotate`, delete), groups and projects
    (by id or URL-encoded full path; create/update/delete; `import_url`, `import_status`,
    `only_allow_merge_if_pipeline_succeeds`...), protected branches, instance CI variables
    (`/admin/ci/variables`, masked/protected/raw), pipeline schedules and their variables,
    runners (`POST /user/runners`, `GET /runners`, `/runners/all`, `GET|PUT|DELETE /runners/:id`,
    `POST /runners/verify`), project issues, merge requests and their notes. Outside the API:
    `/-/health`, `/-/liveness`, `/-/readiness[?all=1]`, the registry ping `/v2/`, and git smart
    HTTP (`git clone/push http://127.0.0.1:<port>/<group>/<project>.git`, password = a token).

    Attributes and helpers for tests:
      url            base URL (http://127.0.0.1:PORT), what python-gitlab takes
      admin_token    a token of the `root` administrator (scopes api, sudo, admin_mode)
      state          the raw `State` (read it to assert; prefer helpers to change it)
      requests       every API request seen (`Request`: method, path, query, status, user)
      mark() / requests_since(mark) / writes(since) / reads(since)   count requests
      create_user(username, admin=False) -> user dict (no HTTP, not logged)
      create_token(username, scopes, expires_at=None, name=...) -> token value
      token_record(value) -> Token | None ; revoke_token(value)
      set_runner_online(runner_id, online=True) ; set_runner_token_expiry(runner_id, datetime)
      runner_by_token(glrt) -> Runner | None
      set_health(ready=True, live=True, registry=True, failing_checks=())
      fail_requests(pattern, status=500, times=1)   the next matching API requests answer `status`
      stop()   shut the server down (an unreachable GitLab); start() again on a new port
    Git repositories live in `git_root` (a temp folder removed by stop())."""

    def __init__(self) -> None:
        self.state = State()
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.failures: list[tuple[re.Pattern[str], int, int]] = []
        self.health = {"ready": True, "live": True, "registry": True, "failing": set()}
        self.git_root = Path(tempfile.mkdtemp(prefix="gitlab-emulator-git-"))
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.url = ""
        root = self._add_user("root", "Administrator", "admin@example.com", admin=True)
        self.admin_token = self.create_token(root["username"], ["api", "sudo", "admin_mode"], name="emulator-admin")
        self.routes = _routes(self)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> GitLabEmulator:
        emulator = self

        class _Handler(RequestHandler):
            gitlab = emulator

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        for user in self.state.users.values():
            user["web_url"] = f"{self.url}/{user['username']}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="gitlab-emulator", daemon=True)
        self.thread.start()
        return self

    def stop(self, keep_git: bool = False) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if not keep_git:
            shutil.rmtree(self.git_root, ignore_errors=True)

    def __enter__(self) -> GitLabEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request log -----------------------------------------------------------------------
    def mark(self) -> int:
        with self.lock:
            return len(self.requests)

    def requests_since(self, mark: int = 0) -> list[Request]:
        with self.lock:
            return list(self.requests[mark:])

    def writes(self, since: int = 0) -> list[Request]:
        return [r for r in self.requests_since(since) if r.is_write]

    def reads(self, since: int = 0) -> list[Request]:
        return [r for r in self.requests_since(since) if not r.is_write]

    # ---- arranging state -------------------------------------------------------------------
    def _add_user(self, username: str, name: str, email: str, admin: bool = False, bot: bool = False) -> dict[str, Any]:
        uid = self.state.new_id("user")
        user = {"id": uid, "username": username, "name": name, "email": email, "state": "active",
                "is_admin": admin, "bot": bot, "created_at": iso(now()), "avatar_url": None,
                "web_url": f"{self.url}/{username}", "projects_limit": 100000,
                "can_create_group": True, "can_create_project": True, "external": False}
        self.state.users[uid] = user
        return user

    def create_user(self, username: str, admin: bool = False, name: str | None = None) -> dict[str, Any]:
        with self.lock:
            return dict(self._add_user(username, name or username, f"{username}@example.com", admin=admin))

    def _mint(self, user_id: int, name: str, scopes: list[str], expires_at: dt.date | None,
              family: int = 0) -> Token:
        tid = self.state.new_id("token")
        tok = Token(id=tid, value="glpat-" + secrets.token_urlsafe(15), name=name, user_id=user_id,
                    scopes=list(scopes), expires_at=expires_at, created_at=now(), family=family or tid)
        self.state.tokens[tid] = tok
        return tok

    def create_token(self, username: str, scopes: list[str], expires_at: dt.date | None = None,
                     name: str = "test-token") -> str:
        with self.lock:
            user = self._user_by_username(username)
            if user is None:
                raise KeyError(username)
            exp = expires_at or (now().date() + dt.timedelta(days=30))
            return self._mint(user["id"], name, scopes, exp).value

    def add_token_record(self, user_id: int, value: str, name: str, scopes: list[str],
                         expires_at: dt.date | None) -> Token:
        """A token whose value was chosen outside (what `gitlab-rails runner ... set_token` does)."""
        with self.lock:
            tok = self._mint(user_id, name, scopes, expires_at)
            tok.value = value
            return tok

    def token_record(self, value: str) -> Token | None:
        with self.lock:
            return next((t for t in self.state.tokens.values() if t.value == value), None)

    def revoke_token(self, value: str) -> None:
        with self.lock:
            tok = self.token_record(value)
            if tok:
                tok.revoked = True

    def runner_by_token(self, token: str) -> Runner | None:
        with self.lock:
            return next((r for r in self.state.runners.values() if r.token == token), None)

    def set_runner_online(self, runner_id: int, online: bool = True, contacted_at: dt.datetime | None = None) -> None:
        with self.lock:
            r = self.state.runners[runner_id]
            r.online = online
            r.contacted_at = contacted_at or (now() if online else (r.contacted_at or now() - dt.timedelta(hours=3)))
            r.version = r.version or "17.11.0"

    def set_runner_token_expiry(self, runner_id: int, expires_at: dt.datetime | None) -> None:
        with self.lock:
            self.state.runners[runner_id].token_expires_at = expires_at

    def set_health(self, ready: bool = True, live: bool = True, registry: bool = True,
                   failing_checks: tuple[str, ...] = ()) -> None:
        with self.lock:
            self.health = {"ready": ready, "live": live, "registry": registry, "failing": set(failing_checks)}

    def fail_requests(self, pattern: str, status: int = 500, times: int = 1) -> None:
        """The next `times` API requests whose 'METHOD /path' matches `pattern` answer `status`."""
        with self.lock:
            self.failures.append((re.compile(pattern), status, times))

    # ---- lookups -----------------------------------------------------------------------------
    def _user_by_username(self, username: str) -> dict[str, Any] | None:
        return next((u for u in self.state.users.values() if u["username"].lower() == username.lower()), None)

    def _authenticate(self, value: str | None) -> Token | None:
        if not value:
            return None
        tok = next((t for t in self.state.tokens.values() if t.value == value), None)
        if tok is None:
            raise HTTPError(401, {"message": "401 Unauthorized"})
        if tok.revoked:
            if tok.rotated_to is not None:
                # GitLab's reuse detection: a rotated (revoked) token used again revokes its family.
                for t in self.state.tokens.values():
                    if t.family == tok.family:
                        t.revoked = True
            raise HTTPError(401, {"message": "401 Unauthorized"})
        if not tok.active():
            raise HTTPError(401, {"message": "401 Unauthorized"})
        user = self.state.users.get(tok.user_id)
        if user is None or user["state"] != "active":
            raise HTTPError(401, {"message": "401 Unauthorized"})
        tok.last_used_at = now()
        return tok

    def _namespace(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self.state.groups.get(int(ref))
        return next((g for g in self.state.groups.values() if g["full_path"].lower() == ref.lower()), None)

    def _project_by_ref(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self.state.projects.get(int(ref))
        return next((p for p in self.state.projects.values()
                     if p["path_with_namespace"].lower() == ref.lower()), None)

    def issue_token_for_push(self, project_path: str, value: str | None) -> tuple[dict[str, Any], bool]:
        """(project, may_write) for git smart HTTP; raises HTTPError like the API does."""
        with self.lock:
            tok = self._authenticate(value)
            project = self._project_by_ref(project_path)
            if tok is None:
                raise HTTPError(401, "HTTP Basic: Access denied", {"WWW-Authenticate": 'Basic realm="GitLab"'})
            if project is None:
                raise HTTPError(404, "The project you were looking for could not be found.")
            user = self.state.users[tok.user_id]
            if not (user["is_admin"] or _member_level(self, project, user) >= 30):
                raise HTTPError(404, "The project you were looking for could not be found.")
            may_write = bool({"api", "write_repository"} & set(tok.scopes))
            return project, may_write


def _member_level(gl: GitLabEmulator, project: dict[str, Any], user: dict[str, Any]) -> int:
    if user["is_admin"]:
        return 50
    level = project["_members"].get(user["id"], 0)
    ns = gl.state.groups.get(project["namespace"]["id"]) if project["namespace"]["kind"] == "group" else None
    if ns is not None:
        level = max(level, ns["_members"].get(user["id"], 0))
    return level


# ---- HTTP handling ---------------------------------------------------------------------------


class RequestHandler(BaseHTTPRequestHandler):
    gitlab: GitLabEmulator
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, delayed ACKs add ~40 ms a request.
        import socket

        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tokens travel in headers, not paths, but keep test output quiet anyway

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes):
            data, ctype = body, "application/octet-stream"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        elif body is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        hdrs = {"Content-Type": ctype, **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        raw_path = split.path
        query = _params(parse_qsl(split.query, keep_blank_values=True))
        gl = self.gitlab
        if raw_path.startswith("/api/v4/"):
            self._api(method, raw_path[len("/api/v4"):], query)
        elif raw_path.startswith("/-/emulator/rails/"):
            self._rails_standin(raw_path, _params(parse_qsl(self._body().decode(), keep_blank_values=True)))
        elif raw_path.startswith("/-/"):
            self._health(raw_path, query)
        elif raw_path == "/v2/" or raw_path == "/v2":
            with gl.lock:
                up = gl.health["registry"]
            if up:
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                           {"Docker-Distribution-Api-Version": "registry/2.0",
                            "WWW-Authenticate": 'Bearer realm="http://127.0.0.1/jwt/auth",service="container_registry"'})
            else:
                self._send(503, "registry unavailable")
        elif ".git/" in raw_path or raw_path.endswith(".git"):
            self._git(method, raw_path, split.query)
        else:
            self._send(404, {"message": "404 Not Found"})

    def _rails_standin(self, path: str, form: dict[str, Any]) -> None:
        """Test hook for a stand-in `gitlab-rails` script: what the real Rails code would do to the
        database (create a token with a chosen value, revoke tokens by name). Not part of GitLab."""
        gl = self.gitlab
        with gl.lock:
            if path.endswith("/mint"):
                user = gl._user_by_username(str(form.get("user", "")))
                if user is None:
                    self._send(422, "no such user")
                    return
                exp = now().date() + dt.timedelta(days=int(form.get("days", 1)))
                tok = gl.add_token_record(user["id"], str(form["token"]), str(form["name"]),
                                          as_list(form.get("scopes")), exp)
                self._send(200, f"bidsflux-token-id={tok.id}\n")
            elif path.endswith("/revoke"):
                n = 0
                for t in gl.state.tokens.values():
                    if t.name == form.get("name") and t.active():
                        t.revoked, n = True, n + 1
                self._send(200, f"bidsflux-revoked={n}\n")
            else:
                self._send(404, "unknown stand-in hook")

    def _health(self, path: str, query: dict[str, Any]) -> None:
        gl = self.gitlab
        with gl.lock:
            h = dict(gl.health)
        if path == "/-/health":
            self._send(200 if h["live"] and h["ready"] else 503, "GitLab OK" if h["ready"] else "GitLab not OK")
        elif path == "/-/liveness":
            self._send(200 if h["live"] else 503, {"status": "ok" if h["live"] else "failed"})
        elif path == "/-/readiness":
            checks = ["db_check", "cache_check", "queues_check", "shared_state_check", "gitaly_check"]
            body: dict[str, Any] = {"status": "ok" if h["ready"] else "failed", "master_check": [{"status": "ok"}]}
            if as_bool(query.get("all", False)):
                for c in checks:
                    failing = c in h["failing"]
                    body[c] = [{"status": "failed", "message": f"{c} unavailable"} if failing else {"status": "ok"}]
                if h["failing"]:
                    body["status"] = "failed"
            self._send(200 if body["status"] == "ok" else 503, body)
        else:
            self._send(404, {"message": "404 Not Found"})

    def _api(self, method: str, path: str, query: dict[str, Any]) -> None:
        gl = self.gitlab
        body = self._body()
        params = dict(query)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if body:
            if ctype == "application/json":
                try:
                    loaded = json.loads(body)
                except ValueError:
                    self._send(400, {"error": "invalid JSON"})
                    return
                if isinstance(loaded, dict):
                    params.update(loaded)
            else:
                params.update(_params(parse_qsl(body.decode(), keep_blank_values=True)))
        decoded = "/".join(unquote(s) for s in path.split("/"))
        token_value = self.headers.get("PRIVATE-TOKEN")
        auth = self.headers.get("Authorization") or ""
        if not token_value and auth.lower().startswith("bearer "):
            token_value = auth[7:].strip()
        status, payload, headers, username = 500, {"message": "500 Internal Server Error"}, {}, None
        with gl.lock:
            try:
                for i, (pattern, code, times) in enumerate(gl.failures):
                    if pattern.search(f"{method} {decoded}"):
                        gl.failures[i] = (pattern, code, times - 1)
                        if times - 1 <= 0:
                            gl.failures.pop(i)
                        raise HTTPError(code, {"message": f"{code} emulated server error"})
                tok = gl._authenticate(token_value)
                user = gl.state.users[tok.user_id] if tok else None
                username = user["username"] if user else None
                status, payload, headers = _dispatch(gl, method, path, params, user, tok, query)
            except HTTPError as exc:
                status, payload, headers = exc.status, exc.body, exc.headers
            gl.requests.append(Request(method, decoded, query, status, username))
        self._send(status, payload, headers)

    def _git(self, method: str, raw_path: str, query_string: str) -> None:
        """git smart HTTP through `git http-backend`, authenticated with a token as password."""
        import base64

        gl = self.gitlab
        body = self._body()
        path = unquote(raw_path)
        repo_part, _, rest = path.partition(".git")
        project_path = repo_part.strip("/")
        password = None
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                password = base64.b64decode(auth[6:]).decode().partition(":")[2]
            except ValueError:
                password = None
        writing = "git-receive-pack" in rest or "service=git-receive-pack" in query_string
        try:
            project, may_write = gl.issue_token_for_push(project_path, password)
        except HTTPError as exc:
            self._send(exc.status, exc.body, exc.headers)
            return
        if writing and not may_write:
            self._send(403, "You are not allowed to push code to this project.")
            return
        repo_dir = gl.git_root / f"{project['id']}.git"
        if not repo_dir.exists():
            subprocess.run(["git", "init", "-q", "--bare", "-b", project["default_branch"] or "main", str(repo_dir)],
                           check=True)
            subprocess.run(["git", "-C", str(repo_dir), "config", "http.receivepack", "true"], check=True)
        env = {**os.environ, "GIT_PROJECT_ROOT": str(gl.git_root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": f"/{project['id']}.git{rest}", "REQUEST_METHOD": method,
               "QUERY_STRING": query_string, "CONTENT_TYPE": self.headers.get("Content-Type") or "",
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "git", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol") or ""}
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode(errors="replace").split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers[k.strip()] = v.strip()
        if writing and method == "POST":
            with gl.lock:
                project["empty_repo"] = False
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k.endswith("[]"):
            out.setdefault(k[:-2], []).append(v)
        else:
            out[k] = v
    return out


# ---- routing -----------------------------------------------------------------------------------

SEG = r"([^/]+)"


def _routes(gl: GitLabEmulator) -> list[tuple[str, re.Pattern[str], Handler, str, bool]]:
    """(method, path regex, handler, scope class 'read'|'write', admin only)."""
    r: list[tuple[str, str, Handler, str, bool]] = [
        ("GET", r"/user", lambda c: _user_public(c.user, full=True), "read_user", False),
        ("GET", r"/users", lambda c: _list_users(gl, c), "read_user", False),
        ("GET", rf"/users/{SEG}", lambda c: _user_public(_get_user(gl, c.args[0]), full=bool(c.user and c.user["is_admin"])), "read_user", False),
        ("POST", r"/users", lambda c: _create_user(gl, c), "write", True),
        ("DELETE", rf"/users/{SEG}", lambda c: _delete_user(gl, c), "write", True),
        ("PUT", rf"/users/{SEG}", lambda c: _update_user(gl, c), "write", True),
        ("POST", rf"/users/{SEG}/personal_access_tokens", lambda c: _create_pat(gl, c), "write", True),
        ("GET", r"/personal_access_tokens", lambda c: _list_pats(gl, c), "read", False),
        ("GET", r"/personal_access_tokens/self", lambda c: c.token.public() if c.token else None, "any", False),
        ("POST", r"/personal_access_tokens/self/rotate", lambda c: _rotate(gl, c, "self"), "self_rotate", False),
        ("DELETE", r"/personal_access_tokens/self", lambda c: _revoke(gl, c, "self"), "any", False),
        ("GET", rf"/personal_access_tokens/{SEG}", lambda c: _get_pat(gl, c, c.args[0]).public(), "read", False),
        ("POST", rf"/personal_access_tokens/{SEG}/rotate", lambda c: _rotate(gl, c, c.args[0]), "write", False),
        ("DELETE", rf"/personal_access_tokens/{SEG}", lambda c: _revoke(gl, c, c.args[0]), "write", False),
        ("GET", r"/groups", lambda c: _list_groups(gl, c), "read", False),
        ("GET", rf"/groups/{SEG}", lambda c: _group_public(_get_group(gl, c, c.args[0])), "read", False),
        ("POST", r"/groups", lambda c: _create_group(gl, c), "write", False),
        ("PUT", rf"/groups/{SEG}", lambda c: _update_group(gl, c), "write", False),
        ("DELETE", rf"/groups/{SEG}", lambda c: _delete_group(gl, c), "write", False),
        ("GET", r"/projects", lambda c: _list_projects(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}", lambda c: _project_public(gl, _get_project(gl, c, c.args[0])), "read", False),
        ("POST", r"/projects", lambda c: _create_project(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}", lambda c: _update_project(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}", lambda c: _delete_project(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/protected_branches", lambda c: _list_pbs(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _get_pb(gl, c), "read", False),
        ("POST", rf"/projects/{SEG}/protected_branches", lambda c: _create_pb(gl, c), "write", False),
        ("PATCH", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _update_pb(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _delete_pb(gl, c), "write", False),
        ("GET", r"/admin/ci/variables", lambda c: _paginate(c, [dict(v) for v in gl.state.variables.values()]), "read", True),
        ("GET", rf"/admin/ci/variables/{SEG}", lambda c: dict(_get_var(gl, c.args[0])), "read", True),
        ("POST", r"/admin/ci/variables", lambda c: _create_var(gl, c), "write", True),
        ("PUT", rf"/admin/ci/variables/{SEG}", lambda c: _update_var(gl, c), "write", True),
        ("DELETE", rf"/admin/ci/variables/{SEG}", lambda c: _delete_var(gl, c), "write", True),
        ("GET", rf"/projects/{SEG}/pipeline_schedules", lambda c: _list_schedules(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _schedule_public(_get_schedule(gl, c), True), "read", False),
        ("POST", rf"/projects/{SEG}/pipeline_schedules", lambda c: _create_schedule(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _update_schedule(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _delete_schedule(gl, c), "write", False),
        ("POST", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables", lambda c: _create_sched_var(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables/{SEG}", lambda c: _update_sched_var(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables/{SEG}", lambda c: _delete_sched_var(gl, c), "write", False),
        ("POST", r"/user/runners", lambda c: _create_runner(gl, c), "create_runner", False),
        ("GET", r"/runners", lambda c: _list_runners(gl, c, everything=False), "read", False),
        ("GET", r"/runners/all", lambda c: _list_runners(gl, c, everything=True), "read", True),
        ("POST", r"/runners/verify", lambda c: _verify_runner(gl, c), "none", False),
        ("GET", rf"/runners/{SEG}", lambda c: _get_runner(gl, c).details(), "read", False),
        ("PUT", rf"/runners/{SEG}", lambda c: _update_runner(gl, c), "manage_runner", False),
        ("DELETE", rf"/runners/{SEG}", lambda c: _delete_runner(gl, c), "manage_runner", False),
        ("GET", rf"/projects/{SEG}/issues", lambda c: _list_issues(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/issues/{SEG}", lambda c: dict(_get_issue(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/issues", lambda c: _create_issue(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/issues/{SEG}", lambda c: _update_issue(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/merge_requests", lambda c: _list_mrs(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}", lambda c: dict(_get_mr(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/merge_requests", lambda c: _create_mr(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}/notes", lambda c: _list_notes(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: dict(_get_note(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/merge_requests/{SEG}/notes", lambda c: _create_note(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: _update_note(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: _delete_note(gl, c), "write", False),
    ]
    return [(m, re.compile(f"^{p}/?$"), h, s, a) for m, p, h, s, a in r]


def _dispatch(gl: GitLabEmulator, method: str, path: str, params: dict[str, Any],
              user: dict[str, Any] | None, tok: Token | None,
              query: dict[str, Any] | None = None) -> tuple[int, Any, dict[str, str]]:
    if method == "HEAD":
        method = "GET"
    matched_path = False
    for m, pattern, handler, scope, admin_only in gl.routes:
        match = pattern.match(path)
        if not match:
            continue
        matched_path = True
        if m != method:
            continue
        args = [unquote(a) for a in match.groups()]
        if scope != "none":
            if user is None or tok is None:
                raise HTTPError(401, {"message": "401 Unauthorized"})
            _check_scope(tok, scope, method)
            if admin_only and not user["is_admin"]:
                raise HTTPError(403, {"message": "403 Forbidden"})
        ctx = Ctx(method, args, params, user, tok, link_base=f"{gl.url}/api/v4{path}", query=query)
        ctx.status = 201 if method == "POST" else 200
        result = handler(ctx)
        if result is None and method == "DELETE" and ctx.status in (200, 201):
            ctx.status = 204
        if ctx.status == 204:
            result = None
        return ctx.status, result, ctx.headers
    if matched_path:
        raise HTTPError(405, {"error": "405 Method Not Allowed"})
    raise HTTPError(404, {"error": "404 Not Found"})


def _check_scope(tok: Token, scope: str, method: str) -> None:
    have = set(tok.scopes)
    if scope == "any":
        return
    if "api" in have:
        return
    ok = {
        "read": "read_api" in have and method == "GET",
        "read_user": bool({"read_user", "read_api"} & have),
        "write": False,
        "self_rotate": "self_rotate" in have,
        "create_runner": "create_runner" in have,
        "manage_runner": "manage_runner" in have,
    }.get(scope, False)
    if not ok:
        needed = {"read": "api read_api", "read_user": "api read_api read_user", "write": "api"}.get(scope, f"api {scope}")
        raise HTTPError(403, {"error": "insufficient_scope",
                              "error_description": "The request requires higher privileges than provided by the access token.",
                              "scope": needed})


def _paginate(c: Ctx, items: list[Any]) -> list[Any]:
    try:
        per_page = max(1, min(100, int(c.params.get("per_page", 20))))
        page = max(1, int(c.params.get("page", 1)))
    except ValueError as exc:
        raise HTTPError(400, {"error": "page is invalid"}) from exc
    total = len(items)
    pages = max(1, -(-total // per_page))
    c.headers.update({"X-Total": str(total), "X-Total-Pages": str(pages), "X-Per-Page": str(per_page),
                      "X-Page": str(page), "X-Next-Page": str(page + 1) if page < pages else "",
                      "X-Prev-Page": str(page - 1) if page > 1 else ""})
    rest = {k: v for k, v in c.query.items() if k not in ("page", "per_page")}

    def link(n: int) -> str:
        q = urlencode([*_flat(rest), ("page", str(n)), ("per_page", str(per_page))])
        return f"{c.link_base}?{q}"

    links = []
    if page < pages:
        links.append(f'<{link(page + 1)}>; rel="next"')
    if page > 1:
        links.append(f'<{link(page - 1)}>; rel="prev"')
    links.append(f'<{link(1)}>; rel="first"')
    links.append(f'<{link(pages)}>; rel="last"')
    c.headers["Link"] = ", ".join(links)
    return items[(page - 1) * per_page: page * per_page]


def _flat(q: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in q.items():
        if isinstance(v, list):
            out += [(f"{k}[]", str(x)) for x in v]
        else:
            out.append((k, str(v)))
    return out


def _require(c: Ctx, *names: str) -> None:
    for n in names:
        if c.params.get(n) in (None, ""):
            raise HTTPError(400, {"error": f"{n} is missing"})


# ---- users and tokens ---------------------------------------------------------------------------


def _user_public(user: dict[str, Any] | None, full: bool = False) -> dict[str, Any]:
    if user is None:
        raise HTTPError(401, {"message": "401 Unauthorized"})
    keys = ["id", "username", "name", "state", "avatar_url", "web_url", "bot", "created_at"]
    if full:
        keys += ["email", "is_admin", "projects_limit", "can_create_group", "can_create_project", "external"]
    return {k: user[k] for k in keys}


def _get_user(gl: GitLabEmulator, ref: str) -> dict[str, Any]:
    user = gl.state.users.get(int(ref)) if ref.isdigit() else None
    if user is None:
        raise not_found("User")
    return user


def _list_users(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    users = list(gl.state.users.values())
    if "username" in c.params:
        users = [u for u in users if u["username"].lower() == str(c.params["username"]).lower()]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        users = [u for u in users if s in u["username"].lower() or s in u["name"].lower() or s in u["email"].lower()]
    full = bool(c.user and c.user["is_admin"])
    return _paginate(c, [_user_public(u, full) for u in users])


def _create_user(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    _require(c, "email", "username", "name")
    if not any(c.params.get(k) for k in ("password", "reset_password", "force_random_password")):
        raise HTTPError(400, {"error": "password, reset_password, force_random_password are missing, at least one parameter must be provided"})
    if gl._user_by_username(str(c.params["username"])):
        raise HTTPError(409, {"message": "Username has already been taken"})
    if any(u["email"].lower() == str(c.params["email"]).lower() for u in gl.state.users.values()):
        raise HTTPError(409, {"message": "Email has already been taken"})
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", str(c.params["username"])):
        raise HTTPError(400, {"message": {"username": ["can contain only letters, digits, '_', '-' and '.'"]}})
    user = gl._add_user(str(c.params["username"]), str(c.params["name"]), str(c.params["email"]),
                        admin=as_bool(c.params.get("admin", False)))
    return _user_public(user, full=True)


def _update_user(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    user = _get_user(gl, c.args[0])
    for k in ("name", "email"):
        if k in c.params:
            user[k] = str(c.params[k])
    if "admin" in c.params:
        user["is_admin"] = as_bool(c.params["admin"])
    return _user_public(user, full=True)


def _delete_user(gl: GitLabEmulator, c: Ctx) -> None:
    user = _get_user(gl, c.args[0])
    del gl.state.users[user["id"]]
    for t in gl.state.tokens.values():
        if t.user_id == user["id"]:
            t.revoked = True
    return None


def _parse_date(value: Any, field_name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise HTTPError(400, {"error": f"{field_name} is invalid"}) from exc


def _expiry(c: Ctx, default_days: int) -> dt.date:
    if c.params.get("expires_at"):
        exp = _parse_date(c.params["expires_at"], "expires_at")
    else:
        exp = now().date() + dt.timedelta(days=default_days)
    limit = now().date() + dt.timedelta(days=365)
    if exp > limit:
        raise HTTPError(400, {"message": {"expires_at": [f"must be before {limit.isoformat()}"]}})
    if exp <= now().date():
        raise HTTPError(400, {"message": {"expires_at": ["must be in the future"]}})
    return exp


def _create_pat(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    user = _get_user(gl, c.args[0])
    _require(c, "name", "scopes")
    scopes = as_list(c.params["scopes"])
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise HTTPError(400, {"error": "scopes does not have a valid value"})
    tok = gl._mint(user["id"], str(c.params["name"]), scopes, _expiry(c, 365))
    tok.description = str(c.params.get("description") or "")
    return {**tok.public(), "token": tok.value}


def _visible_tokens(gl: GitLabEmulator, c: Ctx) -> list[Token]:
    assert c.user is not None
    tokens = list(gl.state.tokens.values())
    if not c.user["is_admin"]:
        if "user_id" in c.params and str(c.params["user_id"]) != str(c.user["id"]):
            raise HTTPError(401, {"message": "401 Unauthorized"})
        tokens = [t for t in tokens if t.user_id == c.user["id"]]
    return tokens


def _list_pats(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    tokens = _visible_tokens(gl, c)
    p = c.params
    if "user_id" in p:
        tokens = [t for t in tokens if str(t.user_id) == str(p["user_id"])]
    if "state" in p:
        want_active = p["state"] == "active"
        tokens = [t for t in tokens if t.active() == want_active]
    if "revoked" in p:
        tokens = [t for t in tokens if t.revoked == as_bool(p["revoked"])]
    if "search" in p:
        tokens = [t for t in tokens if str(p["search"]).lower() in t.name.lower()]
    return _paginate(c, [t.public() for t in tokens])


def _get_pat(gl: GitLabEmulator, c: Ctx, ref: str) -> Token:
    tok = gl.state.tokens.get(int(ref)) if ref.isdigit() else None
    assert c.user is not None
    if tok is None or not (c.user["is_admin"] or tok.user_id == c.user["id"]):
        raise not_found("Personal Access Token" if c.user["is_admin"] else "")
    return tok


def _rotate(gl: GitLabEmulator, c: Ctx, ref: str) -> dict[str, Any]:
    assert c.token is not None and c.user is not None
    if ref == "self":
        if not ({"api", "self_rotate"} & set(c.token.scopes)):
            raise HTTPError(403, {"message": "403 Forbidden"})
        old = c.token
    else:
        tok = gl.state.tokens.get(int(ref)) if ref.isdigit() else None
        if tok is None:
            if c.user["is_admin"]:
                raise not_found("")
            raise HTTPError(401, {"message": "401 Unauthorized"})
        if not (c.user["is_admin"] or tok.user_id == c.user["id"]):
            raise HTTPError(401, {"message": "401 Unauthorized"})
        old = tok
    if not old.active():
        raise HTTPError(400, {"message": "400 Bad request - Token already revoked" if old.revoked
                              else "400 Bad request - Token expired"})
    exp = _expiry(c, 7)
    old.revoked = True
    new = gl._mint(old.user_id, old.name, old.scopes, exp, family=old.family)
    new.description = old.description
    old.rotated_to = new.id
    c.status = 200
    return {**new.public(), "token": new.value}


def _revoke(gl: GitLabEmulator, c: Ctx, ref: str) -> None:
    assert c.token is not None
    tok = c.token if ref == "self" else _get_pat(gl, c, ref)
    if tok.revoked:
        raise HTTPError(400, {"message": "400 Bad request - Token already revoked"})
    tok.revoked = True
    return None


# ---- groups and projects ------------------------------------------------------------------------


def _group_public(g: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in g.items() if not k.startswith("_")}


def _get_group(gl: GitLabEmulator, c: Ctx, ref: str) -> dict[str, Any]:
    g = gl._namespace(ref)
    assert c.user is not None
    if g is None or (g["visibility"] == "private" and not c.user["is_admin"] and c.user["id"] not in g["_members"]):
        raise not_found("Group")
    return g


def _list_groups(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    assert c.user is not None
    groups = [g for g in gl.state.groups.values()
              if c.user["is_admin"] or g["visibility"] != "private" or c.user["id"] in g["_members"]]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        groups = [g for g in groups if s in g["full_path"].lower() or s in g["name"].lower()]
    return _paginate(c, [_group_public(g) for g in groups])


def _create_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    _require(c, "name", "path")
    parent = None
    if c.params.get("parent_id"):
        parent = gl.state.groups.get(int(c.params["parent_id"]))
        if parent is None:
            raise not_found("Parent Group")
    full = f"{parent['full_path']}/{c.params['path']}" if parent else str(c.params["path"])
    if gl._namespace(full) or gl._user_by_username(full):
        raise HTTPError(400, {"message": "Failed to save group {:path=>[\"has already been taken\"]}"})
    visibility = str(c.params.get("visibility") or "private")
    if visibility not in ("private", "internal", "public"):
        raise HTTPError(400, {"error": "visibility does not have a valid value"})
    gid = gl.state.new_id("namespace")
    g = {"id": gid, "name": str(c.params["name"]), "path": str(c.params["path"]), "full_path": full,
         "full_name": str(c.params["name"]), "visibility": visibility, "parent_id": parent["id"] if parent else None,
         "description": str(c.params.get("description") or ""), "web_url": f"{gl.url}/groups/{full}",
         "created_at": iso(now()), "_members": {c.user["id"]: 50}}
    gl.state.groups[gid] = g
    return _group_public(g)


def _update_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    g = _get_group(gl, c, c.args[0])
    assert c.user is not None
    if not (c.user["is_admin"] or g["_members"].get(c.user["id"], 0) >= 50):
        raise HTTPError(403, {"message": "403 Forbidden"})
    for k in ("name", "visibility", "description"):
        if k in c.params:
            g[k] = c.params[k]
    return _group_public(g)


def _delete_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    g = _get_group(gl, c, c.args[0])
    for p in [p for p in gl.state.projects.values() if p["namespace"]["id"] == g["id"]]:
        del gl.state.projects[p["id"]]
    del gl.state.groups[g["id"]]
    c.status = 202
    return {"message": "202 Accepted"}


def _project_public(gl: GitLabEmulator, p: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in p.items() if not k.startswith("_")}
    if out.get("import_url"):
        # GitLab never shows credentials embedded in an import URL.
        out["import_url"] = re.sub(r"//[^@/]+@", "//*****:*****@", out["import_url"])
    return out


def _get_project(gl: GitLabEmulator, c: Ctx, ref: str, level: int = 0) -> dict[str, Any]:
    p = gl._project_by_ref(ref)
    assert c.user is not None
    if p is None:
        raise not_found("Project")
    member = _member_level(gl, p, c.user)
    if p["visibility"] == "private" and member < 10:
        raise not_found("Project")
    if level and member < level:
        raise HTTPError(403, {"message": "403 Forbidden"})
    return p


def _list_projects(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    assert c.user is not None
    user = c.user
    projects = [p for p in gl.state.projects.values()
                if p["visibility"] != "private" or _member_level(gl, p, user) >= 10]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        projects = [p for p in projects if s in p["path_with_namespace"].lower()]
    return _paginate(c, [_project_public(gl, p) for p in projects])


PROJECT_SETTINGS = ("description", "visibility", "default_branch", "only_allow_merge_if_pipeline_succeeds",
                    "only_allow_merge_if_all_discussions_are_resolved", "merge_method", "ci_config_path",
                    "remove_source_branch_after_merge", "issues_enabled", "merge_requests_enabled",
                    "container_registry_enabled", "shared_runners_enabled", "mirror")
BOOL_SETTINGS = {"only_allow_merge_if_pipeline_succeeds", "only_allow_merge_if_all_discussions_are_resolved",
                 "remove_source_branch_after_merge", "issues_enabled", "merge_requests_enabled",
                 "container_registry_enabled", "shared_runners_enabled", "mirror"}


def _create_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    if not c.params.get("name") and not c.params.get("path"):
        raise HTTPError(400, {"error": "name, path are missing, at least one parameter must be provided"})
    path = str(c.params.get("path") or c.params["name"])
    name = str(c.params.get("name") or path)
    if c.params.get("namespace_id"):
        ns = gl._namespace(str(c.params["namespace_id"]))
        if ns is None:
            raise not_found("Namespace")
        if not (c.user["is_admin"] or ns["_members"].get(c.user["id"], 0) >= 40):
            raise HTTPError(403, {"message": "403 Forbidden"})
        namespace = {"id": ns["id"], "name": ns["name"], "path": ns["path"], "kind": "group", "full_path": ns["full_path"]}
    else:
        namespace = {"id": 100000 + c.user["id"], "name": c.user["name"], "path": c.user["username"],
                     "kind": "user", "full_path": c.user["username"]}
    full = f"{namespace['full_path']}/{path}"
    if gl._project_by_ref(full):
        raise HTTPError(400, {"message": {"project_namespace.name": ["has already been taken"],
                                          "name": ["has already been taken"], "path": ["has already been taken"]}})
    import_url = c.params.get("import_url")
    if import_url and not re.match(r"^(https?|git|ssh)://", str(import_url)):
        raise HTTPError(400, {"message": {"import_url": ["is blocked: Only allowed schemes are http, https, ssh, git"]}})
    pid = gl.state.new_id("project")
    p: dict[str, Any] = {
        "id": pid, "name": name, "path": path, "path_with_namespace": full, "name_with_namespace": f"{namespace['name']} / {name}",
        "namespace": namespace, "description": str(c.params.get("description") or ""),
        "visibility": str(c.params.get("visibility") or "private"), "default_branch": "main",
        "web_url": f"{gl.url}/{full}", "http_url_to_repo": f"{gl.url}/{full}.git",
        "ssh_url_to_repo": f"ssh://git@gitlab.invalid:222/{full}.git", "created_at": iso(now()),
        "import_url": str(import_url) if import_url else None,
        "import_status": "finished" if import_url else "none", "import_type": "git" if import_url else None,
        "import_error": None, "mirror": False, "empty_repo": not bool(import_url), "archived": False,
        "only_allow_merge_if_pipeline_succeeds": False, "only_allow_merge_if_all_discussions_are_resolved": False,
        "merge_method": "merge", "ci_config_path": None, "remove_source_branch_after_merge": True,
        "issues_enabled": True, "merge_requests_enabled": True, "container_registry_enabled": True,
        "shared_runners_enabled": True, "creator_id": c.user["id"], "_members": {c.user["id"]: 50},
    }
    for k in PROJECT_SETTINGS:
        if k in c.params:
            p[k] = as_bool(c.params[k]) if k in BOOL_SETTINGS else c.params[k]
    gl.state.projects[pid] = p
    gl.state.protected[pid] = {}
    if import_url:
        # An imported project protects its default branch like any new project does.
        gl.state.protected[pid]["main"] = _pb_record(gl, "main", 40, 40)
    return _project_public(gl, p)


def _update_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=40)
    for k in PROJECT_SETTINGS:
        if k in c.params:
            p[k] = as_bool(c.params[k]) if k in BOOL_SETTINGS else c.params[k]
    if "name" in c.params:
        p["name"] = str(c.params["name"])
    return _project_public(gl, p)


def _delete_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=50)
    del gl.state.projects[p["id"]]
    gl.state.protected.pop(p["id"], None)
    for sid in [s for s, v in gl.state.schedules.items() if v["_project"] == p["id"]]:
        del gl.state.schedules[sid]
    c.status = 202
    return {"message": "202 Accepted"}


# ---- protected branches -------------------------------------------------------------------------


def _levels(level: int) -> list[dict[str, Any]]:
    return [{"id": 1, "access_level": level, "access_level_description": ACCESS_LEVELS.get(level, str(level)),
             "user_id": None, "group_id": None}]


def _pb_record(gl: GitLabEmulator, name: str, push: int, merge: int, force: bool = False) -> dict[str, Any]:
    return {"id": gl.state.new_id("protected_branch"), "name": name, "push_access_levels": _levels(push),
            "merge_access_levels": _levels(merge), "unprotect_access_levels": [], "allow_force_push": force,
            "code_owner_approval_required": False}


def _list_pbs(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = _get_project(gl, c, c.args[0])
    return _paginate(c, [dict(v) for v in gl.state.protected[p["id"]].values()])


def _get_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0])
    pb = gl.state.protected[p["id"]].get(c.args[1])
    if pb is None:
        raise not_found("Protected Branch")
    return dict(pb)


def _level_param(c: Ctx, name: str) -> int:
    try:
        level = int(c.params.get(name, 40))
    except ValueError as exc:
        raise HTTPError(400, {"error": f"{name} does not have a valid value"}) from exc
    if level not in ACCESS_LEVELS:
        raise HTTPError(400, {"error": f"{name} does not have a valid value"})
    return level


def _create_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=40)
    _require(c, "name")
    name = str(c.params["name"])
    if name in gl.state.protected[p["id"]]:
        raise HTTPError(409, {"message": f"Protected branch '{name}' already exists"})
    pb = _pb_record(gl, name, _level_param(c, "push_access_level"), _level_param(c, "merge_access_level"),
                    as_bool(c.params.get("allow_force_push", False)))
    gl.state.protected[p["id"]][name] = pb
    return dict(pb)


def _update_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=40)
    pb = gl.state.protected[p["id"]].get(c.args[1])
    if pb is None:
        raise not_found("Protected Branch")
    if "allow_force_push" in c.params:
        pb["allow_force_push"] = as_bool(c.params["allow_force_push"])
    for key, levels_key in (("allowed_to_push", "push_access_levels"), ("allowed_to_merge", "merge_access_levels")):
        for entry in c.params.get(key) or []:
            if isinstance(entry, dict) and "access_level" in entry:
                pb[levels_key] = _levels(int(entry["access_level"]))
    return dict(pb)


def _delete_pb(gl: GitLabEmulator, c: Ctx) -> None:
    p = _get_project(gl, c, c.args[0], level=40)
    if gl.state.protected[p["id"]].pop(c.args[1], None) is None:
        raise not_found("Protected Branch")
    return None


# ---- instance CI variables ----------------------------------------------------------------------


def _get_var(gl: GitLabEmulator, key: str) -> dict[str, Any]:
    v = gl.state.variables.get(key)
    if v is None:
        raise not_found("Variable")
    return v


def _var_fields(c: Ctx, v: dict[str, Any]) -> dict[str, Any]:
    out = dict(v)
    for k in ("protected", "masked", "raw"):
        if k in c.params:
            out[k] = as_bool(c.params[k])
    if "value" in c.params:
        out["value"] = str(c.params["value"])
    if "description" in c.params:
        out["description"] = c.params["description"]
    if "variable_type" in c.params:
        if c.params["variable_type"] not in ("env_var", "file"):
            raise HTTPError(400, {"error": "variable_type does not have a valid value"})
        out["variable_type"] = c.params["variable_type"]
    if out["masked"] and not MASKABLE.match(out["value"]):
        raise HTTPError(400, {"message": {"value": ["is invalid"]}})
    return out


def _create_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    _require(c, "key")
    if "value" not in c.params:
        raise HTTPError(400, {"error": "value is missing"})
    key = str(c.params["key"])
    if not re.match(r"^[A-Za-z0-9_]{1,255}$", key):
        raise HTTPError(400, {"message": {"key": ["can contain only letters, digits and '_'."]}})
    if key in gl.state.variables:
        raise HTTPError(400, {"message": {"key": [f"({key}) has already been taken"]}})
    v = _var_fields(c, {"key": key, "value": "", "variable_type": "env_var", "protected": False,
                        "masked": False, "raw": False, "description": None})
    gl.state.variables[key] = v
    return dict(v)


def _update_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    v = _var_fields(c, _get_var(gl, c.args[0]))
    gl.state.variables[c.args[0]] = v
    return dict(v)


def _delete_var(gl: GitLabEmulator, c: Ctx) -> None:
    _get_var(gl, c.args[0])
    del gl.state.variables[c.args[0]]
    return None


# ---- pipeline schedules -------------------------------------------------------------------------


def _schedule_public(s: dict[str, Any], with_variables: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in s.items() if not k.startswith("_")}
    if with_variables:
        out["variables"] = [dict(v) for v in s["_variables"].values()]
    return out


def _list_schedules(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = _get_project(gl, c, c.args[0])
    return _paginate(c, [_schedule_public(s) for s in gl.state.schedules.values() if s["_project"] == p["id"]])


def _get_schedule(gl: GitLabEmulator, c: Ctx, level: int = 0) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=level)
    s = gl.state.schedules.get(int(c.args[1])) if c.args[1].isdigit() else None
    if s is None or s["_project"] != p["id"]:
        raise not_found("Pipeline Schedule")
    return s


def _check_cron(cron: str) -> None:
    parts = cron.split()
    if len(parts) != 5 or not all(CRON_FIELD.match(x) for x in parts):
        raise HTTPError(400, {"message": {"cron": ["is invalid syntax"]}})


def _create_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=30)
    assert c.user is not None
    _require(c, "description", "ref", "cron")
    _check_cron(str(c.params["cron"]))
    sid = gl.state.new_id("schedule")
    s = {"id": sid, "description": str(c.params["description"]), "ref": str(c.params["ref"]),
         "cron": str(c.params["cron"]), "cron_timezone": str(c.params.get("cron_timezone") or "UTC"),
         "next_run_at": iso(now() + dt.timedelta(hours=1)), "active": as_bool(c.params.get("active", True)),
         "created_at": iso(now()), "updated_at": iso(now()), "owner": _user_public(c.user),
         "_project": p["id"], "_variables": {}}
    gl.state.schedules[sid] = s
    return _schedule_public(s)


def _update_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    if "cron" in c.params:
        _check_cron(str(c.params["cron"]))
    for k in ("description", "ref", "cron", "cron_timezone"):
        if k in c.params:
            s[k] = str(c.params[k])
    if "active" in c.params:
        s["active"] = as_bool(c.params["active"])
    s["updated_at"] = iso(now())
    return _schedule_public(s)


def _delete_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    del gl.state.schedules[s["id"]]
    c.status = 204
    return _schedule_public(s)


def _create_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    _require(c, "key")
    key = str(c.params["key"])
    if key in s["_variables"]:
        raise HTTPError(400, {"message": {"key": [f"({key}) has already been taken"]}})
    v = {"key": key, "value": str(c.params.get("value", "")), "variable_type": str(c.params.get("variable_type") or "env_var")}
    s["_variables"][key] = v
    return dict(v)


def _update_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    v = s["_variables"].get(c.args[2])
    if v is None:
        raise not_found("Variable")
    if "value" in c.params:
        v["value"] = str(c.params["value"])
    return dict(v)


def _delete_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    v = s["_variables"].pop(c.args[2], None)
    if v is None:
        raise not_found("Variable")
    c.status = 204
    return dict(v)


# ---- runners ----------------------------------------------------------------------------------------


def _create_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    _require(c, "runner_type")
    rtype = str(c.params["runner_type"])
    if rtype not in ("instance_type", "group_type", "project_type"):
        raise HTTPError(400, {"error": "runner_type does not have a valid value"})
    if rtype == "instance_type" and not c.user["is_admin"]:
        raise HTTPError(403, {"message": "403 Forbidden - insufficient permissions to create an instance runner"})
    if rtype == "group_type" and not c.params.get("group_id"):
        raise HTTPError(400, {"message": "400 Bad request - group_id is required for group_type"})
    if rtype == "project_type" and not c.params.get("project_id"):
        raise HTTPError(400, {"message": "400 Bad request - project_id is required for project_type"})
    rid = gl.state.new_id("runner")
    r = Runner(id=rid, token="glrt-" + secrets.token_urlsafe(20), description=str(c.params.get("description") or ""),
               runner_type=rtype, tag_list=as_list(c.params.get("tag_list")),
               run_untagged=as_bool(c.params.get("run_untagged", True)), locked=as_bool(c.params.get("locked", False)),
               paused=as_bool(c.params.get("paused", False)), access_level=str(c.params.get("access_level") or "not_protected"),
               maximum_timeout=int(c.params["maximum_timeout"]) if c.params.get("maximum_timeout") else None,
               created_at=now(), creator_id=c.user["id"])
    gl.state.runners[rid] = r
    return {"id": r.id, "token": r.token, "token_expires_at": iso(r.token_expires_at)}


def _list_runners(gl: GitLabEmulator, c: Ctx, everything: bool) -> list[Any]:
    assert c.user is not None
    user = c.user
    runners = [r for r in gl.state.runners.values() if everything or r.creator_id == user["id"]]
    p = c.params
    if "type" in p:
        runners = [r for r in runners if r.runner_type == p["type"]]
    if "status" in p:
        runners = [r for r in runners if r.status() == p["status"]]
    if "paused" in p:
        runners = [r for r in runners if r.paused == as_bool(p["paused"])]
    if "tag_list" in p:
        want = set(as_list(p["tag_list"]))
        runners = [r for r in runners if want <= set(r.tag_list)]
    return _paginate(c, [r.short() for r in runners])


def _get_runner(gl: GitLabEmulator, c: Ctx) -> Runner:
    assert c.user is not None
    r = gl.state.runners.get(int(c.args[0])) if c.args[0].isdigit() else None
    if r is None:
        raise not_found("Runner")
    if not (c.user["is_admin"] or r.creator_id == c.user["id"]):
        raise HTTPError(403, {"message": "403 Forbidden"})
    return r


def _update_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    r = _get_runner(gl, c)
    if "description" in c.params:
        r.description = str(c.params["description"])
    if "tag_list" in c.params:
        r.tag_list = as_list(c.params["tag_list"])
    for k in ("run_untagged", "locked", "paused"):
        if k in c.params:
            setattr(r, k, as_bool(c.params[k]))
    return r.details()


def _delete_runner(gl: GitLabEmulator, c: Ctx) -> None:
    r = _get_runner(gl, c)
    del gl.state.runners[r.id]
    return None


def _verify_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    _require(c, "token")
    r = next((x for x in gl.state.runners.values() if x.token == c.params["token"]), None)
    if r is None or (r.token_expires_at is not None and r.token_expires_at <= now()):
        raise HTTPError(403, {"message": "403 Forbidden"})
    c.status = 200
    return {"id": r.id, "token": r.token, "token_expires_at": iso(r.token_expires_at)}


# ---- issues, merge requests and notes -------------------------------------------------------------


def _list_issues(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = _get_project(gl, c, c.args[0])
    issues = [i for i in gl.state.issues.values() if i["project_id"] == p["id"]]
    state = c.params.get("state", "all")
    if state in ("opened", "closed"):
        issues = [i for i in issues if i["state"] == state]
    if c.params.get("labels"):
        want = set(as_list(c.params["labels"]))
        issues = [i for i in issues if want <= set(i["labels"])]
    if c.params.get("search"):
        s = str(c.params["search"]).lower()
        issues = [i for i in issues if s in i["title"].lower() or s in (i["description"] or "").lower()]
    issues.sort(key=lambda i: i["id"], reverse=True)  # GitLab orders by created_at desc
    return _paginate(c, [dict(i) for i in issues])


def _get_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0])
    i = next((x for x in gl.state.issues.values() if x["project_id"] == p["id"] and str(x["iid"]) == c.args[1]), None)
    if i is None:
        raise not_found("Issue")
    return i


def _create_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=10 if c.user and not c.user["is_admin"] else 0)
    _require(c, "title")
    iid = 1 + max((i["iid"] for i in gl.state.issues.values() if i["project_id"] == p["id"]), default=0)
    iid_global = gl.state.new_id("issue")
    issue = {"id": iid_global, "iid": iid, "project_id": p["id"], "title": str(c.params["title"]),
             "description": c.params.get("description"), "state": "opened", "labels": sorted(as_list(c.params.get("labels"))),
             "created_at": iso(now()), "updated_at": iso(now()), "closed_at": None,
             "author": _user_public(c.user), "web_url": f"{p['web_url']}/-/issues/{iid}"}
    gl.state.issues[iid_global] = issue
    return dict(issue)


def _update_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    i = _get_issue(gl, c)
    for k in ("title", "description"):
        if k in c.params:
            i[k] = c.params[k]
    if "labels" in c.params:
        i["labels"] = sorted(as_list(c.params["labels"]))
    if "add_labels" in c.params:
        i["labels"] = sorted(set(i["labels"]) | set(as_list(c.params["add_labels"])))
    if "remove_labels" in c.params:
        i["labels"] = sorted(set(i["labels"]) - set(as_list(c.params["remove_labels"])))
    event = c.params.get("state_event")
    if event == "close":
        i["state"], i["closed_at"] = "closed", iso(now())
    elif event == "reopen":
        i["state"], i["closed_at"] = "opened", None
    i["updated_at"] = iso(now())
    return dict(i)


def _list_mrs(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = _get_project(gl, c, c.args[0])
    mrs = [dict(m) for m in gl.state.merge_requests.values() if m["project_id"] == p["id"]]
    if c.params.get("state") in ("opened", "closed", "merged"):
        mrs = [m for m in mrs if m["state"] == c.params["state"]]
    return _paginate(c, mrs)


def _get_mr(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0])
    m = next((x for x in gl.state.merge_requests.values() if x["project_id"] == p["id"] and str(x["iid"]) == c.args[1]), None)
    if m is None:
        raise not_found("Merge Request")
    return m


def _create_mr(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = _get_project(gl, c, c.args[0], level=30)
    _require(c, "source_branch", "target_branch", "title")
    iid = 1 + max((m["iid"] for m in gl.state.merge_requests.values() if m["project_id"] == p["id"]), default=0)
    gid = gl.state.new_id("merge_request")
    m = {"id": gid, "iid": iid, "project_id": p["id"], "title": str(c.params["title"]),
         "description": c.params.get("description"), "state": "opened",
         "source_branch": str(c.params["source_branch"]), "target_branch": str(c.params["target_branch"]),
         "author": _user_public(c.user), "created_at": iso(now()), "web_url": f"{p['web_url']}/-/merge_requests/{iid}"}
    gl.state.merge_requests[gid] = m
    return dict(m)


def _list_notes(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    m = _get_mr(gl, c)
    notes = [dict(n) for n in gl.state.notes.values() if n["noteable_id"] == m["id"]]
    return _paginate(c, notes)


def _get_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    m = _get_mr(gl, c)
    n = gl.state.notes.get(int(c.args[2])) if c.args[2].isdigit() else None
    if n is None or n["noteable_id"] != m["id"]:
        raise not_found("Note")
    return n


def _create_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    m = _get_mr(gl, c)
    _require(c, "body")
    if len(str(c.params["body"])) > 1_000_000:
        raise HTTPError(400, {"message": {"note": ["is too long (maximum is 1000000 characters)"]}})
    nid = gl.state.new_id("note")
    n = {"id": nid, "body": str(c.params["body"]), "author": _user_public(c.user), "system": False,
         "created_at": iso(now()), "updated_at": iso(now()), "noteable_id": m["id"], "noteable_iid": m["iid"],
         "noteable_type": "MergeRequest", "resolvable": False}
    gl.state.notes[nid] = n
    return dict(n)


def _update_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    n = _get_note(gl, c)
    assert c.user is not None
    if n["author"]["id"] != c.user["id"] and not c.user["is_admin"]:
        raise HTTPError(403, {"message": "403 Forbidden"})
    _require(c, "body")
    n["body"], n["updated_at"] = str(c.params["body"]), iso(now())
    return dict(n)


def _delete_note(gl: GitLabEmulator, c: Ctx) -> None:
    n = _get_note(gl, c)
    del gl.state.notes[n["id"]]
    return None


def url_path(path: str) -> str:
    """A project or group path as GitLab wants it in a URL (one segment, `/` encoded)."""
    return quote(path, safe="")
