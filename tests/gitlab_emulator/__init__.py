"""A GitLab emulator for tests: GitLab's REST API v4 over real HTTP on 127.0.0.1.

GitLab cannot run on the test machines, so the tests drive this server with the real
python-gitlab client (and real `git push` over smart HTTP). See `GitLabEmulator` for the
endpoints served and the helpers tests use to arrange and inspect state.

Layout: `server.py` (GitLabEmulator, dispatch, ROUTE_MODULES), `handler.py` (HTTP front, health,
git smart HTTP), `model.py` (records, Ctx, errors, pagination), and one module per endpoint family
(`users`, `projects`, `ci`, `runners`, `issues`) each exporting `routes(gl)`. A new endpoint family
is a new module with `routes(gl)` added to `server.ROUTE_MODULES`."""

from .server import GitLabEmulator, Request

__all__ = ["GitLabEmulator", "Request"]
