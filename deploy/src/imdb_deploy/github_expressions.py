"""GitHub Actions expressions (`${{ ... }}` and `if:`), evaluated as GitHub documents them.

    evaluate("needs.plan.outputs.build == 'true' && !cancelled()", contexts, status)

Literals (null, booleans, numbers, 'strings' with '' for a quote), property access (`a.b`,
`a['b']`, `needs.*.result` as an object filter), `!`, comparisons (`<`, `<=`, `>`, `>=`, `==`,
`!=`; strings compare without regard to case, mixed types as numbers), `&&` and `||` (which give
one of their operands, not a boolean), and the functions contains, startsWith, endsWith, format,
join, toJSON, fromJSON and the status functions success, always, cancelled, failure. What it does
not know (hashFiles, an unknown function or context) is an ExpressionError, never a guess.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>0x[0-9a-fA-F]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<string>'(?:[^']|'')*')
    | (?P<operator>&&|\|\||==|!=|<=|>=|<|>|!|\(|\)|\[|\]|\.|,|\*)
    | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
WRAPPED = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
STATUS_FUNCTIONS = ("success", "always", "cancelled", "failure")
LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class ExpressionError(ValueError):
    """An expression that is malformed or uses what is not emulated here."""


class Known(dict[str, Any]):
    """A context of which only these properties are emulated: asking for another is an error
    (GitHub would give a value, here unknown), where a plain dict gives null, as GitHub does for
    a missing output or secret."""


@dataclass(frozen=True)
class Status:
    """What the status functions see: whether an earlier job (a job's `needs`) or step failed,
    whether one was skipped (then success() is false, failure() is not true), and whether the
    run was cancelled."""

    failed: bool = False
    cancelled: bool = False
    skipped: bool = False

    @property
    def succeeded(self) -> bool:
        return not (self.failed or self.cancelled or self.skipped)


def truthy(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "") or isinstance(value, (list, dict))


def number(value: Any) -> float:
    """GitHub's conversion of a value to a number (NaN where it has none)."""
    if isinstance(value, bool) or value is None:
        return float(bool(value))
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return math.nan
    written = value.strip() or "0"
    try:
        return float(int(written, 16)) if written.lower().startswith("0x") else float(written)
    except ValueError:
        return math.nan


def text(value: Any) -> str:
    """A value as GitHub turns it into a string (in `format`, `join` and `${{ }}`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return str(value)


def _compare(left: Any, right: Any) -> tuple[Any, Any]:
    """Both sides as GitHub compares them: strings without case, mixed types as numbers."""
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold(), right.casefold()
    if type(left) is type(right) and not isinstance(left, (dict, list)):
        return left, right
    if isinstance(left, (dict, list)) or isinstance(right, (dict, list)):
        return id(left), id(right)  # objects and arrays equal only themselves
    return number(left), number(right)


class _Parser:
    def __init__(self, source: str, contexts: Mapping[str, Any], status: Status) -> None:
        self.tokens = self._tokens(source)
        self.index = 0
        self.contexts = contexts
        self.status = status
        self.source = source

    @staticmethod
    def _tokens(source: str) -> list[tuple[str, str]]:
        tokens, position = [], 0
        while position < len(source):
            if source[position:].strip() == "":
                break
            match = TOKEN.match(source, position)
            if match is None or match.end() == position:
                raise ExpressionError(f"cannot read {source[position:]!r} in {source!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            position = match.end()
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ExpressionError(f"expected {value or 'more'} in {self.source!r}")
        self.index += 1
        return token

    def parse(self) -> Any:
        value = self.or_()
        extra = self.peek()
        if extra is not None:
            raise ExpressionError(f"unexpected {extra[1]!r} in {self.source!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == ("operator", "||"):
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.equality()
        while self.peek() == ("operator", "&&"):
            self.take()
            right = self.equality()
            value = right if truthy(value) else value
        return value

    def equality(self) -> Any:
        value = self.comparison()
        while self.peek() in (("operator", "=="), ("operator", "!=")):
            operator = self.take()[1]
            left, right = _compare(value, self.comparison())
            value = (left == right) == (operator == "==")
        return value

    def comparison(self) -> Any:
        value = self.unary()
        operators: dict[str, Callable[[Any, Any], bool]] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        while (token := self.peek()) is not None and token[1] in operators:
            self.take()
            left, right = _compare(value, self.unary())
            value = operators[token[1]](left, right)
        return value

    def unary(self) -> Any:
        if self.peek() == ("operator", "!"):
            self.take()
            return not truthy(self.unary())
        return self.postfix(self.primary())

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "number":
            return number(value)
        if kind == "string":
            return value[1:-1].replace("''", "'")
        if value == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if kind != "name":
            raise ExpressionError(f"unexpected {value!r} in {self.source!r}")
        if value in LITERALS:
            return LITERALS[value]
        if self.peek() == ("operator", "("):
            return self.call(value)
        if value not in self.contexts:
            raise ExpressionError(f"context not emulated here: {value} (in {self.source!r})")
        return self.contexts[value]

    def postfix(self, value: Any) -> Any:
        while (token := self.peek()) in (("operator", "."), ("operator", "[")):
            self.take()
            if token == ("operator", "."):
                _, name = self.take()
                if name == "*":
                    value = list(value.values()) if isinstance(value, dict) else value
                    continue
                key: Any = name
            else:
                key = self.or_()
                self.take("]")
            value = _property(value, key)
        return value

    def call(self, name: str) -> Any:
        self.take("(")
        arguments = []
        while self.peek() != ("operator", ")"):
            arguments.append(self.or_())
            if self.peek() == ("operator", ","):
                self.take()
        self.take(")")
        return self.function(name, arguments)

    def function(self, name: str, arguments: list[Any]) -> Any:
        lowered = name.lower()
        if lowered in STATUS_FUNCTIONS:
            return {
                "success": self.status.succeeded,
                "always": True,
                "cancelled": self.status.cancelled,
                "failure": self.status.failed,
            }[lowered]
        functions: dict[str, Callable[..., Any]] = {
            "contains": _contains,
            "startswith": lambda a, b: text(a).casefold().startswith(text(b).casefold()),
            "endswith": lambda a, b: text(a).casefold().endswith(text(b).casefold()),
            "format": _format,
            "join": lambda items, separator=",": text(separator).join(
                text(item) for item in (items if isinstance(items, list) else [items])
            ),
            "tojson": lambda value: json.dumps(value, indent=2),
            "fromjson": lambda value: json.loads(text(value)),
        }
        if lowered not in functions:
            raise ExpressionError(f"function not emulated here: {name}() (in {self.source!r})")
        try:
            return functions[lowered](*arguments)
        except (TypeError, ValueError) as error:
            raise ExpressionError(f"{name}() in {self.source!r}: {error}") from error


def _property(value: Any, key: Any) -> Any:
    if isinstance(value, list):
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            index = int(key)
            return value[index] if 0 <= index < len(value) else None
        return [_property(item, key) for item in value]  # after `.*`: the key of each
    if isinstance(value, dict):
        wanted = text(key).casefold()
        for name, item in value.items():
            if str(name).casefold() == wanted:
                return item
        if isinstance(value, Known):
            raise ExpressionError(f"not emulated here: {key} (known: {', '.join(value)})")
    return None


def _contains(search: Any, item: Any) -> bool:
    if isinstance(search, list):
        return any(_compare(element, item)[0] == _compare(element, item)[1] for element in search)
    return text(item).casefold() in text(search).casefold()


def _format(template: Any, *arguments: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) in ("{{", "}}"):
            return match.group(0)[0]
        index = int(match.group(1))
        if index >= len(arguments):
            raise ValueError(f"no argument {index}")
        return text(arguments[index])

    return re.sub(r"\{\{|\}\}|\{(\d+)\}", replace, text(template))


def _whole(value: str) -> str | None:
    """The expression inside `value` when `value` is exactly one `${{ }}`, else None."""
    found = list(WRAPPED.finditer(value))
    if len(found) == 1 and found[0].span() == (0, len(value)):
        return found[0].group(1)
    return None


def evaluate(source: str, contexts: Mapping[str, Any], status: Status | None = None) -> Any:
    """The value of one expression (without its `${{ }}`)."""
    return _Parser(source, contexts, status or Status()).parse()


def condition(source: str, contexts: Mapping[str, Any], status: Status | None = None) -> bool:
    """An `if:`: with or without `${{ }}`; without a status function it means `success() && ...`
    as GitHub reads it."""
    inner = source.strip()
    if (whole := _whole(inner)) is not None:
        inner = whole.strip()
    result = truthy(evaluate(inner, contexts, status))
    if not re.search(rf"\b({'|'.join(STATUS_FUNCTIONS)})\s*\(", inner):
        result = result and (status or Status()).succeeded
    return result


def render(value: Any, contexts: Mapping[str, Any], status: Status | None = None) -> Any:
    """A workflow value with its `${{ }}` expressions replaced: a value that is one expression
    whole keeps its type (a list stays a list); inside text, each becomes text."""
    if not isinstance(value, str):
        return value
    whole = _whole(value.strip())
    if whole is not None:
        return evaluate(whole, contexts, status)
    return WRAPPED.sub(lambda match: text(evaluate(match.group(1), contexts, status)), value)
