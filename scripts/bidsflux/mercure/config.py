"""stack/mercure/rules.yml (+ site.yml) -> Mercure's mercure.json, and merging it into a live one.

Mercure's configuration model (0.4.1) wants things people should not write by hand: a module's
environment, docker_arguments and additional_volumes as JSON-encoded strings, every rule and
module field spelled out, targets with an explicit target_type. This module produces exactly
that, and merges only the parts the site manages into an existing mercure.json so settings made
in Mercure (bookkeeper token, folders, anything else) stay as they are.

Secrets never enter mercure.json: a module listing `secrets` gets each one bind-mounted read-only
from a root-only folder on the data server at /var/run/secrets/<name>, where the dicom_indexer
image reads them.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import Diagnostic, UserError
from bidsflux.site import endpoints
from bidsflux.site import indexer as site_indexer
from bidsflux.site.sandbox import TEMPLATE_FAILURES, BoundedSandbox, describe, time_limit
from bidsflux.site.yamlsource import Document

SCHEMA_FILE = "mercure-json.schema.json"
SECRETS_MOUNT = "/var/run/secrets"
SECRETS_SUBDIR = "mercure-secrets"
REDACTED = "<redacted>"

# Mercure 0.4.1's own defaults for a fresh install (its default_mercure.json plus the fields the
# 0.4.1 model adds), as in ../shared/reference/mercure.example.json. bookkeeper_api_key is a
# placeholder the installer replaces; bidsflux never manages it.
MERCURE_DEFAULTS: dict[str, Any] = {
    "appliance_name": "master",
    "appliance_color": "#FFF",
    "port": 11112,
    "accept_compressed_images": False,
    "support_root_modules": False,
    "incoming_folder": "/opt/mercure/data/incoming",
    "studies_folder": "/opt/mercure/data/studies",
    "outgoing_folder": "/opt/mercure/data/outgoing",
    "success_folder": "/opt/mercure/data/success",
    "error_folder": "/opt/mercure/data/error",
    "discard_folder": "/opt/mercure/data/discard",
    "processing_folder": "/opt/mercure/data/processing",
    "jobs_folder": "/opt/mercure/data/jobs",
    "persistence_folder": "/opt/mercure/persistence",
    "bookkeeper": "bookkeeper:8080",
    "bookkeeper_api_key": "BOOKKEEPER_TOKEN_PLACEHOLDER",
    "graphite_ip": "",
    "graphite_port": 2003,
    "influxdb_host": "",
    "influxdb_org": "",
    "influxdb_token": "",
    "influxdb_bucket": "",
    "router_scan_interval": 1,
    "series_complete_trigger": 60,
    "study_complete_trigger": 900,
    "study_forcecomplete_trigger": 5400,
    "dispatcher_scan_interval": 1,
    "retry_delay": 900,
    "retry_max": 5,
    "cleaner_scan_interval": 60,
    "retention": 259200,
    "offpeak_start": "22:00",
    "offpeak_end": "06:00",
    "emergency_clean_percentage": 90,
    "phi_notifications": False,
    "server_time": "UTC",
    "local_time": "UTC",
    "process_runner": "docker",
    "features": {"dummy_target": False},
    "processing_logs": {"discard_logs": False},
    "dicom_receiver": {"additional_tags": {}},
    "targets": {},
    "rules": {},
    "modules": {},
}

RULE_DEFAULTS: dict[str, Any] = {
    "rule": "False",
    "target": "",
    "disabled": False,
    "fallback": False,
    "contact": "",
    "comment": "",
    "tags": "",
    "action": "route",
    "action_trigger": "series",
    "study_trigger_condition": "timeout",
    "study_trigger_series": "",
    "study_force_completion_action": "discard",
    "priority": "normal",
    "processing_module": [],
    "processing_settings": [],
    "processing_retain_images": False,
    "notification_email": "",
    "notification_webhook": "",
    "notification_payload": "",
    "notification_payload_body": "",
    "notification_email_body": "",
    "notification_email_type": "plain",
    "notification_trigger_reception": False,
    "notification_trigger_completion": False,
    "notification_trigger_completion_on_request": False,
    "notification_trigger_error": False,
}

MODULE_DEFAULTS: dict[str, Any] = {
    "docker_tag": "",
    "additional_volumes": "",
    "environment": "",
    "docker_arguments": "",
    "settings": {},
    "contact": "",
    "comment": "",
    "constraints": "",
    "resources": "",
    "requires_root": False,
    "requires_persistence": False,
    "persistence_folder_name": "",
    "network_enabled": False,
}

# Resource limits only (the same list as the rules schema): Mercure sets volumes, environment,
# network, user and capabilities itself and refuses privileged arguments.
ALLOWED_DOCKER_ARGUMENTS = frozenset({
    "mem_limit", "memswap_limit", "mem_reservation", "shm_size", "cpu_quota", "cpu_period",
    "cpu_shares", "cpuset_cpus", "nano_cpus", "pids_limit", "read_only", "runtime",
})
# The indexer's positional input: Mercure puts the study in MERCURE_IN_DIR=/tmp/data.
MERCURE_IN_DIR = "/tmp/data"

# rules.yml settings -> top-level mercure.json keys bidsflux manages.
SETTING_KEYS = {
    ("receiver", "port"): "port",
    ("receiver", "accept_compressed_images"): "accept_compressed_images",
    ("series_complete_trigger",): "series_complete_trigger",
    ("study_complete_trigger",): "study_complete_trigger",
    ("study_forcecomplete_trigger",): "study_forcecomplete_trigger",
}
# The receiver reads these only at start: a change needs a restart of its container.
RECEIVER_KEYS = ("port", "accept_compressed_images", "dicom_receiver")
# Values that are credentials wherever they appear; never shown in plans or output.
SECRET_KEYS = frozenset({
    "bookkeeper_api_key", "influxdb_token", "password", "secret_access_key", "access_key_id",
    "access_token", "http_password",
})


@dataclass
class Managed:
    """The parts of mercure.json the repository owns."""

    settings: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)


def persistence_folder(site: Mapping[str, Any]) -> str:
    """Module persistence folder: the same path on the host and in Mercure's processor container."""
    return f"{site['paths']['mercure_base']['path'].rstrip('/')}/persistence"


