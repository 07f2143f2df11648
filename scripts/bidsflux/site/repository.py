"""Where things live in a bidsflux repository, and loading the site from it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bidsflux.diagnostics import UserError

SITE_FILE = Path("stack/site.yml")


@dataclass(frozen=True)
class Repository:
    root: Path
    site_file: Path

    @property
    def stack_dir(self) -> Path:
        return self.root / "stack"

    @property
    def schema_dir(self) -> Path:
        return self.root / "schemas"

    @property
    def stack_template(self) -> Path:
        return self.stack_dir / "bidsflux.stack.yml"

    @property
    def mercure_compose(self) -> Path:
        return self.stack_dir / "mercure" / "docker-compose.yml"

    @property
    def mercure_rules(self) -> Path:
        return self.stack_dir / "mercure" / "rules.yml"

    @property
    def runners_file(self) -> Path:
        return self.stack_dir / "runners.yml"

    @property
    def gitlab_file(self) -> Path:
        return self.stack_dir / "gitlab.yml"

    @property
    def gitlab_ci(self) -> Path:
        return self.root / ".gitlab-ci.yml"

    @property
    def ci_templates(self) -> Path:
        return self.root / "ci-templates"

    def shown(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def find_root(start: Path) -> Path | None:
    for candidate in [start, *start.parents]:
        if (candidate / SITE_FILE).is_file() and (candidate / "schemas").is_dir():
            return candidate
    return None


def open_repository(site: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None) -> Repository:
    """The repository holding `site` (default: stack/site.yml of the repository around cwd)."""
    if root is not None:
        base = Path(root)
    elif site is not None:
        found = find_root(Path(site).resolve().parent)
        base = found if found is not None else Path(site).resolve().parent.parent
    else:
        found = find_root(Path.cwd())
        if found is None:
            raise UserError(
                "no bidsflux repository here: expected stack/site.yml and schemas/ in this folder "
                "or a parent; run from the repository or pass --root DIR"
            )
        base = found
    site_file = Path(site) if site is not None else base / SITE_FILE
    if not (base / "schemas").is_dir():
        raise UserError(f"{base}: no schemas/ folder; pass --root with the bidsflux repository")
    return Repository(root=base.resolve(), site_file=site_file.resolve())
