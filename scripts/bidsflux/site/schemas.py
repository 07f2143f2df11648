"""JSON Schema checks of the files under stack/, and of CI and rendered stack files
against the official GitLab CI and compose-spec schemas shipped in check-jsonschema."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker, ValidationError
from jsonschema.validators import validator_for

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.yamlsource import Document

# stack file (relative to the repository) -> schema file name under schemas/
STACK_SCHEMAS: dict[str, str] = {
    "stack/site.yml": "site.schema.json",
    "stack/bidsflux.stack.yml": "stack-template.schema.json",
    "stack/runners.yml": "runners.schema.json",
    "stack/gitlab.yml": "gitlab.schema.json",
    "stack/mercure/rules.yml": "mercure-rules.schema.json",
    "stack/mercure/docker-compose.yml": "mercure-compose.schema.json",
}


@cache
def _validator(schema_path: str) -> Draft202012Validator:
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, format_checker=FormatChecker())


@cache
def _vendor_validator(name: str) -> Draft202012Validator | Draft7Validator:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(f"{name}.json").read_text("utf-8")
    )
    schema = json.loads(text)
    cls = validator_for(schema, default=Draft7Validator)
    return cls(schema, format_checker=FormatChecker())


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ValidationError) -> str:
    """jsonschema's messages, reworded where the stock text is unhelpful to a person."""
    v = error.validator
    if v == "enum":
        return f"{_short(error.instance)} is not one of {', '.join(map(str, error.validator_value))}"
    if v == "pattern":
        desc = error.schema.get("description")
        hint = f" ({desc.rstrip('.')})" if desc else f" (allowed pattern: {error.validator_value})"
        return f"{_short(error.instance)} is not a valid value{hint}"
    if v == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        if expected == "string" and isinstance(error.instance, int) and error.path and error.path[-1] == "mode":
            # YAML reads an unquoted 0750 as a number (and drops the leading zero)
            return (f"{error.instance} is a number: quote the mode so YAML keeps it as written, "
                    f"e.g. mode: \"0{error.instance}\"" if len(str(error.instance)) == 3
                    else "a mode must be quoted so YAML keeps it as written, e.g. mode: \"0750\"")
        return f"{_short(error.instance)} should be of type {expected}"
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v in ("oneOf", "anyOf"):
        return f"{_short(error.instance)} does not match any allowed form"
    return error.message


def _leaf_errors(error: ValidationError) -> Iterable[ValidationError]:
    """For oneOf/anyOf, report the alternative that came closest rather than a summary."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path):
            yield from _leaf_errors(deepest)
            return
    yield error


def errors_to_diagnostics(doc: Document, errors: Iterable[ValidationError]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for top in errors:
        for error in _leaf_errors(top):
            path = list(error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                allowed = set(error.schema.get("properties", {}))
                patterns = error.schema.get("patternProperties", {})
                import re

                extra = [
                    k for k in error.instance
                    if k not in allowed and not any(re.search(p, k) for p in patterns)
                ]
                known = ", ".join(sorted(allowed)) or "none"
                for key in extra:
                    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                    guess = f"did you mean '{close[0]}'? " if close else ""
                    out.append(doc.diagnostic([*path, key], f"unknown key; {guess}(allowed here: {known})"))
                continue
            if error.validator == "pattern" and error.relative_schema_path and \
                    "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
                # a bad key name: point at the key itself, not at its parent
                out.append(doc.diagnostic([*path, error.instance], f"name {error.instance!r} is not allowed: "
                                          f"use only characters matching {error.validator_value}"))
                continue
            if error.validator == "required":
                missing = error.message.split("'")[1] if "'" in error.message else ""
                out.append(doc.diagnostic(path, f"missing required key '{missing}'" if missing else _message(error)))
                continue
            out.append(doc.diagnostic(path, _message(error)))
    return sorted(set(out))


def check_document(doc: Document, schema_file: Path) -> list[Diagnostic]:
    validator = _validator(str(schema_file))
    return errors_to_diagnostics(doc, validator.iter_errors(doc.data))


def check_vendor(doc: Document, vendor: str) -> list[Diagnostic]:
    """Check against a schema shipped with check-jsonschema: 'gitlab-ci' or 'compose-spec'."""
    return errors_to_diagnostics(doc, _vendor_validator(vendor).iter_errors(doc.data))


def check_schema_files(schema_dir: Path) -> list[Diagnostic]:
    """Our own schemas must be valid 2020-12 schemas (a broken schema would accept anything)."""
    out = []
    for path in sorted(schema_dir.glob("*.schema.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
        except (ValueError, Exception) as exc:  # noqa: BLE001 - any failure is a broken schema
            out.append(Diagnostic(str(path.name), 1, 1, "", f"invalid schema: {str(exc).splitlines()[0]}"))
    return out