def secrets_dir(site: Mapping[str, Any]) -> str:
    """Root-only folder on the data server holding one file per module secret."""
    return f"{site['paths']['state_dir']['path'].rstrip('/')}/{SECRETS_SUBDIR}"


def _expand(env: BoundedSandbox, text: Any, site: Mapping[str, Any], doc: Document,
            path: list[Any], errors: list[Diagnostic]) -> Any:
    if not isinstance(text, str) or ("{{" not in text and "{%" not in text):
        return text
    try:
        with time_limit():
            return env.from_string(text).render(**site)
    except TEMPLATE_FAILURES as exc:
        errors.append(doc.diagnostic(path, describe(exc)))
        return text


def _json_string(value: Mapping[str, Any]) -> str:
    # Mercure decodes these with json.loads; an empty mapping is written as "" like the GUI does.
    return json.dumps(dict(value), sort_keys=True) if value else ""


def indexer_environment(site: Mapping[str, Any]) -> dict[str, str]:
    """What the dicom_indexer reads from its environment (see site/indexer.py)."""
    return site_indexer.indexer_environment(site)


def indexer_arguments(site: Mapping[str, Any]) -> list[str]:
    """The dicom_indexer's command line under Mercure: options from site.yml, input folder last."""
    return site_indexer.indexer_arguments(site, MERCURE_IN_DIR)


