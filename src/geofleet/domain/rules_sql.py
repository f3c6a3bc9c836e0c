"""AWS IoT SQL, the subset geofleet's rules engine runs: parsing and evaluation.

A rule's ``sql`` decides which messages it sees (``FROM 'topic/filter'``), which of those it acts
on (``WHERE``) and what it sends (``SELECT``). The same statement must mean the same thing on a
region node and on AWS IoT Core, so anything this module does not understand is refused with an
``InvalidRequest`` that names the token and its position: a statement is never half-understood
(a silent mis-parse would forward the wrong data, or none, without anyone noticing).

The subset:

- ``SELECT *`` / ``SELECT a, b.c AS d, topic(2) AS region, *``: fields (nested with ``.``),
  aliases, the functions ``topic()`` / ``topic(n)`` (1-based level), ``clientid()``,
  ``timestamp()`` (ms since the epoch) and ``principal()`` (the certificate id);
- ``FROM 'topic/filter'`` with ``+`` and ``#``;
- ``WHERE`` with ``= <> != < <= > >=``, ``AND``, ``OR``, ``NOT``, parentheses, string
  (``'...'``, ``''`` escapes a quote), number (``-`` for a negative one) and boolean literals,
  fields and functions. No arithmetic, no other functions, no ``CASE``/``IN``/``LIKE``.

Evaluation follows AWS's semantics: a field the payload does not have is *Undefined*; a
comparison with Undefined (or between values of different types) is Undefined; ``WHERE`` passes
only when it is true; an Undefined field is left out of the output. A payload that is not a
JSON object has no fields; ``SELECT *`` then passes its bytes on unchanged, as AWS does.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.limits import topic_filter_problem

MAX_SQL_CHARS = 4096
"""A rule's statement is a few hundred characters; the bound keeps parsing cheap and bounded."""
MAX_DEPTH = 32
"""Nesting of parentheses and NOTs: deep enough for any real rule, shallow enough to never
exhaust the parser's recursion."""
FUNCTIONS: Final = frozenset({"topic", "clientid", "timestamp", "principal"})
_KEYWORDS: Final = frozenset({"select", "from", "where", "as", "and", "or", "not", "true", "false"})
_COMPARISONS: Final = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})


class _UndefinedType:
    """AWS IoT SQL's Undefined: what a missing field or an impossible comparison gives."""

    _instance: _UndefinedType | None = None

    def __new__(cls) -> _UndefinedType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "Undefined"


Undefined: Final = _UndefinedType()


# -- tokens ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    """``ident``, ``keyword``, ``string``, ``number``, ``op`` or ``end``."""
    text: str
    position: int
    value: Any = None


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^']|'')*')
  | (?P<op><>|!=|<=|>=|[=<>(),.*-])
""", re.VERBOSE)


def tokenize(sql: str) -> list[Token]:
    """The statement's tokens; a character outside the subset is refused where it stands."""
    tokens: list[Token] = []
    position = 0
    while position < len(sql):
        match = _TOKEN.match(sql, position)
        if match is None:
            rest = sql[position:]
            what = "an unterminated string" if rest.startswith("'") else repr(rest[0])
            raise InvalidRequest(f"SQL: unexpected {what} at position {position}: "
                                 "geofleet runs a subset of AWS IoT SQL (see the rules documentation)")
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "ident" and text.lower() in _KEYWORDS:
            tokens.append(Token("keyword", text.lower(), position))
        elif kind == "string":
            tokens.append(Token("string", text, position, text[1:-1].replace("''", "'")))
        elif kind == "number":
            number = float(text) if any(c in text for c in ".eE") else int(text)
            tokens.append(Token("number", text, position, number))
        elif kind != "space":
            tokens.append(Token(kind, text, position))
        position = match.end()
    tokens.append(Token("end", "end of statement", len(sql)))
    return tokens


# -- the statement --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Field:
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    argument: int | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Logical:
    op: str
    """``and``, ``or`` or ``not`` (``not`` has only ``left``)."""
    left: Expr
    right: Expr | None = None


Expr = Literal | Field | Call | Compare | Logical
Evaluator = Callable[["Mapping[str, Any] | None", "Message"], Any]
"""A compiled expression: its value for (the payload's fields, the message)."""


@dataclass(frozen=True, slots=True)
class Star:
    """``*``: every field of the payload."""


@dataclass(frozen=True, slots=True)
class Column:
    expr: Expr
    name: str


