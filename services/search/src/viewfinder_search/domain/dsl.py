"""The query DSL: parse with the Lark grammar in ``query.lark``, type-check, compile.

A query compiles to a catalogue condition (``domain.conditions``), which
``domain.sql`` turns into parameterised SQL, plus the directives that only
make sense once per query: a semantic query (``Content`` text or ``Image``
bucket URI), ``TopK`` and ``ScoreThreshold``.

Case rules:

* keywords (``AND``, ``OR``, ``NOT``, ``HAS``) and field names
  (``FileName``, ``Tags.ai``) are case-insensitive;
* ``field="value"`` is an exact, case-sensitive match — except ``FileType``,
  whose formats compare case-insensitively (``"jpeg"`` finds ``JPEG``);
* ``field:"text"`` is a token match: the value contains the text,
  case-insensitively.

``Content``, ``Image``, ``TopK`` and ``ScoreThreshold`` must sit in the
top-level AND chain (parentheses that only group ANDs are fine): a semantic
query under OR or NOT has no meaning as a filter, so it is a type error with
its position rather than a silent reinterpretation.
"""

from __future__ import annotations

import difflib
import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_interactive_parser import InteractiveParser

from viewfinder_common.errors import InvalidArgument
from viewfinder_search.domain.conditions import (
    AnyOf as AnyOfCondition,
)
from viewfinder_search.domain.conditions import (
    Compare,
    Comparison,
    Condition,
    HasTag,
    Not,
    OrderedAttribute,
    Present,
    TagSourceScope,
    TextAttribute,
    TextMatch,
    TextMatchMode,
    all_of,
)
from viewfinder_search.domain.semantic import (
    MAX_QUERY_TEXT_CHARS,
    MAX_TOP_K,
    ImageUriQuery,
    SemanticQuery,
    TextQuery,
)


class QueryError(InvalidArgument):
    """A syntax or type error in a DSL query, with where it is and what would fit there."""

    def __init__(self, message: str, *, line: int, column: int, expected: Sequence[str] = ()) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.expected = tuple(expected)
        super().__init__(f"query error at line {line}, column {column}: {message}")


@dataclass(frozen=True)
class CompiledQuery:
    """What a DSL query asks for."""

    condition: Condition
    semantic: SemanticQuery | None = None
    top_k: int | None = None
    score_threshold: float | None = None


class _Kind(enum.Enum):
    TEXT = "text"
    TIME = "time"
    INTEGER = "integer"
    TAGS = "tags"
    CONTENT = "content"
    IMAGE = "image"
    TOP_K = "top_k"
    SCORE_THRESHOLD = "score_threshold"


_ORDER_OPERATORS = ("=", ">", ">=", "<", "<=")
_MATCH_OPERATORS = ("=", ":")


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    kind: _Kind
    operators: tuple[str, ...]
    # HAS field is meaningful (the value may be missing).
    has_allowed: bool
    text_attribute: TextAttribute | None = None
    ordered_attribute: OrderedAttribute | None = None
    tag_scope: TagSourceScope | None = None


