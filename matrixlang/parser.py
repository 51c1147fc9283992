"""Text → AST. Lark (LALR, contextual lexer) does the lexing and parsing; this module builds the
AST with spans, turns Lark's errors into diagnostics in plain words, and recovers per declaration so
that one broken block does not hide the errors in the others."""

from __future__ import annotations

import bisect
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import nodes as n
from .diagnostics import Diagnostics, Label
from .source import Source, Span
from .strings import decode

KEYWORDS = frozenset(
    ["workflow", "input", "limits", "model", "tool", "agent", "flow", "output", "params", "extract", "start", "end", "fail", "when", "and", "or", "not", "in", "contains", "matches", "true", "false", "null"]
)
DECL_KEYWORDS = ("workflow", "input", "limits", "model", "tool", "agent", "flow", "output")


def grammar_text() -> str:
    """The grammar, from the installed package or, in a checkout, from grammar/."""
    try:
        return (resources.files("matrixlang.grammar") / "matrix.lark").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / "grammar" / "matrix.lark").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False, cache=False)


# ---- syntax errors in words -----------------------------------------------------------------

TERMINAL_WORDS = {
    "NAME": "a name", "STRING": "a string", "RAW_STRING": "a string", "LONG_STRING": "a string",
    "RAW_LONG_STRING": "a string", "NUMBER": "a number", "QUANTITY": "a duration or size",
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "LPAR": "`(`", "RPAR": "`)`",
    "EQUAL": "`=`", "COLON": "`:`", "COMMA": "`,`", "DOT": "`.`", "ARROW": "`->`", "RANGE": "`..`",
    "QMARK": "`?`", "MINUS": "`-`", "ADD_OP": "`+`", "MUL_OP": "`*`", "LESSTHAN": "`<`",
    "MORETHAN": "`>`", "$END": "end of file",
}
for _kw in KEYWORDS:
    TERMINAL_WORDS[_kw.upper()] = f"`{_kw}`"


_OPERATORS = {"DOT", "LSQB", "ADD_OP", "MUL_OP", "MINUS", "LESSTHAN", "MORETHAN", "IN", "NOT", "CONTAINS",
              "MATCHES", "AND", "OR", "RANGE"}


def _terminal_word(t: str) -> str:
    if t in TERMINAL_WORDS:
        return TERMINAL_WORDS[t]
    try:
        pattern = _lark().get_terminal(t).pattern
        return f"`{pattern.value}`"
    except (KeyError, AttributeError):
        return f"`{t.lower()}`"


