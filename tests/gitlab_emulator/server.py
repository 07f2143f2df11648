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
import re
import secrets
import shutil
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from . import ci, deploy_tokens, issues, keys, members, pipelines, projects, runners, settings, users
from .handler import RequestHandler
from .model import Ctx, Handler, HTTPError, Request, Runner, State, Token, iso, member_level, now

# Each route module contributes `routes(gl)`; a new endpoint family is a new module listed here.
ROUTE_MODULES = [users, projects, ci, pipelines, runners, issues, keys, settings, members, deploy_tokens]


class GitLabEmulator:
    """A GitLab emulator serving REST API v4 on http://127.0.0.1:<random port>.

    Served (under /api/v4): `GET /user`, users (list by `username`, get, create, delete),
    `POST /users/:id/personal_access_tokens`, personal access tokens (list with `user_id`/`state`/
    `revoked` filters, `self`, get, `rotate` and `self/rotate`, delete), groups and projects
    (by id or URL-encoded full path; create/update/delete; `import_url`, `import_status`,
    `only_allow_merge_if_pipeline_succeeds`...), protected branches, instance CI variables
    (`/admin/ci/variables`, masked/protected/raw), pipeline schedules and their variables,
    runners (`POST /user/runners`, `GET /runners`, `/runners/all`, `GET|PUT|DELETE /runners/:id`,
    `POST /runners/verify`), project issues, merge requests and their notes, a branch
    (`GET /projects/:id/repository/branches/:name`), pipelines (`POST /projects/:id/pipeline`
    checking the CI configuration `ci_config_path` names, `GET /projects/:id/pipelines[/:id]`), project deploy
    tokens (`GET|POST /projects/:id/deploy_tokens`, `GET|DELETE /projects/:id/deploy_tokens/:id`). Outside the API:
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
      set_pipeline_status(pipeline_id, status)   what a runner's job updates would do
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
        # gitlab_shell ssh host:port used in ssh_url_to_repo; the shared secret of /internal (keys.py)
        self.ssh_authority = "gitlab.invalid:222"
        self.shell_secret = secrets.token_hex(16)
        root = self.add_user("root", "Administrator", "admin@example.com", admin=True)
        self.admin_token = self.create_token(root["username"], ["api", "sudo", "admin_mode"], name="emulator-admin")
        self.routes = compile_routes(self)
        # Client addresses allowed to see /-/health, /-/readiness, /-/liveness: omnibus default of
        # gitlab_rails['monitoring_whitelist'] (doc/administration/monitoring/ip_allowlist.md).
        self.monitoring_allowlist: list[str] = ["127.0.0.0/8", "::1/128"]
        # What GitLab sees as the client address of a request on `url`. None: the TCP peer. A swarm
        # port published in host mode reaches the task through docker_gwbridge, so GitLab sees the
        # bridge's gateway (e.g. 172.18.0.1), not 127.0.0.1; tests set that here. `inside_url` is a
        # second listener standing for the task's own localhost (what `docker exec ... curl` reaches).
        self.published_source_ip: str | None = None
        self.inside_server: ThreadingHTTPServer | None = None
        self.inside_url = ""

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

        class _Inside(RequestHandler):
            gitlab = emulator
            inside = True

        self.inside_server = ThreadingHTTPServer(("127.0.0.1", 0), _Inside)
        self.inside_server.daemon_threads = True
        self.inside_url = f"http://127.0.0.1:{self.inside_server.server_address[1]}"
        threading.Thread(target=self.inside_server.serve_forever, name="gitlab-emulator-inside", daemon=True).start()
        return self

    def serve_unix(self, path: str) -> None:
        """Also serve on a Unix socket (for containers of a test, through a bind mount)."""
        serve_unix(self, path)

    def stop(self, keep_git: bool = False) -> None:
        for srv in (self.server, self.inside_server):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        self.server = self.inside_server = None
        for server in self.__dict__.pop("unix_servers", []):
            server.shutdown()
            server.server_close()
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
    def add_user(self, username: str, name: str, email: str, admin: bool = False, bot: bool = False) -> dict[str, Any]:
        uid = self.state.new_id("user")
        user = {"id": uid, "username": username, "name": name, "email": email, "state": "active",
                "is_admin": admin, "bot": bot, "created_at": iso(now()), "avatar_url": None,
                "web_url": f"{self.url}/{username}", "projects_limit": 100000,
                "can_create_group": True, "can_create_project": True, "external": False}
        self.state.users[uid] = user
        return user

    def create_user(self, username: str, admin: bool = False, name: str | None = None) -> dict[str, Any]:
        with self.lock:
            return dict(self.add_user(username, name or username, f"{username}@example.com", admin=admin))

    def mint(self, user_id: int, name: str, scopes: list[str], expires_at: dt.date | None,
              family: int = 0) -> Token:
        tid = self.state.new_id("token")
        tok = Token(id=tid, value="glpat-" + secrets.token_urlsafe(15), name=name, user_id=user_id,
                    scopes=list(scopes), expires_at=expires_at, created_at=now(), family=family or tid)
        self.state.tokens[tid] = tok
        return tok

    def create_token(self, username: str, scopes: list[str], expires_at: dt.date | None = None,
                     name: str = "test-token") -> str:
        with self.lock:
            user = self.user_by_username(username)
            if user is None:
                raise KeyError(username)
            exp = expires_at or (now().date() + dt.timedelta(days=30))
            return self.mint(user["id"], name, scopes, exp).value

    def add_token_record(self, user_id: int, value: str, name: str, scopes: list[str],
                         expires_at: dt.date | None) -> Token:
        """A token whose value was chosen outside (what `gitlab-rails runner ... set_token` does)."""
        with self.lock:
            tok = self.mint(user_id, name, scopes, expires_at)
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

    runner_token_expiration_interval: int | None = None  # seconds; application setting, default unset

    def runner_token_expiry(self) -> dt.datetime | None:
        """token_expires_at of a new runner token: set only when an admin configured
        runner_token_expiration_interval (default nil -> tokens never expire)."""
        if self.runner_token_expiration_interval is None:
            return None
        return now() + dt.timedelta(seconds=self.runner_token_expiration_interval)

    def set_runner_token_expiry(self, runner_id: int, expires_at: dt.datetime | None) -> None:
        with self.lock:
            self.state.runners[runner_id].token_expires_at = expires_at

    def set_health(self, ready: bool = True, live: bool = True, registry: bool = True,
                   failing_checks: tuple[str, ...] = ()) -> None:
        with self.lock:
            self.health = {"ready": ready, "live": live, "registry": registry, "failing": set(failing_checks)}

    def registry_signing_key(self) -> Any:
        """The key /jwt/auth signs registry tokens with; its certificate (`.cert_pem`) is what a
        registry configured with `auth: token` must trust (`rootcertbundle`)."""
        from .registry_auth import SigningKey

        with self.lock:
            if getattr(self, "_registry_key", None) is None:
                self._registry_key = SigningKey()
            return self._registry_key

    def set_pipeline_status(self, pipeline_id: int, status: str) -> None:
        """What a runner's job updates do to a pipeline (the emulator runs no jobs)."""
        with self.lock:
            self.state.pipelines[pipeline_id]["status"] = status
            self.state.pipelines[pipeline_id]["updated_at"] = iso(now())

    def repo_dir(self, project: dict[str, Any]) -> Path:
        return self.git_root / f"{project['id']}.git"

    def repo_refs(self, project: dict[str, Any]) -> tuple[set[str], set[str]]:
        """(branches, tags) of the project's repository (empty sets for an empty repository)."""
        import subprocess

        repo = self.repo_dir(project)
        if not repo.exists():
            return set(), set()
        out = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname)"],
                             capture_output=True, text=True, check=False).stdout.split()
        return ({r[len("refs/heads/"):] for r in out if r.startswith("refs/heads/")},
                {r[len("refs/tags/"):] for r in out if r.startswith("refs/tags/")})

    def ref_protected(self, project: dict[str, Any], ref: str) -> bool:
        """Project#protected_for?(ref) (app/models/project.rb): only a branch or tag ref can be
        protected; refs/merge-requests/<iid>/head (merge-request pipelines) never is in 17.x."""
        if ref.startswith("refs/heads/"):
            name = ref[len("refs/heads/"):]
        elif ref.startswith("refs/tags/") or ref.startswith("refs/merge-requests/"):
            return False
        else:
            name = ref
        return name in self.state.protected.get(project["id"], {})

    def pipeline_variables(self, project_path: str, ref: str) -> dict[str, str]:
        """Instance variables a pipeline for `ref` receives: lib/gitlab/ci/variables/builder.rb
        filters secret variables with `protected_ref: project.protected_for?(pipeline.jobs_git_ref)`
        (Ci::InstanceVariable.unprotected_cached otherwise). Merge-request pipelines run on
        refs/merge-requests/<iid>/head and get no protected variable (doc/ci/pipelines/merge_request_pipelines.md)."""
        with self.lock:
            project = self.project_by_ref(project_path)
            if project is None:
                raise KeyError(project_path)
            protected = self.ref_protected(project, ref)
            return {k: v["value"] for k, v in self.state.variables.items() if protected or not v["protected"]}

    def client_allowed(self, ip: str) -> bool:
        import ipaddress

        addr = ipaddress.ip_address(ip)
        return any(addr in ipaddress.ip_network(n, strict=False) for n in self.monitoring_allowlist)

    def fail_requests(self, pattern: str, status: int = 500, times: int = 1) -> None:
        """The next `times` API requests whose 'METHOD /path' matches `pattern` answer `status`."""
        with self.lock:
            self.failures.append((re.compile(pattern), status, times))

    # ---- lookups -----------------------------------------------------------------------------
    def user_by_username(self, username: str) -> dict[str, Any] | None:
        return next((u for u in self.state.users.values() if u["username"].lower() == username.lower()), None)

    def authenticate(self, value: str | None) -> Token | None:
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

    def namespace(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self.state.groups.get(int(ref))
        return next((g for g in self.state.groups.values() if g["full_path"].lower() == ref.lower()), None)

    def project_by_ref(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self.state.projects.get(int(ref))
        return next((p for p in self.state.projects.values()
                     if p["path_with_namespace"].lower() == ref.lower()), None)

    def dispatch(self, method: str, path: str, params: dict[str, Any], user: dict[str, Any] | None,
                 tok: Token | None, query: dict[str, Any] | None = None) -> tuple[int, Any, dict[str, str]]:
        return dispatch(self, method, path, params, user, tok, query)

    def issue_token_for_push(self, project_path: str, value: str | None) -> tuple[dict[str, Any], bool]:
        """(project, may_write) for git smart HTTP; raises HTTPError like the API does."""
        with self.lock:
            tok = self.authenticate(value)
            project = self.project_by_ref(project_path)
            if tok is None:
                raise HTTPError(401, "HTTP Basic: Access denied", {"WWW-Authenticate": 'Basic realm="GitLab"'})
            if project is None:
                raise HTTPError(404, "The project you were looking for could not be found.")
            user = self.state.users[tok.user_id]
            if not (user["is_admin"] or member_level(self, project, user) >= 30):
                raise HTTPError(404, "The project you were looking for could not be found.")
            may_write = bool({"api", "write_repository"} & set(tok.scopes))
            return project, may_write



def serve_unix(gl: GitLabEmulator, path: str) -> None:
    import socketserver

    class _UnixHandler(RequestHandler):
        gitlab = gl

        def setup(self) -> None:  # no TCP options on a Unix socket
            socketserver.StreamRequestHandler.setup(self)

        def address_string(self) -> str:
            return "unix"

    class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = _Server(path, _UnixHandler)
    gl.__dict__.setdefault("unix_servers", []).append(server)
    threading.Thread(target=server.serve_forever, name="gitlab-emulator-unix", daemon=True).start()


def compile_routes(gl: GitLabEmulator) -> list[tuple[str, re.Pattern[str], Handler, str, bool]]:
    return [(m, re.compile(f"^{p}/?$"), h, s, a) for mod in ROUTE_MODULES for m, p, h, s, a in mod.routes(gl)]


def dispatch(gl: GitLabEmulator, method: str, path: str, params: dict[str, Any],
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
        ctx = Ctx(method, args, params, user, tok, link_base=f"{gl.url}/api/v4{path}", query=query or {})
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



def url_path(path: str) -> str:
    """A project or group path as GitLab wants it in a URL (one segment, `/` encoded)."""
    return quote(path, safe="")
