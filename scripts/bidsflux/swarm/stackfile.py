"""Loading the site and template and rendering them, with secret versions from the swarm."""

from __future__ import annotations

from bidsflux.diagnostics import UserError
from bidsflux.site.checks import validate
from bidsflux.site.render import RenderedStack, dump_yaml, render_stack
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document, load


def load_valid(repo: Repository) -> tuple[Document, Document]:
    """Site and stack template, after `validate` found nothing wrong (else a UserError listing it)."""
    problems = validate(repo)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the site files; nothing was changed", problems)
    return load(repo.site_file, repo.root), load(repo.stack_template, repo.root)


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


def render_mercure_compose(repo: Repository, site: Document) -> str:
    from bidsflux.site.render import TemplateRenderer, template_context

    doc = load(repo.mercure_compose, repo.root)
    renderer = TemplateRenderer(doc, template_context(site.data, lambda name: name))
    data = {k: v for k, v in renderer.value(doc.data, []).items() if not str(k).startswith("x-")}
    if renderer.errors:
        raise UserError("", renderer.errors)
    return "# Rendered by `bidsflux render` from stack/mercure/docker-compose.yml. Do not edit.\n" + dump_yaml(data)