def _describe(terminals: set[str]) -> str:
    words: list[str] = []
    keys = [t for t in terminals if t in {k.upper() for k in KEYWORDS}]
    if "NAME" in terminals and len(keys) > 4:
        terminals = terminals - set(keys)
    # A position that takes any expression lists a dozen terminals; say so in one word.
    if {"NUMBER", "STRING", "LPAR"} <= terminals:
        terminals = terminals - {"NUMBER", "STRING", "RAW_STRING", "LONG_STRING", "RAW_LONG_STRING",
                                 "QUANTITY", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE", "NULL", "NOT",
                                 "NAME"}
        words.append("an expression")
    anon = {t for t in terminals if t.startswith("__ANON")}
    if (terminals & (_OPERATORS - {"LSQB", "MINUS", "COLON", "RANGE"})) or anon:
        terminals = terminals - _OPERATORS - anon
        words.append("an operator")
    for t in sorted(terminals, key=lambda t: (t == "$END", _terminal_word(t))):
        w = _terminal_word(t)
        if w not in words:
            words.append(w)
    if not words:
        return "something else"
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def _token_words(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type in ("STRING", "RAW_STRING", "LONG_STRING", "RAW_LONG_STRING"):
        return "a string"
    if tok.type in ("NUMBER", "QUANTITY"):
        return f"`{tok.value}`"
    return f"`{tok.value}`"


def _hint(expected: set[str], tok: Token | None, prev: Token | None, text: str, offset: int) -> str | None:
    """A fix for the mistakes people actually make."""
    val = tok.value if tok is not None and tok.type != "$END" else ""
    prev_val = prev.value if prev is not None else ""
    if val == ":" and "EQUAL" in expected:
        return "settings are written `key = value`; `name: type` is only for fields in `input { }`"
    if val == "=" and expected == {"COLON"}:
        return "input fields are written `name: type`, e.g. `question: str`"
    if val == "=" and "EQUAL" not in expected:
        return "to compare, write `==`"
    if "EQUAL" in expected and tok is not None and tok.type in ("STRING", "NUMBER", "NAME", "QUANTITY", "LONG_STRING"):
        return "settings are written `key = value`: add `=`"
    if prev_val == "if":
        return "guards are written `when EXPR`, e.g. `a -> b when turns > 3`"
    if val in ("=>", ">") and "ARROW" in expected:
        return "transitions are written `from -> to`"
    if "RBRACE" in expected and tok is not None and \
            tok.type in {k.upper() for k in DECL_KEYWORDS} | {"$END", "EXTRACT", "PARAMS"}:
        return "a block is missing its closing `}`"
    if "ARROW" in expected:
        return "each transition is `from -> to`, optionally followed by `when EXPR`"
    for closing, pair in (("RPAR", "`(` is missing its closing `)`"), ("RSQB", "`[` is missing its closing `]`")):
        if closing in expected and expected <= {closing, "COMMA"} and tok is not None and tok.type != closing:
            return "a " + pair
    return None


# Mistakes people make, as Lark `match_examples` snippets: an error in the same parser state, on the
# same kind of token, gets the same hint.
SYNTAX_EXAMPLES: dict[str, list[str]] = {
    "settings are written `key = value`: add `=`": [
        'model m { backend "sim" }', 'limits { max_steps 4 }', 'agent a { model m }', 'tool t { kind "python" }'],
    "write `key = value` here; `name: type` is only for fields in `input { }`": [
        'model m { backend: "sim" }', 'agent a { model: m }', 'limits { max_steps: 3 }', 'output { id: row.id }'],
    "input fields are written `name: type`, e.g. `question: str`": ['input { id = str }', 'input { id str }'],
    "no commas between settings: separate them with spaces or new lines": [
        'model m { backend = "sim", name = "x" }', 'output { a = 1, b = 2 }'],
    "no commas between fields: separate them with spaces or new lines": [
        "input { a: str, b: str }", "input { a: str?, b: str }", "input { a: list[str], b: str }"],
    "one arrow per transition: write `a -> b` and `b -> c` on their own lines": [
        "flow { a -> b -> c }", 'flow { a -> fail "x" -> c }', "flow { a -> end -> c }"],
    "element types are written in brackets, e.g. `list[str]`": ["input { a: list<str> }", "input { a: list(str) }"],
    "settings take a single `=`; `==` compares in guards": ['model m { backend == "sim" }'],
    "to compare, write `==`": ['flow { a -> b when x = 1 }', 'flow { a -> b when x.y = "z" }'],
    "transitions are written `from -> to`": ['flow { a => b }', 'flow { a = b }', 'flow { a > b }'],
    'give the workflow a name: `workflow NAME "description"`': ['workflow "does things"'],
    "give the declaration a name, e.g. `agent teacher { ... }`": [
        "agent { }", "model { }", "tool { }"],
}


@lru_cache(maxsize=1)
def _example_errors() -> list[tuple[int, frozenset, str, str]]:
    """(LALR state, accepted terminals, token type, label) of each example's error."""
    out = []
    for label, examples in SYNTAX_EXAMPLES.items():
        for text in examples:
            try:
                _lark().parse(text)
            except UnexpectedToken as ut:
                out.append((ut.state.position, frozenset(ut.accepts or ()), ut.token.type, label))
            except UnexpectedInput:
                continue
    return out


def _match_example(exc: UnexpectedInput) -> str | None:
    """The label of an example that fails in the same LALR state on the same kind of token.

    Lark's own `match_examples` compares whole parser states, which include the stack depth, so an
    example would match only when as many items precede the error as in the example (and any token
    in the same state would do); the state number and the token type are what identify a mistake.
    """
    if not isinstance(exc, UnexpectedToken) or exc.state is None:
        return None
    key = (exc.state.position, frozenset(exc.accepts or ()), exc.token.type)
    return next((label for *k, label in _example_errors() if tuple(k) == key), None)


_CHAR_HINTS = {
    "'": ("E004", "strings use double quotes: \"...\""),
    "&": ("E004", "write `and` instead of `&&`"),
    "|": ("E004", "write `or` instead of `||`"),
    "!": ("E004", "write `not` (or `!=` to compare)"),
    ";": ("E004", "no `;` is needed between settings: put each on its own line"),
    "→": ("E004", "write the arrow as `->`"),
    "=": ("E004", None),
}


def _syntax_diag(exc: UnexpectedInput, text: str, diags: Diagnostics, base: int = 0,
                 eof_word: str = "end of file") -> None:
    """One diagnostic for a Lark error; `text` is what was parsed (a declaration, the rest blanked)."""
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        ch = text[pos] if pos < len(text) else ""
        if ch == '"' and text[max(0, pos - 2):pos] == '""':
            # `"""...` never closed: the lexer took the first two quotes for an empty string.
            start = pos - 3 if text[max(0, pos - 3):pos - 2] == "r" else pos - 2
            diags.error("E002", 'unterminated `"""` string', Span(start, pos + 1),
                        'close the text with `"""`')
            return
        if ch == '"' or text.startswith('r"', pos):
            diags.error("E002", "unterminated string", Span(pos, pos + 1),
                        'close the string with `"` on the same line, or use `"""` for text over several lines')
            return
        if ch == "\\":
            diags.error("E004", "unexpected `\\` outside a string", Span(pos, pos + 1))
            return
        code, hint = _CHAR_HINTS.get(ch, ("E004", None))
        expected = set(exc.allowed or ())
        diags.error(code, f"unexpected character `{ch}`", Span(pos, pos + 1),
                    hint or (f"expected {_describe(expected)}" if expected else None))
        return
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        expected = set(exc.accepts or exc.expected or ())
        prev = exc.token_history[-1] if getattr(exc, "token_history", None) else None
        if tok.type == "$END":
            pos = _code_end(text)
            span = Span(max(0, pos - 1), pos)
        else:
            span = Span(tok.start_pos, tok.end_pos if tok.end_pos is not None else tok.start_pos + 1)
        if prev is not None and prev.type == "NAME" and "ARROW" in expected and prev.start_pos is not None:
            # `a -> b if x` and `a -> fail reason`: the mistake is the name before the reported token.
            before = text[: prev.start_pos].rstrip()
            if prev.value == "if":
                diags.error("E001", "unexpected `if` after a transition", _span(prev),
                            "guards are written `when EXPR`, e.g. `a -> b when turns > 3`")
                return
            if re.search(r"(?<![\w.])fail$", before):
                diags.error("E001", f"the reason after `fail` must be a string, not the name `{prev.value}`",
                            _span(prev), f'write `fail "{prev.value}"`')
                return
        if tok.type == "MORETHAN" and tok.start_pos and text[tok.start_pos - 1] == "-":
            # `a -> b when x and` then `c -> d`: the guard took `c -` as its operand; the mistake is
            # the operator (or `when`) left at the end of the line before.
            before = _code_end(text[: text.rfind("\n", 0, tok.start_pos) + 1])
            m = re.search(r"\S+$", text[:before])
            if m:
                diags.error("E001", f"expected an expression after `{m.group(0)}`", Span(m.start(), m.end()),
                            f"complete the guard, or remove the `{m.group(0)}`")
                return
        hint = _match_example(exc) or _hint(expected, tok, prev, text, span.start)
        if hint is None and tok.type == "RBRACE" and not expected & {"RBRACE", "COMMA", "RPAR", "RSQB"}:
            hint = "this `}` closes no block: remove it, or check the braces above"
        if "RBRACE" in expected and tok.type in {k.upper() for k in DECL_KEYWORDS} | {"$END", "EXTRACT", "PARAMS"}:
            if tok.type != "$END":  # the `}` belongs after the code before this token
                end = _code_end(text[: tok.start_pos])
                span = Span(max(0, end - 1), end)
            opening = _unclosed_brace(text, span.start, base)
            labels = [Label(Span(opening, opening + 1), "this `{` is never closed")] if opening is not None else []
            found = eof_word if tok.type == "$END" else _token_words(tok)
            diags.error("E006", f"expected `}}` before {found}", span, hint, labels)
            return
        diags.error("E001", f"expected {_describe(expected)}, found {_token_words(tok)}", span, hint)
        return
    if isinstance(exc, UnexpectedEOF):
        pos = _code_end(text)
        diags.error("E001", f"unexpected end of file; expected {_describe(set(exc.expected))}",
                    Span(max(0, pos - 1), pos))
        return
    diags.error("E001", "syntax error", Span(0, 1))


def _code_end(text: str) -> int:
    """Offset just after the last character of code (trailing comments and blanks skipped)."""
    end = len(text.rstrip())
    comments = [m for m in _COMMENT_SCAN.finditer(text) if m.group(0).startswith("#")]
    for m in reversed(comments):
        if m.end() < end:
            break
        end = len(text[: m.start()].rstrip())
    return end


def _unclosed_brace(text: str, upto: int, start: int) -> int | None:
    """Offset of the last `{` left open between `start` and `upto` (strings and comments skipped)."""
    stack: list[int] = []
    for m in _BRACE_SCAN.finditer(text, start, upto):
        s = m.group(0)
        if s == "{":
            stack.append(m.start())
        elif s == "}" and stack:
            stack.pop()
    return stack[-1] if stack else None


_BRACE_SCAN = re.compile(r'r?"""[\s\S]*?"""|r?"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}]')


# ---- AST building ---------------------------------------------------------------------------

def _span(meta_or_tok) -> Span:
    if isinstance(meta_or_tok, Token):
        return Span(meta_or_tok.start_pos, meta_or_tok.end_pos)
    if isinstance(meta_or_tok, n.Node):
        return meta_or_tok.span
    return Span(meta_or_tok.start_pos, meta_or_tok.end_pos)


class _Builder(Transformer):
    """Lark tree → nodes. String decoding problems are collected, not raised."""

    def __init__(self, diags: Diagnostics):
        super().__init__(visit_tokens=False)
        self.diags = diags

    # names
    @v_args(meta=True)
    def decl_name(self, meta, ch):
        tok = ch[0] if isinstance(ch[0], Token) else ch[0]
        return n.Name(_span(tok), str(tok), is_keyword=tok.type != "NAME")

    def keyword(self, ch):
        return ch[0]

    @v_args(meta=True)
    def key(self, meta, ch):
        return n.Name(_span(ch[0]), str(ch[0]))

    @v_args(meta=True)
    def attr_name(self, meta, ch):
        return n.Name(_span(ch[0]), str(ch[0]))

    # literals
    def string(self, ch):
        tok: Token = ch[0]
        value, style, offsets, bad = decode(str(tok), tok.start_pos)
        for b in bad:
            self.diags.error("E003", f"unknown escape `{b.text}` in a string", Span(b.offset, b.offset + 2),
                             'only \\n \\t \\" \\\\ are escapes; for a regex use a raw string r"...", '
                             "or write \\\\ for a backslash")
        return n.Literal(_span(tok), "str", value, style, offsets)

    def literal(self, ch):
        x = ch[0]
        if isinstance(x, n.Literal):
            return x
        tok: Token = x
        sp = _span(tok)
        if tok.type == "NUMBER":
            v = float(tok) if "." in tok else int(tok)
            return n.Literal(sp, "float" if isinstance(v, float) else "int", v)
        if tok.type == "QUANTITY":
            m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]+)", str(tok))
            num = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
            return n.Literal(sp, "quantity", (num, m.group(2)))
        if tok.type in ("TRUE", "FALSE"):
            return n.Literal(sp, "bool", tok.type == "TRUE")
        return n.Literal(sp, "null", None)

    # expressions
    @v_args(meta=True)
    def var(self, meta, ch):
        return n.Var(_span(meta), str(ch[0]))

    @v_args(meta=True)
    def call(self, meta, ch):
        fn = n.Name(_span(ch[0]), str(ch[0]))
        return n.Call(_span(meta), fn, [c for c in ch[1:] if isinstance(c, n.Expr)])

    @v_args(meta=True)
    def list(self, meta, ch):
        return n.ListExpr(_span(meta), [c for c in ch if isinstance(c, n.Expr)])

    @v_args(meta=True)
    def attr(self, meta, ch):
        return n.Attr(_span(meta), ch[0], ch[1])

    @v_args(meta=True)
    def index(self, meta, ch):
        return n.Index(_span(meta), ch[0], ch[1])

    @v_args(meta=True)
    def slice(self, meta, ch):
        obj, rest = ch[0], ch[1:]
        colon = next(i for i, c in enumerate(rest) if isinstance(c, Token) and c.type == "COLON")
        lo = rest[colon - 1] if colon > 0 else None
        hi = rest[colon + 1] if colon + 1 < len(rest) else None
        return n.Slice(_span(meta), obj, lo, hi)

    @v_args(meta=True)
    def neg(self, meta, ch):
        arg = ch[1]
        if isinstance(arg, n.Literal) and arg.kind in ("int", "float", "quantity"):
            if arg.kind == "quantity":
                return n.Literal(_span(meta), "quantity", (-arg.value[0], arg.value[1]))
            return n.Literal(_span(meta), arg.kind, -arg.value)
        return n.Unary(_span(meta), "neg", arg)

    @v_args(meta=True)
    def not_op(self, meta, ch):
        return n.Unary(_span(meta), "not", ch[1])

    @v_args(meta=True)
    def binary(self, meta, ch):
        return n.Binary(_span(meta), str(ch[1]), ch[0], ch[2], _span(ch[1]))

    @v_args(meta=True)
    def comparison(self, meta, ch):
        left, op_tree, right = ch
        toks = op_tree.children
        op = "not_in" if len(toks) == 2 else str(toks[0])
        op_span = Span(toks[0].start_pos, toks[-1].end_pos)
        return n.Binary(_span(meta), op, left, right, op_span)

    def _boolop(self, meta, ch, op):
        return n.BoolOp(_span(meta), op, [c for c in ch if isinstance(c, n.Expr)])

    @v_args(meta=True)
    def and_expr(self, meta, ch):
        return self._boolop(meta, ch, "and")

    @v_args(meta=True)
    def or_expr(self, meta, ch):
        return self._boolop(meta, ch, "or")

    @v_args(meta=True)
    def range(self, meta, ch):
        return n.RangeExpr(_span(meta), ch[0], ch[2])

    # declarations
    @v_args(meta=True)
    def setting(self, meta, ch):
        return n.Setting(_span(meta), ch[0], ch[1])

    out_field = setting

    @v_args(meta=True)
    def type_ref(self, meta, ch):
        name = n.Name(_span(ch[0]), str(ch[0]))
        arg = next((c for c in ch[1:] if isinstance(c, n.TypeRef)), None)
        optional = any(isinstance(c, Token) and c.type == "QMARK" for c in ch)
        return n.TypeRef(_span(meta), name, arg, optional)

    @v_args(meta=True)
    def field_decl(self, meta, ch):
        return n.Field(_span(meta), ch[0], ch[1])

    @v_args(meta=True)
    def workflow_decl(self, meta, ch):
        desc = ch[2] if len(ch) > 2 else None
        return n.Workflow(_span(meta), _span(ch[0]), ch[1], desc)

    @staticmethod
    def _body(ch, kind):
        return [c for c in ch if isinstance(c, kind)]

    @v_args(meta=True)
    def input_decl(self, meta, ch):
        return n.Input(_span(meta), _span(ch[0]), self._body(ch, n.Field))

    @v_args(meta=True)
    def limits_decl(self, meta, ch):
        return n.Limits(_span(meta), _span(ch[0]), self._body(ch, n.Setting))

    @v_args(meta=True)
    def model_decl(self, meta, ch):
        return n.Model(_span(meta), _span(ch[0]), ch[1], self._body(ch[2:], n.Setting))

    @v_args(meta=True)
    def tool_decl(self, meta, ch):
        return n.Tool(_span(meta), _span(ch[0]), ch[1], self._body(ch[2:], n.Setting))

    @v_args(meta=True)
    def agent_decl(self, meta, ch):
        items = [c for c in ch[2:] if isinstance(c, (n.Setting, n.Params, n.Extract))]
        return n.Agent(_span(meta), _span(ch[0]), ch[1], items)

    @v_args(meta=True)
    def params_block(self, meta, ch):
        return n.Params(_span(meta), self._body(ch, n.Setting))

    @v_args(meta=True)
    def extract_decl(self, meta, ch):
        return n.Extract(_span(meta), ch[1], ch[2])

    @v_args(meta=True)
    def source(self, meta, ch):
        tok = ch[0]
        kind = {"NAME": "agent", "START": "start", "END": "end", "FAIL": "fail"}[tok.type]
        return n.StateRef(_span(tok), kind, str(tok) if kind == "agent" else None)

    @v_args(meta=True)
    def target(self, meta, ch):
        tok = ch[0]
        kind = {"NAME": "agent", "START": "start", "END": "end", "FAIL": "fail"}[tok.type]
        reason = ch[1] if len(ch) > 1 else None
        return n.StateRef(_span(meta), kind, str(tok) if kind == "agent" else None, reason)

    @v_args(meta=True)
    def transition(self, meta, ch):
        guard = ch[4] if len(ch) > 4 else None
        return n.Transition(_span(meta), ch[0], ch[2], guard)

    @v_args(meta=True)
    def flow_decl(self, meta, ch):
        return n.Flow(_span(meta), _span(ch[0]), self._body(ch, n.Transition))

    @v_args(meta=True)
    def output_decl(self, meta, ch):
        return n.Output(_span(meta), _span(ch[0]), self._body(ch, n.Setting))

    def start(self, ch):
        return [c for c in ch if isinstance(c, n.Decl)]


