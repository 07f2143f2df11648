"""The emulator's HTTP front: API requests, health endpoints, registry ping, git smart HTTP, stand-in hooks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .model import HTTPError, Request, as_bool, as_list, now

if TYPE_CHECKING:
    from .server import GitLabEmulator


class RequestHandler(BaseHTTPRequestHandler):
    gitlab: GitLabEmulator
    inside = False  # True on the listener that stands for the GitLab task's own localhost
    protocol_version = "HTTP/1.1"

    def client_ip(self) -> str:
        """The address GitLab attributes the request to (Rack::Request#ip, see the emulator's
        published_source_ip): the gateway of docker_gwbridge for a host-mode published port."""
        if not self.inside and self.gitlab.published_source_ip:
            return self.gitlab.published_source_ip
        return str(self.client_address[0])

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
        elif raw_path == "/jwt/auth":
            from .registry_auth import jwt_auth

            with gl.lock:
                status, body = jwt_auth(gl, self.headers.get("Authorization"), query)
            self._send(status, body, {"WWW-Authenticate": 'Basic realm="GitLab"'} if status == 401 else None)
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
                user = gl.user_by_username(str(form.get("user", "")))
                if user is None:
                    self._send(422, "no such user")
                    return
                exp = now().date() + dt.timedelta(days=int(form.get("days", 1)))
                tok = gl.add_token_record(user["id"], str(form["token"]), str(form["name"]),
                                          as_list(form.get("scopes")), exp)
                self._send(200, f"bidsflux-token-id={tok.id}\n")
            elif path.endswith("/revoke"):
                # PersonalAccessToken.active.where(id: ids, name: name).each(&:revoke!)
                ids = {int(i) for i in str(form.get("id", "")).split(",") if i.strip().isdigit()}
                n = 0
                for t in gl.state.tokens.values():
                    if t.id in ids and t.name == form.get("name") and t.active():
                        t.revoked, n = True, n + 1
                self._send(200, f"bidsflux-revoked={n}\n")
            else:
                self._send(404, "unknown stand-in hook")

    def _health(self, path: str, query: dict[str, Any]) -> None:
        gl = self.gitlab
        with gl.lock:
            h = dict(gl.health)
            allowed = gl.client_allowed(self.client_ip())
        if path in ("/-/health", "/-/liveness", "/-/readiness") and not allowed:
            if path == "/-/health":
                # lib/gitlab/middleware/basic_health_check.rb: EMPTY_RESPONSE = [404, text/plain, [""]]
                # unless Settings.monitoring.ip_whitelist includes request.ip.
                self._send(404, "")
            else:
                # app/controllers/concerns/requires_allowlisted_monitoring_client.rb: render_404
                # (GitLab's HTML not-found page) unless the client IP is allow-listed.
                self._send(404, b"<!DOCTYPE html>\n<html><head><title>The page you're looking for could not be found (404)"
                                b"</title></head><body><h1>404</h1></body></html>\n", {"Content-Type": "text/html; charset=utf-8"})
            return
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
            elif ctype == "multipart/form-data":
                params.update(_multipart(self.headers.get("Content-Type") or "", body))
            else:
                params.update(_params(parse_qsl(body.decode(), keep_blank_values=True)))
        decoded = "/".join(unquote(s) for s in path.split("/"))
        # lib/gitlab/auth/auth_finders.rb: the PRIVATE-TOKEN header, or a private_token parameter.
        token_value = self.headers.get("PRIVATE-TOKEN") or params.pop("private_token", None)
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
                tok = gl.authenticate(token_value)
                user = gl.state.users[tok.user_id] if tok else None
                username = user["username"] if user else None
                status, payload, headers = gl.dispatch( method, path, params, user, tok, query)
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
        repo_dir = gl.repo_dir(project)
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


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Fields of a multipart/form-data body (what `curl -F` sends); Grape reads them like a form."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True) or b""
            out[str(name)] = payload.decode(part.get_content_charset() or "utf-8")
    return out


def _params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k.endswith("[]"):
            out.setdefault(k[:-2], []).append(v)
        else:
            out[k] = v
    return out

