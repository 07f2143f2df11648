"""JSON Schema checks of the files under stack/, and of CI and rendered stack files
against the official GitLab CI and compose-spec schemas shipped in check-jsonschema."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker, ValidationError
from jsonschema.validators import extend, validator_for

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


@lru_cache(maxsize=512)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A JSON Schema `pattern` with its ECMA-262 meaning. Schema patterns are ECMA-262 regular
    expressions (JSON Schema 2020-12 validation, 6.3.3; editors check them in JavaScript), where
    `$` matches only at the very end; Python's `$` also matches before a final newline, so
    "bidsflux\\n" would pass "^[a-z]+$". Every `$` outside a character class becomes `\\Z`
    here, so schemas keep the one portable spelling, `^...$`."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append("\\Z" if c == "$" and not in_class else c)
        i += 1
    return re.compile("".join(out))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if ecma_regex(pattern).search(k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


@cache
def ecma_validator(cls: type) -> type:
    """`cls` with `pattern` and `patternProperties` matching as ECMA-262 does (see ecma_regex)."""
    return extend(cls, {"pattern": _pattern, "patternProperties": _pattern_properties})


def validator_of(schema: dict[str, Any], default: type = Draft202012Validator) -> Any:
    """The validator every check of a schema uses (ours, vendored, mercure.json's model)."""
    return ecma_validator(validator_for(schema, default=default))(schema, format_checker=FormatChecker())


@cache
def _validator(schema_path: str) -> Draft202012Validator:
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    return validator_of(schema)


@cache
def _vendor_validator(name: str) -> Draft202012Validator | Draft7Validator:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(f"{name}.json").read_text("utf-8")
    )
    schema = json.loads(text)
    return validator_of(schema, Draft7Validator)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


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
        return f"{_short(error.instance)} should be of type {expected}, found {_json_type(error.instance)}"
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
                extra = [
                    k for k in error.instance
                    if k not in allowed and not any(ecma_regex(p).search(k) for p in patterns)
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
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.append(Diagnostic(str(path.name), 1, 1, "", f"cannot read: {exc}"))
            continue
        out += [Diagnostic(path.name, 1, 1, where, message) for where, message in _schema_text_problems(text)]
    return out


@lru_cache(maxsize=64)
def _schema_text_problems(text: str) -> tuple[tuple[str, str], ...]:
    """Meta-validation of one schema's text (cached: it is a third of what validate spends)."""
    try:
        schema = json.loads(text)
        Draft202012Validator.check_schema(schema)
    except (ValueError, Exception) as exc:  # noqa: BLE001 - any failure is a broken schema
        return (("", f"invalid schema: {str(exc).splitlines()[0]}"),)
    return tuple((where, f"pattern {pattern!r}: {problem}") for where, pattern in _patterns(schema)
                 if (problem := _pattern_problem(pattern)))


def _patterns(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                yield where, v
            elif k == "patternProperties" and isinstance(v, dict):
                yield from ((where, p) for p in v)
                yield from _patterns(v, f"{where}.{k}".lstrip("."))
            else:
                yield from _patterns(v, f"{where}.{k}".lstrip("."))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _patterns(v, f"{where}[{i}]")


# Python-only syntax: JavaScript (editors) reads these differently or not at all.
_NOT_ECMA = re.compile(r"\\[AZz]|\(\?P[<=]|\(\?[aiLmsux]+\)")


def _pattern_problem(pattern: str) -> str | None:
    """Why a schema pattern is not one portable ECMA-262 expression anchored the one way."""
    if _NOT_ECMA.search(pattern):
        return "uses Python-only syntax; write ECMA-262 (anchor the end with $)"
    try:
        ecma_regex(pattern)
    except re.error as exc:
        return f"does not compile: {exc}"
    return None
