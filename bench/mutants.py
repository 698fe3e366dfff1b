"""The mutants of a Python module, for bench/mutation.py: small realistic bugs, each a precise text edit.

Found with ``ast`` (and ``tokenize`` to place operators), so line numbers are kept: comparisons flipped, arithmetic
swapped, and/or swapped, ``not`` removed, True/False flipped, numbers changed, ``return x`` -> ``return None``.
Docstrings, f-strings, annotations, ``__all__``, imports, ``raise``, message calls, ``if __name__`` and
``TYPE_CHECKING`` blocks, assert messages and lines marked ``# pragma: no mutate`` are left alone.
"""

from __future__ import annotations

import ast
import bisect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

MESSAGE_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "critical", "log", "_log",
                 "caption", "markdown", "write", "set_description", "set_postfix"}
OPS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"), ast.Eq: ("==", "!="),
       ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"),
       ast.NotIn: ("not in", "in"), ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"),
       ast.Div: ("/", "*"), ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*"),
       ast.And: ("and", "or"), ast.Or: ("or", "and")}


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository, e.g. allconv/preprocess.py
    line: int
    start: int  # character offsets into the source
    end: int
    old: str
    new: str
    kind: str

    def apply(self, src: str) -> str:
        return src[:self.start] + self.new + src[self.end:]

    def __str__(self) -> str:
        return f"{self.path}:{self.line}  {' '.join(self.old.split())[:60]} -> {self.new}  [{self.kind}]"


class Finder(ast.NodeVisitor):
    """Collects the mutants of one module's source."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.text, self.found = path, text, []
        self.lines, self.starts = text.splitlines(keepends=True), [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = [(self.starts[t.start[0] - 1] + t.start[1], self.starts[t.end[0] - 1] + t.end[1], t.string)
                       for t in tokenize.generate_tokens(io.StringIO(text).readline)
                       if t.type in (tokenize.OP, tokenize.NAME) and t.string not in ("(", ")")]
        self.tok_starts = [t[0] for t in self.tokens]

    def span(self, node: ast.AST) -> tuple[int, int]:
        def off(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
            return self.starts[line - 1] + len(self.lines[line - 1].encode()[:col].decode(errors="ignore"))
        return off(node.lineno, node.col_offset), off(node.end_lineno, node.end_col_offset)

    def add(self, start: int, end: int, new: str, kind: str) -> None:
        line = bisect.bisect_right(self.starts, start)
        self.found.append(Mutant(self.path, line, start, end, self.text[start:end], new, kind))

    def add_op(self, a: ast.AST, b: ast.AST, op: ast.AST, kind: str, suffix: str = "") -> None:
        """Swap the operator between nodes ``a`` and ``b``, when nothing but it (and parentheses) lies between."""
        lo, hi = self.span(a)[1], self.span(b)[0]
        toks = self.tokens[bisect.bisect_left(self.tok_starts, lo):bisect.bisect_left(self.tok_starts, hi)]
        old, new = OPS.get(type(op), ("", ""))
        if toks and " ".join(t[2] for t in toks) == old + suffix:
            self.add(toks[0][0], toks[-1][1], new + suffix, kind)

    def visit(self, node: ast.AST) -> None:
        if not _skipped(node):
            super().visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in (*node.decorator_list, node.args, *node.body):  # not the return annotation
            self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node: ast.arg) -> None:  # only an annotation inside (defaults belong to ast.arguments)
        pass

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_Assert(self, node: ast.Assert) -> None:
        self.visit(node.test)

    def visit_Compare(self, node: ast.Compare) -> None:
        for a, b, op in zip([node.left, *node.comparators], node.comparators, node.ops):
            self.add_op(a, b, op, "compare")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if not (_is_text(node.left) or _is_text(node.right)):  # string building, Path / "name"
            self.add_op(node.left, node.right, node.op, "arith")
            self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.add_op(node.target, node.value, node.op, "arith", "=")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for a, b in zip(node.values, node.values[1:]):
            self.add_op(a, b, node.op, "and/or")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            start, end = self.span(node)
            self.add(start, end, self.text[start + 3:end].lstrip(), "not")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool):
            self.add(*self.span(node.value), str(not node.value.value), "kwarg")
        else:
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self.add(*self.span(node), str(not v), "bool")
        elif isinstance(v, int):
            start, end = self.span(node)  # keep 0o/0x/0b literals in their base
            self.add(start, end, {"0o": oct, "0x": hex, "0b": bin}.get(self.text[start:start + 2].lower(), str)(v + 1),
                     "number")
        elif isinstance(v, float):
            self.add(*self.span(node), repr(float(f"{v * 10:.12g}")) if v else "1.0", "number")

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self.add(*self.span(node.value), "None", "return")
        self.generic_visit(node)


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))


def _skipped(node: ast.AST) -> bool:
    """Subtrees with no behaviour worth a test: docs, messages, imports, ``__all__``, script and type-check guards."""
    if isinstance(node, (ast.JoinedStr, ast.Raise, ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Expr):
        return _is_text(node.value)
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    if isinstance(node, ast.If):
        return any(word in ast.unparse(node.test) for word in ("__name__", "TYPE_CHECKING"))
    if isinstance(node, ast.Call):
        return getattr(node.func, "attr", getattr(node.func, "id", "")) in MESSAGE_CALLS
    return False


def _def_lines(tree: ast.AST, names: set[str], prefix: str = "") -> list[range]:
    """Line ranges of the functions or classes named ``name`` or ``Class.method``."""
    out = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if prefix + child.name in names or child.name in names:
                out.append(range(child.lineno, child.end_lineno + 1))
            out += _def_lines(child, names, f"{prefix}{child.name}.")
        else:
            out += _def_lines(child, names, prefix)
    return out


def mutants(root: Path, spec: str, kinds: set[str] | None) -> list[Mutant]:
    """The mutants of ``spec`` (``path`` or ``path::name,Class.method``) that still parse."""
    path, _, names = spec.partition("::")
    text = (root / path).read_text(encoding="utf-8")
    finder, tree = Finder(path, text), ast.parse(text)
    finder.visit(tree)
    lines = _def_lines(tree, set(names.split(","))) if names else [range(1, len(finder.lines) + 1)]
    keep = []
    for m in finder.found:
        if (not kinds or m.kind in kinds) and any(m.line in r for r in lines) \
                and "pragma: no mutate" not in finder.lines[m.line - 1]:
            try:
                ast.parse(m.apply(text))
                keep.append(m)
            except SyntaxError:
                pass
    return keep