@dataclass(frozen=True, slots=True)
class Statement:
    columns: tuple[Column | Star, ...]
    topic_filter: str
    where: Expr | None
    compiled_where: Evaluator | None = field(default=None, compare=False, repr=False)
    compiled_columns: tuple[tuple[str, Evaluator] | None, ...] = field(default=(), compare=False, repr=False)
    """The expressions as closures (``compile_expr``), made once by ``parse``: a rule runs on
    every matching message, and walking the tree with type checks cost several times more."""

    @property
    def selects_all(self) -> bool:
        return any(isinstance(c, Star) for c in self.columns)


@dataclass(frozen=True, slots=True)
class Message:
    """What a rule sees of one message."""

    topic: str
    payload: bytes
    client_id: str
    principal: str
    timestamp_ms: int


def parse(sql: str) -> Statement:
    """Parse a statement of the subset, or raise ``InvalidRequest`` naming what is outside it."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidRequest("SQL: the statement is empty; write e.g. SELECT * FROM 'dt/+/telemetry'")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidRequest(f"SQL: the statement is {len(sql)} characters; at most {MAX_SQL_CHARS} are allowed")
    return _Parser(tokenize(sql)).statement()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._at = 0
        self._depth = 0

    @property
    def _next(self) -> Token:
        return self._tokens[self._at]

    def _take(self) -> Token:
        token = self._tokens[self._at]
        if token.kind != "end":
            self._at += 1
        return token

    def _is(self, kind: str, text: str | None = None) -> bool:
        token = self._next
        return token.kind == kind and (text is None or token.text == text)

    def _expect(self, kind: str, text: str, wanted: str) -> Token:
        if not self._is(kind, text):
            self._fail(wanted)
        return self._take()

    def _fail(self, wanted: str) -> None:
        token = self._next
        raise InvalidRequest(f"SQL: expected {wanted} at position {token.position}, found {token.text!r}")

    def statement(self) -> Statement:
        self._expect("keyword", "select", "SELECT")
        columns = [self._column()]
        while self._is("op", ","):
            self._take()
            columns.append(self._column())
        self._expect("keyword", "from", "FROM after the selected fields (or a ',' between them)")
        if not self._is("string"):
            self._fail("the FROM topic filter as a quoted string, e.g. FROM 'dt/+/telemetry'")
        source = self._take()
        topic_filter = str(source.value)
        _check_filter(topic_filter, source.position)
        where = None
        if self._is("keyword", "where"):
            self._take()
            where = self._expr()
        if not self._is("end"):
            self._fail("the end of the statement (WHERE, if any, comes last)")
        names = [c.name for c in columns if isinstance(c, Column)]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise InvalidRequest(f"SQL: the output field {duplicate!r} is selected twice; give one an alias (AS)")
        return Statement(tuple(columns), topic_filter, where,
                         None if where is None else compile_expr(where),
                         tuple(None if isinstance(c, Star) else (c.name, compile_expr(c.expr)) for c in columns))

    def _column(self) -> Column | Star:
        if self._is("op", "*"):
            self._take()
            return Star()
        start = self._next
        expr = self._expr()
        if self._is("keyword", "as"):
            self._take()
            if not self._is("ident"):
                self._fail("an alias (a name) after AS")
            return Column(expr, self._take().text)
        if isinstance(expr, Field):
            return Column(expr, expr.path[-1])
        if isinstance(expr, Call):
            return Column(expr, expr.name)
        raise InvalidRequest(f"SQL: the expression at position {start.position} needs a name: add AS <name>")

    def _expr(self) -> Expr:
        left = self._and()
        while self._is("keyword", "or"):
            self._take()
            left = Logical("or", left, self._and())
        return left

    def _and(self) -> Expr:
        left = self._not()
        while self._is("keyword", "and"):
            self._take()
            left = Logical("and", left, self._not())
        return left

    def _not(self) -> Expr:
        if self._is("keyword", "not"):
            self._take()
            with self._deeper():
                return Logical("not", self._not())
        return self._comparison()

    def _comparison(self) -> Expr:
        left = self._operand()
        if self._next.kind == "op" and self._next.text in _COMPARISONS:
            op = self._take().text
            right = self._operand()
            if self._next.kind == "op" and self._next.text in _COMPARISONS:
                self._fail("AND or OR between two comparisons")
            return Compare("<>" if op == "!=" else op, left, right)
        return left

    def _operand(self) -> Expr:
        token = self._next
        if token.kind == "op" and token.text == "(":
            self._take()
            with self._deeper():
                inner = self._expr()
            self._expect("op", ")", "')'")
            return inner
        if token.kind in ("string", "number"):
            self._take()
            return Literal(token.value)
        if token.kind == "op" and token.text == "-":
            self._take()
            if not self._is("number"):
                self._fail("a number after '-' (the subset has no arithmetic)")
            return Literal(-self._take().value)
        if token.kind == "keyword" and token.text in ("true", "false"):
            self._take()
            return Literal(token.text == "true")
        if token.kind == "ident":
            self._take()
            if self._is("op", "("):
                return self._call(token)
            path = [token.text]
            while self._is("op", "."):
                self._take()
                if not self._is("ident"):
                    self._fail("a field name after '.'")
                path.append(self._take().text)
            return Field(tuple(path))
        self._fail("a field, a literal, a function or '('")
        raise AssertionError("unreachable")

    def _call(self, name: Token) -> Call:
        function = name.text.lower()
        if function not in FUNCTIONS:
            raise InvalidRequest(f"SQL: unsupported function {name.text!r} at position {name.position}; "
                                 f"supported: {', '.join(sorted(f + '()' for f in FUNCTIONS))}")
        self._take()  # '('
        argument = None
        if function == "topic" and self._is("number"):
            number = self._take()
            if not isinstance(number.value, int) or number.value < 1:
                raise InvalidRequest(f"SQL: topic(n) takes a level number from 1 at position {number.position}, "
                                     f"found {number.text!r}")
            argument = number.value
        self._expect("op", ")", f"')' closing {function}(")
        return Call(function, argument)

    def _deeper(self) -> _Depth:
        return _Depth(self)


class _Depth:
    def __init__(self, parser: _Parser) -> None:
        self._parser = parser

    def __enter__(self) -> None:
        self._parser._depth += 1
        if self._parser._depth > MAX_DEPTH:
            token = self._parser._next
            raise InvalidRequest(f"SQL: nested deeper than {MAX_DEPTH} levels at position {token.position}")

    def __exit__(self, *_: object) -> None:
        self._parser._depth -= 1


def _check_filter(topic_filter: str, position: int) -> None:
    problem = topic_filter_problem(topic_filter) if topic_filter else "the topic filter is empty"
    levels = topic_filter.split("/")
    if problem is None and any(("#" in level and level != "#") or ("+" in level and level != "+")
                               for level in levels):
        problem = "a wildcard must fill a whole level"
    if problem is None and "#" in levels[:-1]:
        problem = "'#' may only be the last level"
    if problem is None and "\x00" in topic_filter:
        problem = "the topic filter contains U+0000"
    if problem is not None:
        raise InvalidRequest(f"SQL: FROM topic filter at position {position}: {problem}")


# -- evaluation -----------------------------------------------------------------------------

def fields_of(payload: bytes) -> Mapping[str, Any] | None:
    """The payload as a JSON object, or None (not JSON, or JSON that is not an object)."""
    try:
        decoded = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def evaluate(statement: Statement, message: Message, fields: Mapping[str, Any] | _UndefinedType | None = Undefined
             ) -> dict[str, Any] | bytes | None:
    """What the rule sends for ``message`` (a JSON object, or the raw payload for ``SELECT *``
    of a payload that is not a JSON object), or None when ``WHERE`` is not true. ``fields`` is
    ``fields_of(message.payload)`` when the caller has it already (decoded once for every rule).

    The caller has already matched the topic against ``statement.topic_filter``."""
    if isinstance(fields, _UndefinedType):
        fields = fields_of(message.payload)
    where = statement.compiled_where
    if where is not None and where(fields, message) is not True:
        return None
    if fields is None and statement.selects_all and len(statement.columns) == 1:
        return message.payload
    output: dict[str, Any] = {}
    for column in statement.compiled_columns:
        if column is None:
            output.update(fields or {})
            continue
        value = column[1](fields, message)
        if value is not Undefined:
            output[column[0]] = value
    return output


def compile_expr(expr: Expr) -> Evaluator:
    """``expr`` as a closure: a field is Undefined unless every level of its path is there; a
    comparison follows ``_compare``; AND, OR and NOT are three-valued (Undefined unless the
    known operands decide)."""
    if isinstance(expr, Literal):
        constant = expr.value
        return lambda fields, message: constant
    if isinstance(expr, Field):
        path = expr.path

        def lookup(fields: Mapping[str, Any] | None, message: Message) -> Any:
            current: Any = fields
            for name in path:
                if not isinstance(current, Mapping) or name not in current:
                    return Undefined
                current = current[name]
            return current

        return lookup
    if isinstance(expr, Call):
        function = expr
        return lambda fields, message: call(function, message)
    if isinstance(expr, Compare):
        op, left, right = expr.op, compile_expr(expr.left), compile_expr(expr.right)
        return lambda fields, message: _compare(op, left(fields, message), right(fields, message))
    first = compile_expr(expr.left)
    if expr.op == "not":
        def negate(fields: Mapping[str, Any] | None, message: Message) -> Any:
            value = _truth(first(fields, message))
            return Undefined if value is Undefined else not value

        return negate
    assert expr.right is not None
    second = compile_expr(expr.right)
    if expr.op == "and":
        def both(fields: Mapping[str, Any] | None, message: Message) -> Any:
            a, b = _truth(first(fields, message)), _truth(second(fields, message))
            if a is False or b is False:
                return False
            return True if a is True and b is True else Undefined

        return both

    def either(fields: Mapping[str, Any] | None, message: Message) -> Any:
        a, b = _truth(first(fields, message)), _truth(second(fields, message))
        if a is True or b is True:
            return True
        return False if a is False and b is False else Undefined

    return either


def call(expr: Call, message: Message) -> Any:
    """The value of one of the supported functions for ``message``."""
    if expr.name == "topic":
        if expr.argument is None:
            return message.topic
        levels = message.topic.split("/")
        return levels[expr.argument - 1] if expr.argument <= len(levels) else Undefined
    if expr.name == "clientid":
        return message.client_id
    if expr.name == "timestamp":
        return message.timestamp_ms
    return message.principal


def _truth(value: Any) -> Any:
    return value if isinstance(value, bool) else Undefined


_OPERATORS: Final = {"=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
                     ">=": operator.ge}
_KINDS: Final = {bool: "bool", int: "number", float: "number", str: "string", type(None): "null", dict: "object",
                 list: "array"}


def _compare(op: str, left: Any, right: Any) -> Any:
    """AWS's comparison: Undefined with an Undefined operand or operands of different types;
    only numbers and strings are ordered."""
    kind = _KINDS.get(type(left))
    if kind is None or kind != _KINDS.get(type(right)):
        return Undefined  # Undefined, or different types
    if op not in ("=", "<>") and kind not in ("number", "string"):
        return Undefined
    return bool(_OPERATORS[op](left, right))


def substitute(template: str, message: Message) -> str:
    """A substitution template (``dt/${topic(2)}/${clientid()}``) filled in for ``message``:
    each ``${...}`` holds one of the supported functions. An Undefined value is an error (the
    action fails and the rule's errorAction runs), never a topic with a hole in it."""
    def fill(match: re.Match[str]) -> str:
        value = call(parse_template_call(match.group(1)), message)
        if value is Undefined:
            raise InvalidRequest(f"the template {template!r} has no value for ${{{match.group(1)}}} on topic "
                                 f"{message.topic!r}")
        return str(value)

    return _TEMPLATE.sub(fill, template)


_TEMPLATE = re.compile(r"\$\{([^}]*)\}")


def parse_template_call(text: str) -> Call:
    """One ``${...}`` of a substitution template: a supported function call."""
    tokens = tokenize(text)
    parser = _Parser(tokens)
    if not parser._is("ident"):
        raise InvalidRequest(f"substitution template: ${{{text}}} must be a function: "
                             "topic(n), topic(), clientid(), timestamp() or principal()")
    name = parser._take()
    if not parser._is("op", "("):
        raise InvalidRequest(f"substitution template: ${{{text}}} must be a function call, e.g. ${{topic(2)}}")
    result = parser._call(name)
    if not parser._is("end"):
        parser._fail(f"the end of ${{{text}}}")
    return result


def check_template(template: str) -> None:
    """Refuse a substitution template with an unsupported ``${...}`` (at rule creation)."""
    for match in _TEMPLATE.finditer(template):
        parse_template_call(match.group(1))
    if "${" in _TEMPLATE.sub("", template):
        raise InvalidRequest(f"substitution template {template!r} has an unclosed '${{'")
