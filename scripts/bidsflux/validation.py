"""`bidsflux validate` as a whole: the site package's checks plus each domain's semantics of its own file.

Commands that change something first call `load_valid`, so nothing acts on a file that validate refuses."""

from __future__ import annotations

from bidsflux.diagnostics import Diagnostic, UserError
from bidsflux.gitlab.checks import check_runners_file
from bidsflux.mercure.compose import check_compose_file
from bidsflux.mercure.rules import check_rules_file
from bidsflux.proxy.checks import check_site_tls
from bidsflux.site import checks
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document, load

FILE_CHECKS: dict[str, checks.FileCheck] = {
    "stack/mercure/rules.yml": check_rules_file,
    "stack/runners.yml": check_runners_file,
    "stack/mercure/docker-compose.yml": check_compose_file,
    "stack/site.yml": check_site_tls,
}


def validate(repo: Repository) -> list[Diagnostic]:
    return checks.validate(repo, FILE_CHECKS)


def load_valid(repo: Repository) -> tuple[Document, Document]:
    """Site and stack template, after `validate` found nothing wrong (else a UserError listing it)."""
    problems = validate(repo)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the site files; nothing was changed", problems)
    return load(repo.site_file, repo.root), load(repo.stack_template, repo.root)