def convert_module(name: str, spec: Mapping[str, Any], site: Mapping[str, Any], doc: Document,
                   env: BoundedSandbox, errors: list[Diagnostic]) -> dict[str, Any]:
    base = ["modules", name]
    environment = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (spec.get("environment") or {}).items()}
    arguments = dict(spec.get("docker_arguments") or {})
    for key in arguments:
        if key not in ALLOWED_DOCKER_ARGUMENTS:
            errors.append(doc.diagnostic([*base, "docker_arguments", key],
                                         f"'{key}' is not a docker argument Mercure allows ({', '.join(sorted(ALLOWED_DOCKER_ARGUMENTS))})"))
    if spec.get("indexer"):
        for key, value in indexer_environment(site).items():
            if key in environment and environment[key] != value:
                errors.append(doc.diagnostic([*base, "environment", key], f"set by bidsflux from site.yml ({value!r}); remove it here"))
            environment[key] = value
        # Mercure 0.4.1 passes docker_arguments to docker-py's containers.run, so `command` is
        # how the indexer gets its options and input folder; bidsflux alone writes this key.
        arguments["command"] = indexer_arguments(site)
        # GitLab's HTTPS and SSH and S3 at the data node's address (site/indexer.py: "Reach"):
        # docker-py's extra_hosts mapping, which the daemon resolves for host-gateway. Like
        # `command`, Mercure strips it if MERCURE_FORBID_UNSAFE_DOCKER_ARGS is set.
        arguments["extra_hosts"] = site_indexer.indexer_extra_hosts(site)
    volumes: dict[str, dict[str, str]] = {}
    for secret in spec.get("secrets") or []:
        volumes[f"{secrets_dir(site)}/{secret}"] = {"bind": f"{SECRETS_MOUNT}/{secret}", "mode": "ro"}
    if spec.get("indexer"):
        volumes[endpoints.host_ca_bundle(site)] = {"bind": endpoints.CA_BUNDLE_PATH, "mode": "ro"}
    out = dict(MODULE_DEFAULTS)
    out.update({
        "docker_tag": _expand(env, spec["image"], site, doc, [*base, "image"], errors),
        "additional_volumes": _json_string(volumes),
        "environment": _json_string({k: _expand(env, v, site, doc, [*base, "environment", k], errors) for k, v in environment.items()}),
        "docker_arguments": _json_string(arguments),
        "comment": spec.get("comment", ""),
        # entrypoint.sh writes the container's SSH key to /root/.ssh: the indexer runs as root.
        "requires_root": bool(spec.get("requires_root", False) or spec.get("indexer")),
        "requires_persistence": bool(spec.get("requires_persistence", False)),
        "network_enabled": bool(spec.get("network_enabled", False)),
    })
    return out


