"""Semantics of stack/mercure/rules.yml that no schema expresses: references between rules,
modules and targets, rule expressions, and study_trigger_series syntax."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.credentials import check_mapping
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


# Rules are short (`tags.Modality == 'MR' and 'T1' in tags.SeriesDescription`). Mercure's router
# evaluates each one for every series, and DICOM senders control the tag values, so a rule must not
# be able to build huge values, reach attributes through format strings, or nest beyond what
# Python compiles.
MAX_RULE_LENGTH = 2000
MAX_RULE_NODES = 400
MAX_RULE_DEPTH = 30
MAX_REPEAT = 10_000
_FORMAT_METHODS = {"format", "format_map"}
# Methods a rule may call: none of them builds a value larger than its input.
SAFE_METHODS = frozenset({
    "lower", "upper", "casefold", "title", "capitalize", "strip", "lstrip", "rstrip", "startswith",
    "endswith", "split", "rsplit", "splitlines", "partition", "rpartition", "removeprefix",
    "removesuffix", "find", "rfind", "index", "rindex", "count", "isdigit", "isalpha", "isalnum",
    "isnumeric", "isdecimal", "isspace", "isupper", "islower", "get", "keys", "values", "items",
})


def _depth(node: ast.AST) -> int:
    """Nesting depth of the tree, without recursion (a deep tree is what is being refused)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_RULE_DEPTH + 1:
            stack.extend((child, level + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _is_sequence(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))) or isinstance(node, (ast.List, ast.Tuple))


def _basic_problem(node: ast.AST) -> str | None:
    if not isinstance(node, _ALLOWED_NODES):
        return f"rule uses {type(node).__name__}, which Mercure rules do not allow"
    if isinstance(node, ast.Name) and node.id != "tags" and node.id not in SAFE_BUILTINS:
        return f"rule uses the name '{node.id}'; only 'tags' and safe built-ins ({', '.join(sorted(SAFE_BUILTINS - {'True', 'False', 'None'}))}) are available"
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        return f"rule reaches the private attribute '{node.attr}'"
    return None


def _node_problem(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in _FORMAT_METHODS:
        return f"rule calls .{node.attr}(): format strings reach attributes ('{{0.__class__}}'); compare values instead"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and not _is_number(node.left):
        return "rule formats text with '%' (a width in the text or a DICOM value can allocate without bound); compare values instead"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        if not _is_number(node.left) and not _is_number(node.right):
            return "rule multiplies two computed values (text repeated by a DICOM value can be huge); multiply by a number"
        for factor, other in ((node.left, node.right), (node.right, node.left)):
            if _is_number(factor) and abs(factor.value) > MAX_REPEAT and not _is_number(other):  # type: ignore[attr-defined]
                return f"rule repeats a value {factor.value} times (at most {MAX_REPEAT})"  # type: ignore[attr-defined]
            if _is_sequence(factor) and not _is_number(other):
                return "rule repeats text or a list by a computed count; write the value out"
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr not in SAFE_METHODS | _FORMAT_METHODS and not node.func.attr.startswith("_"):
            return f"rule calls .{node.func.attr}(); rules may call {', '.join(sorted(SAFE_METHODS))}"
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if _is_number(arg) and abs(arg.value) > MAX_REPEAT:  # type: ignore[attr-defined]
                return f"rule passes {arg.value} to a call (at most {MAX_REPEAT}): widths and counts allocate"  # type: ignore[attr-defined]
    return None


def check_rule_expression(expr: str) -> str | None:
    """None when `expr` is a safe rule expression over `tags`, else the reason it is not."""
    if len(expr) > MAX_RULE_LENGTH:
        return f"rule is {len(expr)} characters long; at most {MAX_RULE_LENGTH}"
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        return f"rule is not a valid Python expression: {exc.msg} (column {exc.offset})"
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return f"rule cannot be compiled: {type(exc).__name__}: {str(exc)[:100]}"
    if _depth(tree) > MAX_RULE_DEPTH:
        return f"rule is nested more than {MAX_RULE_DEPTH} levels deep"
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_RULE_NODES:
        return f"rule has {len(nodes)} parts; at most {MAX_RULE_NODES}"
    for check in (_basic_problem, _node_problem):  # the plainest reason first
        for node in nodes:
            problem = check(node)
            if problem:
                return problem
    return None


_SERIES_TOKEN = re.compile(r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>\band\b|\bor\b)|(?P<paren>[()]))")


def check_trigger_series(text: str) -> str | None:
    """None when `text` is quoted series names joined by and/or (with parentheses)."""
    if len(text) > MAX_RULE_LENGTH:
        return f"{len(text)} characters long; at most {MAX_RULE_LENGTH}"
    depth = 0
    for c in text:
        depth += (c == "(") - (c == ")")
        if depth > MAX_RULE_DEPTH:
            return f"parentheses nested more than {MAX_RULE_DEPTH} deep"
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


def _credential_problems(doc: Document) -> list[Diagnostic]:
    """Credentials written into module environments or targets: mercure.json is plain text."""
    out: list[Diagnostic] = []
    data = doc.data
    for name, module in (data.get("modules") or {}).items():
        out += check_mapping(doc, ["modules", name, "environment"], module.get("environment") or {},
                             "mercure.json is plain text; list the secret under secrets (mounted as a file at "
                             "/var/run/secrets/<name>) instead")
        env = module.get("environment") or {}
        out += [doc.diagnostic(["modules", name, "environment", k], "the S3 key id is a secret: list s3_id under secrets instead")
                for k in env if k.upper() == "S3_ID"]
    for name, target in (data.get("targets") or {}).items():
        out += check_mapping(doc, ["targets", name], {k: v for k, v in target.items() if k != "type"},
                             "mercure.json is plain text; configure targets that need credentials in Mercure")
    return out


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
    out.extend(_credential_problems(doc))
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