_FIELDS: tuple[_FieldSpec, ...] = (
    _FieldSpec("FileName", _Kind.TEXT, _MATCH_OPERATORS, True, text_attribute=TextAttribute.NAME),
    _FieldSpec("FileDir", _Kind.TEXT, _MATCH_OPERATORS, True, text_attribute=TextAttribute.DIRECTORY),
    _FieldSpec("FileType", _Kind.TEXT, _MATCH_OPERATORS, True, text_attribute=TextAttribute.FORMAT),
    _FieldSpec(
        "FileUpdateTime", _Kind.TIME, _ORDER_OPERATORS, True, ordered_attribute=OrderedAttribute.MODIFIED
    ),
    _FieldSpec("FileSize", _Kind.INTEGER, _ORDER_OPERATORS, True, ordered_attribute=OrderedAttribute.SIZE),
    _FieldSpec("Width", _Kind.INTEGER, _ORDER_OPERATORS, True, ordered_attribute=OrderedAttribute.WIDTH),
    _FieldSpec("Height", _Kind.INTEGER, _ORDER_OPERATORS, True, ordered_attribute=OrderedAttribute.HEIGHT),
    _FieldSpec("Tags.all", _Kind.TAGS, _MATCH_OPERATORS, True, tag_scope=TagSourceScope.ALL),
    _FieldSpec("Tags.ai", _Kind.TAGS, _MATCH_OPERATORS, True, tag_scope=TagSourceScope.AI),
    _FieldSpec("Tags.user", _Kind.TAGS, _MATCH_OPERATORS, True, tag_scope=TagSourceScope.USER),
    _FieldSpec("Content", _Kind.CONTENT, _MATCH_OPERATORS, False),
    _FieldSpec("Image", _Kind.IMAGE, _MATCH_OPERATORS, False),
    _FieldSpec("TopK", _Kind.TOP_K, ("=",), False),
    _FieldSpec("ScoreThreshold", _Kind.SCORE_THRESHOLD, ("=",), False),
)
_FIELDS_BY_LOWER_NAME = {spec.name.lower(): spec for spec in _FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(spec.name for spec in _FIELDS)

# What the grammar's terminals are called in messages.
_TERMINAL_DESCRIPTIONS = {
    "_LPAR": '"("',
    "_RPAR": '")"',
    "_AND": "AND",
    "_OR": "OR",
    "NOT": "NOT",
    "HAS": "HAS",
    "FIELD": "a field name",
    "OPERATOR": "an operator (= : > >= < <=)",
    "STRING": "a quoted string",
    "NUMBER": "a number",
    "$END": "the end of the query",
}
_TERMINAL_ORDER = list(_TERMINAL_DESCRIPTIONS)
_INTEGER = re.compile(r"^[+-]?\d+$")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_INT64_MAX = 2**63 - 1


@functools.cache
def _parser() -> Lark:
    grammar = (resources.files("viewfinder_search.domain") / "query.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse_query(query: str) -> CompiledQuery:
    """Parses, type-checks and compiles a DSL query; raises ``QueryError`` with the position."""
    if not query.strip():
        raise QueryError("the query is empty", line=1, column=1, expected=["a condition"])
    try:
        tree = _parser().parse(query)
    except UnexpectedInput as exc:
        raise _syntax_error(query, exc) from None
    return _Compiler().compile(tree)


def _describe_expected(names: Iterable[str]) -> list[str]:
    known = [name for name in _TERMINAL_ORDER if name in set(names)]
    return [_TERMINAL_DESCRIPTIONS[name] for name in known]


def _end_position(query: str) -> tuple[int, int]:
    lines = query.split("\n")
    return len(lines), len(lines[-1]) + 1


def _accepts(interactive: InteractiveParser) -> set[str]:
    """Terminals the interactive parser accepts next (lark leaves ``accepts`` unannotated)."""
    return set(interactive.accepts())  # type: ignore[no-untyped-call]


def _accepted_after(query: str, position: int) -> set[str] | None:
    """The terminals the parser accepts after ``query[:position]`` (None if that prefix does not lex)."""
    try:
        interactive = _parser().parse_interactive(query[:position])
        interactive.exhaust_lexer()
        return _accepts(interactive)
    except UnexpectedInput:
        return None


def _open_parentheses(query: str, position: int) -> int:
    """How many "(" are open before ``position`` (the text before an error token lexes cleanly)."""
    depth = 0
    for token in _parser().lex(query[:position]):
        depth += {"_LPAR": 1, "_RPAR": -1}.get(token.type, 0)
    return depth


def _syntax_error(query: str, exc: UnexpectedInput) -> QueryError:
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        # The interactive parser knows exactly what fits here; the LALR
        # state's list can name terminals that only fit in another context,
        # and after default reductions it can miss some (AND/OR before ")").
        accepted = _accepted_after(query, token.start_pos) if token.type != "$END" else None
        if accepted is None:
            accepted = (
                _accepts(exc.interactive_parser) if exc.interactive_parser is not None else exc.expected
            )
        expected = _describe_expected(accepted)
        if token.type == "$END":
            line, column = _end_position(query)
            message = "unexpected end of the query"
        else:
            line, column = token.line or 1, token.column or 1
            message = f"unexpected {token.value!r}"
            if token.type == "_RPAR" and _open_parentheses(query, token.start_pos or 0) == 0:
                message = "unexpected ')' without a matching '('"
            elif token.type == "FIELD" and "STRING" in accepted:
                message += " (text values need double quotes)"
        return QueryError(
            f"{message}; expected {_join(expected)}", line=line, column=column, expected=expected
        )
    if isinstance(exc, UnexpectedCharacters):
        if exc.char == '"':
            return QueryError(
                "unterminated string: it needs a closing double quote on the same line",
                line=exc.line,
                column=exc.column,
                expected=["a closing '\"'"],
            )
        accepted = _accepted_after(query, exc.pos_in_stream) if exc.pos_in_stream is not None else None
        expected = _describe_expected(accepted if accepted is not None else (exc.allowed or ()))
        if exc.char == "'":
            message = 'unexpected "\'" (strings use double quotes)'
        else:
            message = f"unexpected character {exc.char!r}"
        if expected:
            message += f"; expected {_join(expected)}"
        return QueryError(message, line=exc.line, column=exc.column, expected=expected)
    return QueryError(str(exc), line=exc.line, column=exc.column)


def _join(items: Sequence[str]) -> str:
    if not items:
        return "nothing more"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _error_at(token: Token, message: str, expected: Sequence[str] = ()) -> QueryError:
    return QueryError(message, line=token.line or 1, column=token.column or 1, expected=expected)


def _decode_string(token: Token) -> str:
    body = token.value[1:-1]
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped not in _ESCAPES:
                column = (token.column or 1) + 1 + index
                raise QueryError(
                    f"unknown escape '\\{escaped}' in a string",
                    line=token.line or 1,
                    column=column,
                    expected=['\\"', "\\\\", "\\n", "\\t"],
                )
            out.append(_ESCAPES[escaped])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _parse_time(token: Token, spec: _FieldSpec) -> datetime:
    if token.type != "STRING":
        raise _error_at(
            token, f"{spec.name} needs an ISO-8601 time in double quotes", ['"2025-02-28T00:00:00Z"']
        )
    text = _decode_string(token)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _error_at(
            token,
            f"{text!r} is not an ISO-8601 time (e.g. 2025-02-28T00:00:00Z)",
            ['"2025-02-28T00:00:00Z"'],
        ) from None
    # A time without an offset is read as UTC, so a query means the same everywhere.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _parse_integer(token: Token, spec: _FieldSpec, minimum: int, maximum: int) -> int:
    if token.type != "NUMBER" or not _INTEGER.match(token.value):
        raise _error_at(token, f"{spec.name} needs a whole number", ["an integer"])
    value = int(token.value)
    if not minimum <= value <= maximum:
        raise _error_at(
            token, f"{spec.name} must be between {minimum} and {maximum}, got {value}", ["an integer"]
        )
    return value


def _parse_text(token: Token, spec: _FieldSpec) -> str:
    if token.type != "STRING":
        raise _error_at(token, f"{spec.name} needs a text value in double quotes", ["a quoted string"])
    return _decode_string(token)


class _Compiler:
    """Walks the parse tree once, checking types and building the condition."""

    def __init__(self) -> None:
        # Each directive with the field token that set it, for error positions.
        self._semantic: tuple[SemanticQuery, Token] | None = None
        self._top_k: tuple[int, Token] | None = None
        self._threshold: tuple[float, Token] | None = None

    def compile(self, tree: Tree[Token] | Token) -> CompiledQuery:
        condition = self._node(tree, top_level=True)
        if self._semantic is None:
            for directive in (self._top_k, self._threshold):
                if directive is not None:
                    token = directive[1]
                    raise _error_at(
                        token,
                        f"{token.value} needs a semantic query (Content or Image) in the same query",
                        ["Content", "Image"],
                    )
        return CompiledQuery(
            condition=condition if condition is not None else all_of(()),
            semantic=self._semantic[0] if self._semantic else None,
            top_k=self._top_k[0] if self._top_k else None,
            score_threshold=self._threshold[0] if self._threshold else None,
        )

    def _node(self, node: Tree[Token] | Token, *, top_level: bool) -> Condition | None:
        assert isinstance(node, Tree), node
        kind = node.data
        if kind == "and_expr":
            parts = [self._node(child, top_level=top_level) for child in node.children]
            return all_of([part for part in parts if part is not None])
        if kind == "or_expr":
            return AnyOfCondition(tuple(self._required(child) for child in node.children))
        if kind == "negation":
            return Not(self._required(node.children[1]))
        if kind == "has":
            return self._has(node)
        if kind == "comparison":
            return self._comparison(node, top_level=top_level)
        raise AssertionError(f"unknown parse node {kind}")  # the grammar has no other rules

    def _required(self, node: Tree[Token] | Token) -> Condition:
        """A part under OR or NOT, where directives are not allowed."""
        condition = self._node(node, top_level=False)
        assert condition is not None  # directives raise when not top-level
        return condition

    def _field(self, token: Token) -> _FieldSpec:
        spec = _FIELDS_BY_LOWER_NAME.get(token.value.lower())
        if spec is None:
            close = difflib.get_close_matches(token.value.lower(), list(_FIELDS_BY_LOWER_NAME), n=1)
            hint = f"; did you mean {_FIELDS_BY_LOWER_NAME[close[0]].name}?" if close else ""
            raise _error_at(token, f"unknown field {token.value!r}{hint}", FIELD_NAMES)
        return spec

    def _has(self, node: Tree[Token]) -> Condition:
        field_token = node.children[1]
        assert isinstance(field_token, Token)
        spec = self._field(field_token)
        if not spec.has_allowed:
            fields = [s.name for s in _FIELDS if s.has_allowed]
            raise _error_at(field_token, f"HAS does not apply to {spec.name}", fields)
        if spec.tag_scope is not None:
            return HasTag(spec.tag_scope)
        attribute = spec.text_attribute or spec.ordered_attribute
        assert attribute is not None
        return Present(attribute)

    def _comparison(self, node: Tree[Token], *, top_level: bool) -> Condition | None:
        field_token, operator_token, value_token = node.children
        assert isinstance(field_token, Token)
        assert isinstance(operator_token, Token)
        assert isinstance(value_token, Token)
        spec = self._field(field_token)
        operator = operator_token.value
        if operator not in spec.operators:
            raise _error_at(
                operator_token, f"{spec.name} does not support {operator!r}", list(spec.operators)
            )
        if spec.kind in (_Kind.CONTENT, _Kind.IMAGE, _Kind.TOP_K, _Kind.SCORE_THRESHOLD):
            self._directive(spec, field_token, value_token, top_level=top_level)
            return None
        if spec.kind is _Kind.TEXT:
            return self._text_condition(spec, operator, _parse_text(value_token, spec))
        if spec.kind is _Kind.TAGS:
            assert spec.tag_scope is not None
            name = _parse_text(value_token, spec)
            return HasTag(spec.tag_scope, name=name, name_contains=operator == ":")
        assert spec.ordered_attribute is not None
        value: int | datetime
        if spec.kind is _Kind.TIME:
            value = _parse_time(value_token, spec)
        else:
            value = _parse_integer(value_token, spec, -_INT64_MAX, _INT64_MAX)
        return Compare(spec.ordered_attribute, Comparison(operator), value)

    @staticmethod
    def _text_condition(spec: _FieldSpec, operator: str, value: str) -> Condition:
        attribute = spec.text_attribute
        assert attribute is not None
        if operator == ":":
            return TextMatch(attribute, TextMatchMode.CONTAINS, value)
        if attribute is TextAttribute.FORMAT:
            return TextMatch(attribute, TextMatchMode.EXACT_IGNORE_CASE, value)
        if attribute is TextAttribute.DIRECTORY:
            # "a/b/" and "a/b" name the same directory.
            return TextMatch(attribute, TextMatchMode.EXACT, value.rstrip("/"))
        return TextMatch(attribute, TextMatchMode.EXACT, value)

    def _directive(
        self, spec: _FieldSpec, field_token: Token, value_token: Token, *, top_level: bool
    ) -> None:
        if not top_level:
            raise _error_at(
                field_token,
                f"{spec.name} may only appear in the top-level AND chain, not under OR or NOT",
                ["a filter condition"],
            )
        if spec.kind in (_Kind.CONTENT, _Kind.IMAGE):
            if self._semantic is not None:
                raise _error_at(
                    field_token,
                    f"a query holds one semantic query; {self._semantic[1].value} at line "
                    f"{self._semantic[1].line}, column {self._semantic[1].column} is one already",
                )
            text = _parse_text(value_token, spec).strip()
            if not text:
                raise _error_at(value_token, f"{spec.name} needs a non-empty value", ["a quoted string"])
            semantic: SemanticQuery
            if spec.kind is _Kind.CONTENT:
                if len(text) > MAX_QUERY_TEXT_CHARS:
                    raise _error_at(value_token, f"Content is longer than {MAX_QUERY_TEXT_CHARS} characters")
                semantic = TextQuery(text)
            else:
                if "://" not in text:
                    raise _error_at(
                        value_token,
                        f"Image needs a bucket URI such as s3://bucket/key.jpg, got {text!r}",
                        ['"s3://bucket/key.jpg"'],
                    )
                semantic = ImageUriQuery(text)
            self._semantic = (semantic, field_token)
            return
        if spec.kind is _Kind.TOP_K:
            if self._top_k is not None:
                raise _error_at(field_token, "TopK is given twice")
            self._top_k = (_parse_integer(value_token, spec, 1, MAX_TOP_K), field_token)
            return
        if self._threshold is not None:
            raise _error_at(field_token, "ScoreThreshold is given twice")
        if value_token.type != "NUMBER":
            raise _error_at(value_token, "ScoreThreshold needs a number", ["a number"])
        self._threshold = (float(value_token.value), field_token)
