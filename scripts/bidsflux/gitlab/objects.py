"""GitLab objects of stack/gitlab.yml, the public face: desired state (spec), connection (client),
the reconcile loop (reconcile) over one module per object kind (users, groups, projects,
variables, schedules). Other packages import from here."""

from __future__ import annotations

from bidsflux.gitlab.client import (
    connect,
    get_or_none,
    gitlab_errors,
    load_config,
    scrub,
    secret_values_from,
    site_url,
)
from bidsflux.gitlab.reconcile import (
    KINDS,
    SCHEDULE_KINDS,
    ApplyResult,
    Change,
    Observed,
    Plan,
    apply,
    diff,
    field_changes,
    observe,
)
from bidsflux.gitlab.spec import (
    ACCESS,
    ACCESS_NAMES,
    DEFAULT_REF,
    Desired,
    ProjectSpec,
    ScheduleSpec,
    TokenSpec,
    UserSpec,
    VariableSpec,
    desired,
    full_ref,
    is_url,
    utc_today,
)
from bidsflux.gitlab.variables import put_variable

__all__ = [
    "ACCESS", "ACCESS_NAMES", "DEFAULT_REF", "KINDS", "SCHEDULE_KINDS", "ApplyResult", "Change", "Desired", "Observed",
    "Plan", "ProjectSpec", "ScheduleSpec", "TokenSpec", "UserSpec", "VariableSpec", "apply", "connect", "desired", "diff",
    "field_changes", "full_ref", "get_or_none", "gitlab_errors", "is_url", "load_config", "observe", "put_variable",
    "scrub", "secret_values_from", "site_url", "utc_today",
]
