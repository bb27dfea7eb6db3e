"""A small evaluator for the part of Go's text/template language that Ollama Modelfile templates use.

tunelab translates chat templates (Jinja) into Ollama's language (Go's text/template) and proves each
translation by rendering sample conversations both ways and comparing the text. Go is not a dependency,
so this module renders the Go side. It follows the text/template documentation for what it supports and
raises on anything else, so an unsupported construct can never render as something plausible:

- text, `{{ pipeline }}`, and the trim markers `{{- ` / ` -}}` (all adjacent spaces, tabs and newlines);
- `if` / `else if` / `else` / `end`, `range $i, $x := pipeline` (or `range pipeline`) with `else`;
- variables `$`, `$x`, declared with `:=` (scoped to the enclosing block) and assigned with `=`;
- operands `.`, `.Field.Field`, `$x.Field`, "strings" with Go escapes, integers, true/false, `( ... )`;
- functions eq (several right-hand values), ne, lt, le, gt, ge, and, or (return the
  deciding value; all arguments are evaluated), not, len, slice, index; comments `{{/* */}}`.
Data are dicts (Go structs: an unknown field is an error) and lists; truth is Go's (false, 0, "", empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tunelab.errors import TunelabError


class GoTemplateError(TunelabError):
    """The template uses something this evaluator does not support, or fails as Go's would."""


_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(:=|"(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|,|\||=|\$[A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*'
                    r"|\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?|-?\d+|[A-Za-z_]\w*)")  # fmt: skip
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass
class _Block:
    kind: str  # "root", "if", "range"
    branches: list[tuple[list[str] | None, list[Any]]] = field(default_factory=list)  # (condition, body)
    var_names: list[str] = field(default_factory=list)  # range only