def convert_rule(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(RULE_DEFAULTS)
    for key in ("rule", "action", "action_trigger", "study_trigger_condition", "study_trigger_series",
                "disabled", "priority", "comment"):
        if key in spec:
            out[key] = spec[key]
    out["target"] = spec.get("target", "")
    module = spec.get("processing_module")
    # Mercure 0.4.1 runs a list of modules in turn, each with its own settings object.
    out["processing_module"] = [module] if module else []
    out["processing_settings"] = [{}] if module else []
    return out


def convert_target(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {"contact": "", "comment": ""}
    out.update({k: v for k, v in spec.items() if k != "type"})
    out["target_type"] = spec["type"]
    if "port" in out:
        out["port"] = str(out["port"])  # Mercure's DicomTarget.port is a string
    return out


def managed_config(site: Mapping[str, Any], rules: Document) -> Managed:
    """What rules.yml asks of mercure.json; a UserError with file:line for anything wrong."""
    errors: list[Diagnostic] = []
    env = BoundedSandbox()
    data = rules.data or {}
    managed = Managed()
    settings = data.get("settings") or {}
    for path, key in SETTING_KEYS.items():
        node: Any = settings
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            managed.settings[key] = node
    # Mercure's processor bind-mounts <persistence_folder>/<module> into modules by that path on
    # the host, so the folder has the same path on the host and in the processor container.
    managed.settings["persistence_folder"] = persistence_folder(site)
    for name, spec in sorted((data.get("targets") or {}).items()):
        managed.targets[name] = convert_target(spec)
    for name, spec in sorted((data.get("modules") or {}).items()):
        managed.modules[name] = convert_module(name, spec, site, rules, env, errors)
    for name, spec in sorted((data.get("rules") or {}).items()):
        managed.rules[name] = convert_rule(spec)
    if any(m["requires_root"] for m in managed.modules.values()):
        # Mercure refuses a root module unless this is set (process_series.py, 0.4.1).
        managed.settings["support_root_modules"] = True
    if errors:
        raise UserError("the Mercure rules cannot be converted; nothing was changed", errors)
    return managed


def merge(live: Mapping[str, Any], managed: Managed, prune: bool = False) -> dict[str, Any]:
    """`live` with the managed parts put in; everything else exactly as it was. With `prune`,
    rules, modules and targets the repository does not define are removed."""
    out = copy.deepcopy(dict(live))
    out.update(copy.deepcopy(managed.settings))
    for section in ("rules", "modules", "targets"):
        current = dict(out.get(section) or {})
        wanted = getattr(managed, section)
        if prune:
            current = {k: v for k, v in current.items() if k in wanted}
        current.update(copy.deepcopy(wanted))
        out[section] = current
    return out


def unmanaged_entries(live: Mapping[str, Any], managed: Managed) -> dict[str, list[str]]:
    """Rules, modules and targets present in Mercure but not in rules.yml."""
    return {
        section: sorted(set(live.get(section) or {}) - set(getattr(managed, section)))
        for section in ("rules", "modules", "targets")
        if set(live.get(section) or {}) - set(getattr(managed, section))
    }


def render_config(site: Mapping[str, Any], rules: Document) -> dict[str, Any]:
    """A complete mercure.json: Mercure's defaults with the managed parts merged in."""
    return merge(MERCURE_DEFAULTS, managed_config(site, rules))


def receiver_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k in RECEIVER_KEYS if old.get(k) != new.get(k)]


def redact(value: Any) -> Any:
    """A copy safe to print: credential values replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if k in SECRET_KEYS and v not in ("", None, "BOOKKEEPER_TOKEN_PLACEHOLDER") else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def dumps(config: Mapping[str, Any]) -> str:
    """mercure.json text: stable key order so an unchanged config gives the same bytes."""
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plan as typed changes for merge-request notes: names and changed field names only,
    never values (a module's environment may name credentials)."""
    out: list[dict[str, Any]] = []
    if old is None:
        # A missing file is one change; its default settings are not worth listing one by one.
        out.append({"kind": "file", "action": "create", "name": "mercure.json", "fields": {}})
    for section, kind in (("rules", "rule"), ("modules", "module"), ("targets", "target")):
        before, after = (old or {}).get(section) or {}, new.get(section) or {}
        for name in sorted(set(before) | set(after)):
            if name not in before:
                out.append({"kind": kind, "action": "create", "name": name, "fields": {}})
            elif name not in after:
                out.append({"kind": kind, "action": "remove", "name": name, "fields": {}})
            elif before[name] != after[name]:
                fields = sorted(k for k in set(before[name]) | set(after[name]) if before[name].get(k) != after[name].get(k))
                out.append({"kind": kind, "action": "update", "name": name, "fields": {f: {} for f in fields}})
    for key in sorted(set(old or {}) | set(new)) if old is not None else []:
        if key in ("rules", "modules", "targets") or old.get(key) == new.get(key):
            continue
        action = "create" if key not in old else "remove" if key not in new else "update"
        out.append({"kind": "setting", "action": action, "name": key, "fields": {}})
    return out


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any], name: str = "mercure.json") -> str:
    """Unified diff of the two configurations, credentials redacted."""
    a = dumps(redact(old)).splitlines(keepends=True) if old is not None else []
    b = dumps(redact(new)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"{name} (live)", f"{name} (wanted)"))


@cache
def _validator():  # type: ignore[no-untyped-def]
    from bidsflux.site.schemas import validator_of

    path = Path(__file__).resolve().parents[3] / "schemas" / SCHEMA_FILE
    return validator_of(json.loads(path.read_text(encoding="utf-8")))


def model_problems(config: Mapping[str, Any], schema_dir: Path | None = None) -> list[str]:
    """Why Mercure 0.4.1's configuration model would refuse `config` (empty when it loads)."""
    if schema_dir is not None:
        from bidsflux.site.schemas import validator_of

        validator = validator_of(json.loads((schema_dir / SCHEMA_FILE).read_text(encoding="utf-8")))
    else:
        validator = _validator()
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message}")
    for name, module in (config.get("modules") or {}).items():
        for key in ("environment", "docker_arguments", "additional_volumes"):
            text = module.get(key) if isinstance(module, dict) else None
            if text:
                try:
                    if not isinstance(json.loads(text), dict):
                        out.append(f"modules.{name}.{key}: not a JSON object")
                except ValueError as exc:
                    out.append(f"modules.{name}.{key}: not valid JSON ({exc})")
    return out


__all__ = [
    "ALLOWED_DOCKER_ARGUMENTS", "MERCURE_DEFAULTS", "MODULE_DEFAULTS", "RULE_DEFAULTS", "Managed",
    "diff", "dumps", "indexer_arguments", "indexer_environment", "managed_config", "merge",
    "model_problems", "receiver_changed", "redact", "render_config", "secrets_dir", "unmanaged_entries",
]
