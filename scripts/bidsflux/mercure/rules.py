"""Semantics of stack/mercure/rules.yml that no schema expresses: references between rules,
modules and targets, rule expressions, and study_trigger_series syntax."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.yamlsource import Document

# Built-ins a rule may call; Mercure evaluates rules over `tags` only.
SAFE_BUILTINS = {"len", "int", "float", "str", "bool", "abs", "min", "max", "any", "all", "True", "False", "None"}
_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.Is, ast.IsNot, ast.Attribute, ast.Subscript, ast.Constant, ast.Name, ast.Load,
    ast.Call, ast.List, ast.Tuple, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod,
    ast.Slice, ast.keyword,
)


def check_rule_expression(expr: str) -> str | None:
    """None when `expr` is a safe rule expression over `tags`, else the reason it is not."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        return f"rule is not a valid Python expression: {exc.msg} (column {exc.offset})"
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return f"rule uses {type(node).__name__}, which Mercure rules do not allow"
        if isinstance(node, ast.Name) and node.id != "tags" and node.id not in SAFE_BUILTINS:
            return f"rule uses the name '{node.id}'; only 'tags' and safe built-ins ({', '.join(sorted(SAFE_BUILTINS - {'True', 'False', 'None'}))}) are available"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"rule reaches the private attribute '{node.attr}'"
    return None


_SERIES_TOKEN = re.compile(r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>\band\b|\bor\b)|(?P<paren>[()]))")


def check_trigger_series(text: str) -> str | None:
    """None when `text` is quoted series names joined by and/or (with parentheses)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _SERIES_TOKEN.match(stripped, pos)
        if not m or m.end() == pos:
            return f"unexpected text at column {pos + 1}: {stripped[pos:pos + 20]!r}; write quoted series names joined by and/or"
        kind = next(k for k, v in m.groupdict().items() if v is not None)
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    if not tokens:
        return "empty; name at least one series, for example 'T1w' and 'T2w'"
    # expr := term (op term)* ; term := str | '(' expr ')'
    i = 0

    def term() -> str | None:
        nonlocal i
        if i >= len(tokens):
            return "ends where a series name was expected"
        kind, value = tokens[i]
        if kind == "str":
            i += 1
            return None
        if value == "(":
            i += 1
            err = expr()
            if err:
                return err
            if i >= len(tokens) or tokens[i][1] != ")":
                return "missing closing parenthesis"
            i += 1
            return None
        return f"expected a quoted series name, found {value!r}"

    def expr() -> str | None:
        nonlocal i
        err = term()
        if err:
            return err
        while i < len(tokens) and tokens[i][0] == "op":
            i += 1
            err = term()
            if err:
                return err
        return None

    err = expr()
    if err is None and i < len(tokens):
        err = f"unexpected {tokens[i][1]!r}; join series names with and/or"
    return err


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY|ACCESS_KEY|^S3_ID$|API_KEY", re.I)


def _conversion_problems(doc: Document, site: Mapping[str, Any]) -> list[Diagnostic]:
    """What the conversion to mercure.json would refuse (templates, keys bidsflux sets itself)."""
    from bidsflux.diagnostics import UserError
    from bidsflux.mercure.config import managed_config

    try:
        managed_config(site, doc)
    except UserError as exc:
        return exc.diagnostics
    return []


def check_rules(doc: Document, site: Mapping[str, Any], secret_catalog: Mapping[str, Any] | None) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    data = doc.data
    modules = data.get("modules") or {}
    targets = data.get("targets") or {}
    for name, rule in (data.get("rules") or {}).items():
        base = ["rules", name]
        reason = check_rule_expression(rule["rule"])
        if reason:
            out.append(doc.diagnostic([*base, "rule"], reason))
        module = rule.get("processing_module")
        if module is not None and module not in modules:
            out.append(doc.diagnostic([*base, "processing_module"], f"undefined module '{module}' (defined: {', '.join(sorted(modules)) or 'none'})"))
        target = rule.get("target")
        if target is not None and target not in targets:
            out.append(doc.diagnostic([*base, "target"], f"undefined target '{target}' (defined: {', '.join(sorted(targets)) or 'none'})"))
        action = rule["action"]
        if action in ("process", "both") and module is None:
            out.append(doc.diagnostic(base, f"action '{action}' needs processing_module"))
        if action in ("route", "both") and target is None:
            out.append(doc.diagnostic(base, f"action '{action}' needs target"))
        if rule.get("study_trigger_condition") == "received_series":
            series = rule.get("study_trigger_series")
            if not series:
                out.append(doc.diagnostic(base, "study_trigger_condition received_series needs study_trigger_series"))
            else:
                reason = check_trigger_series(series)
                if reason:
                    out.append(doc.diagnostic([*base, "study_trigger_series"], reason))
    if secret_catalog is not None:
        for name, module in modules.items():
            for i, secret in enumerate(module.get("secrets") or []):
                if secret not in secret_catalog:
                    out.append(doc.diagnostic(["modules", name, "secrets", i], f"unknown secret '{secret}' (declared in stack/bidsflux.stack.yml: {', '.join(sorted(secret_catalog))})"))
    for name, module in modules.items():
        for key in module.get("environment") or {}:
            if _SECRET_NAME.search(key):
                out.append(doc.diagnostic(["modules", name, "environment", key],
                                          "looks like a secret: mercure.json is plain text; list the secret under "
                                          "secrets (mounted as a file at /var/run/secrets/<name>) instead"))
    out.extend(_conversion_problems(doc, site))
    receiver = (data.get("settings") or {}).get("receiver") or {}
    ae = receiver.get("ae_title")
    if ae is not None and ae != site["dicom_endpoint"]["ae_title"]:
        out.append(doc.diagnostic(["settings", "receiver", "ae_title"], f"differs from dicom_endpoint.ae_title in site.yml ({site['dicom_endpoint']['ae_title']!r})"))
    return out


def check_rules_file(rules: Document, site: Document, template: Document | None) -> list[Diagnostic]:
    """`bidsflux validate`'s hook for stack/mercure/rules.yml (see bidsflux.validation)."""
    from bidsflux.site.render import secret_catalog

    return check_rules(rules, site.data, secret_catalog(template.data) if template is not None else None)