# ---- entry point ----------------------------------------------------------------------------

_DECL_START = re.compile(
    r"^[ \t]*(workflow|input|limits|model|tool|agent|flow|output)\b(?![ \t]*[=:.(\[])[ \t]*([A-Za-z_]\w*)?",
    re.M,
)


def parse(source: Source, diags: Diagnostics) -> n.Program:
    """Parse a whole file. Syntax errors become diagnostics; the declarations that parse are kept."""
    comments: list[n.Comment] = []
    before = len(diags.items)
    decls, ok = _parse_text(source.text, source, diags, comments)
    broken: set[str] = set()
    if not ok:
        del diags.items[before:]
        decls, comments, broken = _parse_by_declaration(source, diags)
    end = len(source.text)
    return n.Program(Span(0, end), decls, sorted(comments, key=lambda c: c.span.start), broken)


def _parse_text(text: str, source: Source, diags: Diagnostics, comments: list[n.Comment],
                base: int = 0, eof_word: str = "end of file", stop: int | None = None) -> tuple[list[n.Decl], bool]:
    """Parse `text`; its code lies in [base, stop) (the rest is blank), which is where comments are."""
    def on_comment(tok: Token) -> Token:
        comments.append(n.Comment(Span(tok.start_pos, tok.end_pos), str(tok)))
        return tok

    parser = _lark()
    try:
        # Lark's lexer callbacks are fixed at construction; comments are collected from the tokens.
        tree = parser.parse(text)
    except UnexpectedInput as exc:
        _syntax_diag(exc, text, diags, base, eof_word)
        return [], False
    for m in _COMMENT_SCAN.finditer(text, base, len(text) if stop is None else stop):
        if m.group(0).startswith("#"):
            on_comment(Token("COMMENT", m.group(0), m.start(), end_pos=m.end()))
    deep = _too_deep(tree)
    if deep is not None:
        start = getattr(deep.meta, "start_pos", base)
        diags.error("E001", f"nested too deeply: more than {MAX_NESTING} levels of expressions, lists or "
                    "types (a long chain of `+`, `and`, `not` counts one level per operator)",
                    Span(start, start + 1),
                    "split it: compute parts in separate guards, output fields or a tool agent")
        return [], False
    try:
        return _Builder(diags).transform(tree), True
    except VisitError as exc:  # a bug in the builder, not the user's fault
        raise exc.orig_exc from None


