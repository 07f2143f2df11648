"""Emulated application settings (`GET|PUT /application/settings`), the part bidsflux touches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import IMPORT_SOURCES, Ctx, HTTPError, RouteSpec, as_list

if TYPE_CHECKING:
    from .server import GitLabEmulator


def _get(gl: GitLabEmulator) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in gl.state.settings.items()}


def _put(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    # lib/api/settings.rb: import_sources is `Array[String]` coerced from a comma list, each one of
    # Gitlab::ImportSources values, else Grape's 400 "does not have a valid value". The PUT replaces
    # the whole list (it is one column), so a client must send what it wants to keep.
    if "import_sources" in c.params:
        sources = as_list(c.params["import_sources"])
        if any(s not in IMPORT_SOURCES for s in sources):
            raise HTTPError(400, {"error": "import_sources does not have a valid value"})
        gl.state.settings["import_sources"] = sources
    c.status = 200
    return _get(gl)


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """Admin only (lib/api/settings.rb `before { authenticated_as_admin! }`): others get 403."""
    return [
        ("GET", r"/application/settings", lambda c: _get(gl), "read", True),
        ("PUT", r"/application/settings", lambda c: _put(gl, c), "write", True),
    ]
