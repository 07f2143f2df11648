"""The stack file as `docker stack deploy` receives it: the template rendered with the live secret versions."""

from __future__ import annotations

from bidsflux.diagnostics import UserError
from bidsflux.site.render import RenderedStack, render_stack
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document
from bidsflux.validation import load_valid


def secret_versions(stack: str, source: str) -> dict[str, int]:
    if source == "initial":
        return {}
    from bidsflux.swarm.secretstore import live_versions

    try:
        return live_versions(stack)
    except UserError:
        if source == "live":
            raise
        return {}


def load_and_render(repo: Repository, versions_source: str = "auto") -> tuple[RenderedStack, Document]:
    site, template = load_valid(repo)
    versions = secret_versions(site.data["site"]["name"], versions_source)
    return render_stack(site.data, template, versions), site
