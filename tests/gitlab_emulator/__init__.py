"""A GitLab emulator for tests: GitLab's REST API v4 over real HTTP on 127.0.0.1.

GitLab cannot run on the test machines, so the tests drive this server with the real
python-gitlab client (and real `git push` over smart HTTP). See `GitLabEmulator` for the
endpoints served and the helpers tests use to arrange and inspect state."""

from .server import GitLabEmulator, Request

__all__ = ["GitLabEmulator", "Request"]