MAX_NESTING = 100   # levels of the parse tree: every later pass (and the runtime) recurses on it


def _too_deep(tree: Tree) -> Tree | None:
    """The first subtree more than MAX_NESTING levels down (iteratively: no recursion), or None."""
    stack = [(tree, 1)]
    while stack:
        t, d = stack.pop()
        if d > MAX_NESTING:
            return t
        stack.extend((c, d + 1) for c in t.children if isinstance(c, Tree))
    return None


_COMMENT_SCAN = re.compile(r'r?"""[\s\S]*?"""|r?"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def _parse_by_declaration(source: Source, diags: Diagnostics):
    """Parse each top-level declaration on its own (the rest blanked out, so positions hold)."""
    text = source.text
    strings = [(m.start(), m.end()) for m in _COMMENT_SCAN.finditer(text) if not m.group(0).startswith("#")]
    string_starts = [a for a, _ in strings]

    def inside_string(pos: int) -> bool:
        i = bisect.bisect_right(string_starts, pos) - 1
        return i >= 0 and strings[i][0] < pos < strings[i][1]

    starts = [m.start() for m in _DECL_START.finditer(text) if not inside_string(m.start())]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    bounds = list(zip(starts, starts[1:] + [len(text)], strict=True))
    decls: list[n.Decl] = []
    comments: list[n.Comment] = []
    broken: set[str] = set()
    blank = _blank(text)
    for a, b in bounds:
        chunk = blank[:a] + text[a:b] + blank[b:]
        before = len(diags.items)
        nxt = _DECL_START.match(text, b)
        eof_word = f"`{' '.join(nxt.group(0).split())}`" if nxt else "end of file"
        got, ok = _parse_text(chunk, source, diags, comments, base=a, eof_word=eof_word, stop=b)
        decls += got
        if not ok:
            m = _DECL_START.match(text, a) or _DECL_START.search(text, a, b)
            if m and m.group(2):
                broken.add(m.group(2))
            if m and m.group(1) in ("workflow", "input", "limits", "flow", "output"):
                broken.add(m.group(1))
            # A chunk that fails only at its very end, on a top-level keyword, is a missing `}`.
            del diags.items[before + 1 :]
    return decls, comments, broken


def _blank(s: str) -> str:
    """`s` with every character but newlines replaced by a space (offsets and lines are kept)."""
    return re.sub(r"[^\n]+", lambda m: " " * len(m.group(0)), s)


def parse_expression(text: str) -> n.Expr:
    """Parse a lone expression (used by tests and tools): wraps it as an output field."""
    diags = Diagnostics()
    src = Source("<expr>", f"output {{ x = {text} }}")
    prog = parse(src, diags)
    if diags.has_errors or not prog.decls:
        raise ValueError(diags.items[0].message if diags.items else "not an expression")
    return prog.decls[0].fields[0].value


__all__ = ["parse", "parse_expression", "KEYWORDS", "grammar_text", "Tree"]