def render(template: str, data: Any) -> str:
    """Render `template` with `data` as Go's text/template would (for the supported subset)."""
    out: list[str] = []
    _exec(_parse(template).branches[0][1], [{"$": data}], data, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)], trim markers applied to the neighbouring text."""
    parts: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    if "{{" in tail:
        raise GoTemplateError(f"unclosed action in template near {tail[tail.index('{{') :][:30]!r}")
    parts.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return parts


def _parse(template: str) -> _Block:
    root = _Block("root", [(None, [])])
    stack = [root]
    for kind, body in _lex(template):
        current = stack[-1].branches[-1][1]
        if kind == "text":
            current.append(body)
        elif body.startswith("/*"):
            continue
        elif body.startswith(("if ", "range ")):
            word, rest = body.split(None, 1)
            block = _Block(word)
            if word == "range":
                block.var_names, rest = _range_vars(rest)
            block.branches.append((_tokens(rest), []))
            current.append(block)
            stack.append(block)
        elif body == "else" or body.startswith("else if "):
            if len(stack) == 1 or (stack[-1].kind == "range" and body != "else"):
                raise GoTemplateError(f"unexpected {{{{{body}}}}}")
            stack[-1].branches.append((_tokens(body[len("else if ") :]) if body != "else" else None, []))
        elif body == "end":
            if len(stack) == 1:
                raise GoTemplateError("unexpected {{end}}")
            stack.pop()
        else:
            current.append(_tokens(body))
    if len(stack) != 1:
        raise GoTemplateError(f"unclosed {{{{{stack[-1].kind}}}}} in template")
    return root


def _range_vars(rest: str) -> tuple[list[str], str]:
    if ":=" not in rest:
        return [], rest
    names, pipe = rest.split(":=", 1)
    return [n.strip() for n in names.split(",")], pipe


def _tokens(text: str) -> list[str]:
    toks, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m:
            raise GoTemplateError(f"cannot parse {text[pos:]!r}")
        toks.append(m.group(1))
        pos = m.end()
    if "|" in toks:
        raise GoTemplateError("pipelines with | are not supported by this evaluator")
    return toks


Scopes = list[dict[str, Any]]  # innermost last: `:=` declares in the innermost, `=` assigns where declared


def _lookup(scopes: Scopes, name: str) -> dict[str, Any]:
    for frame in reversed(scopes):
        if name in frame:
            return frame
    raise GoTemplateError(f"undefined variable {name}")


def _exec(nodes: list[Any], scopes: Scopes, dot: Any, out: list[str], names: dict[str, Any] | None = None) -> None:
    scopes = [*scopes, dict(names or {})]  # variables declared in a block end with it
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Block):
            _exec_block(node, scopes, dot, out)
        elif len(node) > 1 and node[1] in (":=", "="):
            frame = scopes[-1] if node[1] == ":=" else _lookup(scopes, node[0])
            frame[node[0]] = _eval(node[2:], scopes, dot)
        else:
            out.append(_text(_eval(node, scopes, dot)))


def _exec_block(block: _Block, scopes: Scopes, dot: Any, out: list[str]) -> None:
    if block.kind == "if":
        for cond, body in block.branches:
            if cond is None or _truth(_eval(cond, scopes, dot)):
                return _exec(body, scopes, dot, out)
        return None
    items = _eval(block.branches[0][0] or [], scopes, dot)
    if not isinstance(items, list):
        raise GoTemplateError(f"range over {type(items).__name__} is not supported")
    for i, item in enumerate(items):  # `range $x := ...` binds the element; `range $i, $x := ...` index and element
        values = [item] if len(block.var_names) == 1 else [i, item]
        _exec(block.branches[0][1], scopes, item, out, dict(zip(block.var_names, values)))
    if not items and len(block.branches) > 1:
        _exec(block.branches[1][1], scopes, dot, out)
    return None


def _eval(toks: list[str], scopes: Scopes, dot: Any) -> Any:
    args, pos = [], 0
    while pos < len(toks):
        value, pos = _operand(toks, pos, scopes, dot)
        args.append(value)
    if not args:
        raise GoTemplateError("empty pipeline")
    if isinstance(args[0], _Func):
        return args[0](args[1:])
    if len(args) > 1:
        raise GoTemplateError(f"can't give arguments to a non-function: {' '.join(toks)}")
    return args[0]


def _operand(toks: list[str], pos: int, scopes: Scopes, dot: Any) -> tuple[Any, int]:
    t = toks[pos]
    if t == "(":
        depth, end = 1, pos + 1
        while depth:
            if end >= len(toks):
                raise GoTemplateError("unclosed ( in pipeline")
            depth += {"(": 1, ")": -1}.get(toks[end], 0)
            end += 1
        return _eval(toks[pos + 1 : end - 1], scopes, dot), end
    if t.startswith('"'):
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), t[1:-1]), pos + 1
    if t.startswith("`"):
        return t[1:-1], pos + 1
    if re.fullmatch(r"-?\d+", t):
        return int(t), pos + 1
    if t in ("true", "false"):
        return t == "true", pos + 1
    if t.startswith("."):
        return _fields(dot, t[1:]), pos + 1
    if t.startswith("$"):
        name, _, path = t.partition(".")
        return _fields(_lookup(scopes, name)[name], path), pos + 1
    if t in FUNCS:
        return _Func(t), pos + 1
    raise GoTemplateError(f"function {t!r} not defined")


def _fields(value: Any, path: str) -> Any:
    for name in filter(None, path.split(".")):
        if not isinstance(value, dict) or name not in value:
            raise GoTemplateError(f"can't evaluate field {name} in {type(value).__name__}")
        value = value[name]
    return value


def _truth(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or (isinstance(v, str | list | dict) and len(v) == 0))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "<no value>"
    return str(v)


def _cmp(op: str, args: list[Any]) -> bool:
    if op == "eq":
        if len(args) < 2:
            raise GoTemplateError("eq needs at least two arguments")
        return any(args[0] == b for b in args[1:])
    a, b = args
    return {"ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def _and_or(op: str, args: list[Any]) -> Any:
    for a in args[:-1]:
        if _truth(a) == (op == "or"):
            return a
    return args[-1]


FUNCS: dict[str, Any] = {
    **{op: partial(_cmp, op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "and": partial(_and_or, "and"),
    "or": partial(_and_or, "or"),
    "not": lambda args: not _truth(args[0]),
    "len": lambda args: len(args[0]),
    "slice": lambda args: args[0][slice(*args[1:3])] if len(args) > 2 else args[0][args[1] if len(args) > 1 else 0 :],
    "index": lambda args: args[0][args[1]],
}


class _Func(str):
    """A function name in operand position: called with the following operands."""

    def __call__(self, args: list[Any]) -> Any:
        try:
            return FUNCS[str(self)](args)
        except (TypeError, IndexError, KeyError, ValueError) as e:
            raise GoTemplateError(f"error calling {self}: {e}") from None
