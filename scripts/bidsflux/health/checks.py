"""Every health check, registered in the order `bidsflux health` runs them, and the runner's API."""

from __future__ import annotations

# Importing a check module registers its checks (the @check decorator); order is report order.
from bidsflux.health import backup, disks, endpoint, expiry, gitlab, runners, s3, swarm  # noqa: F401
from bidsflux.health.context import load_context
from bidsflux.health.core import (
    REGISTRY,
    Check,
    Context,
    Report,
    Result,
    Secrets,
    Status,
    check,
    overall,
    run_checks,
    select,
)
from bidsflux.health.endpoint import MERCURE_REQUIRED_KEYS

# The order people read the report in: the platform first, then what runs on it.
ORDER = ("swarm", "gitlab", "runners", "s3", "dicom", "disks", "expiry", "backup")
for _name in ORDER:
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["REGISTRY", "Check", "Context", "Secrets", "check", "MERCURE_REQUIRED_KEYS", "Report", "Result", "Status", "load_context",
           "overall", "run_checks", "select"]
