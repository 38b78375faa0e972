"""The safe evaluator for a framework's ``calculation_spec``.

Formulas are researcher-written text that we compute on LLM output, so they are never handed to
``eval``: each is parsed with :mod:`ast` and checked against a whitelist (numbers, variable names,
``+ - * / **``, unary ``+ -``, comparisons, ``a if cond else b`` and a fixed set of functions), then
interpreted by a small tree walker. ``docs/calculation-spec.md`` is the researcher-facing version.

A :class:`CalculationPlan` is the checked, ordered set of formulas of one framework: metrics may use
other metrics (computed first, cycles refused), a missing input makes the metrics that need it
``None`` rather than failing the row, and :meth:`CalculationPlan.duplicates` /
:meth:`CalculationPlan.value_range` let a checker catch copy-paste formulas and impossible ranges.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mva_dagster.errors import FormulaError

__all__ = [
    "FUNCTIONS",
    "CalculationPlan",
    "build_plan",
    "formula_variables",
    "is_prose",
    "parse_formula",
]

Interval = tuple[float, float]
_INF = math.inf
_MAX_FORMULA_CHARS = 10_000
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An ALL-CAPS label such as "CRITICAL:", "SALIENCE-WEIGHTED:" or "MATHEMATICAL PROCESS:".
_PROSE_LABEL = re.compile(r"^\s*[A-Z][A-Z0-9]+(?:[ _-][A-Z0-9]+)*\s*:")
# Four plain words in a row separated by single spaces: never valid in a formula, common in prose.
_PROSE_WORDS = re.compile(r"(?<![\w.])[A-Za-z]+(?: [A-Za-z]+){3}(?![\w.])")


def _mean(*xs: float) -> float:
    return sum(xs) / len(xs)


def _clamp(x: float, lo: float, hi: float) -> float:
    if lo > hi:
        raise ValueError("clamp: lo > hi")
    return min(max(x, lo), hi)


def _round(x: float, ndigits: float = 0.0) -> float:
    if not float(ndigits).is_integer():
        raise ValueError("round: ndigits must be a whole number")
    return float(round(x, int(ndigits)))


def _log(x: float, base: float = math.e) -> float:
    return math.log(x) if base == math.e else math.log(x, base)


# name -> (implementation, min args, max args or None for "any number")
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "abs": (abs, 1, 1),
    "min": (min, 1, None),
    "max": (max, 1, None),
    "round": (_round, 1, 2),
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
    "mean": (_mean, 1, None),
    "clamp": (_clamp, 3, 3),
}
_COMMUTATIVE_CALLS = {"min", "max", "mean"}

_BINOPS: dict[type[ast.operator], tuple[str, Callable[[float, float], float]]] = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
    ast.Pow: ("**", lambda a, b: a**b),
}
_CMPOPS: dict[type[ast.cmpop], tuple[str, Callable[[float, float], bool]]] = {
    ast.Lt: ("<", lambda a, b: a < b),
    ast.LtE: ("<=", lambda a, b: a <= b),
    ast.Gt: (">", lambda a, b: a > b),
    ast.GtE: (">=", lambda a, b: a >= b),
    ast.Eq: ("==", lambda a, b: a == b),
    ast.NotEq: ("!=", lambda a, b: a != b),
}
_FORBIDDEN_WHY: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access ('.') is not allowed",
    ast.Subscript: "indexing ('[...]') is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.BoolOp: "'and' / 'or' are not allowed (use nested 'a if cond else b')",
    ast.NamedExpr: "assignment (':=') is not allowed",
    ast.Starred: "'*args' is not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
}


def _error(message: str, *, name: str, file: str | Path | None, hint: str | None = None) -> FormulaError:
    return FormulaError(message, file=file, field=f"calculation_spec.{name}", hint=hint)


def is_prose(text: object) -> bool:
    """True when ``text`` is obviously an explanation rather than a formula.

    The rule (documented in docs/calculation-spec.md): the text does *not* parse as an expression,
    and either starts with an ALL-CAPS label followed by ':' (``CRITICAL:``, ``SALIENCE-WEIGHTED:``)
    or contains four plain words in a row separated by single spaces (``Normalized sum of all``).
    Anything else that fails to parse is a broken formula and must be reported, not skipped.
    """
    if not isinstance(text, str):
        return False
    try:
        ast.parse(text.strip(), mode="eval")
        return False
    except (SyntaxError, ValueError):
        pass
    return bool(_PROSE_LABEL.match(text) or _PROSE_WORDS.search(text))


class _Checker(ast.NodeVisitor):
    """Walks a parsed formula, refusing every node outside the whitelist and collecting names."""

    def __init__(self, name: str, file: str | Path | None) -> None:
        self.name = name
        self.file = file
        self.variables: set[str] = set()

    def fail(self, why: str, node: ast.AST | None = None, hint: str | None = None) -> FormulaError:
        col = getattr(node, "col_offset", None)
        where = f" (column {col + 1})" if col is not None else ""
        return _error(f"{why}{where}", name=self.name, file=self.file, hint=hint)

    def generic_visit(self, node: ast.AST) -> None:
        why = _FORBIDDEN_WHY.get(type(node), f"'{type(node).__name__}' is not allowed in a formula")
        raise self.fail(why, node)

    def visit_Expression(self, node: ast.Expression) -> None:
        self.visit(node.body)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            kind = "strings" if isinstance(node.value, str) else f"the constant {node.value!r}"
            raise self.fail(f"{kind} are not allowed; formulas compute with numbers only", node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            raise self.fail(f"the name '{node.id}' is not allowed (names may not start with '__')", node)
        if node.id in FUNCTIONS:
            raise self.fail(f"'{node.id}' is a function: call it as {node.id}(...)", node)
        self.variables.add(node.id)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if type(node.op) not in _BINOPS:
            allowed = " ".join(sym for sym, _ in _BINOPS.values())
            raise self.fail(f"operator {type(node.op).__name__} is not allowed (allowed: {allowed})", node)
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if not isinstance(node.op, ast.UAdd | ast.USub):
            raise self.fail(f"unary operator {type(node.op).__name__} is not allowed (only + and -)", node)
        self.visit(node.operand)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise self.fail(f"comparison {type(op).__name__} is not allowed", node)
        self.visit(node.left)
        for comp in node.comparators:
            self.visit(comp)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self.visit(node.body)
        self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> None:
        allowed = ", ".join(FUNCTIONS)
        if not isinstance(node.func, ast.Name):
            self.visit(node.func)  # names the construct (attribute, subscript, lambda...) when it is one
            raise self.fail(f"only direct calls of {allowed} are allowed", node)
        fname = node.func.id
        if fname.startswith("__"):
            raise self.fail(f"the name '{fname}' is not allowed (names may not start with '__')", node)
        if fname not in FUNCTIONS:
            raise self.fail(f"function '{fname}' is not allowed", node, hint=f"allowed functions: {allowed}")
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed in {fname}(...)", node)
        _, lo, hi = FUNCTIONS[fname]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
            raise self.fail(f"{fname}() takes {want} argument(s), got {n}", node)
        for arg in node.args:
            self.visit(arg)


def parse_formula(text: str, *, name: str = "formula", file: str | Path | None = None) -> ast.Expression:
    """Parse and whitelist-check one formula; every failure is a FormulaError naming ``name``."""
    if not isinstance(text, str):
        raise _error(f"formula must be a string, got {type(text).__name__}", name=name, file=file)
    source = " ".join(text.split())
    if not source:
        raise _error("formula is empty", name=name, file=file)
    if len(source) > _MAX_FORMULA_CHARS:
        raise _error(f"formula is longer than {_MAX_FORMULA_CHARS} characters", name=name, file=file)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        hint = "use * for multiplication and / for division" if any(c in source for c in "×÷·") else None
        raise _error(
            f"formula does not parse{col}: {exc.msg}: {source!r}", name=name, file=file, hint=hint
        ) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _error(f"formula does not parse: {exc}", name=name, file=file) from exc
    _Checker(name, file).visit(tree)
    return tree


def formula_variables(tree: ast.AST) -> set[str]:
    """The variable names a (checked) formula reads."""
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id not in FUNCTIONS}


def _finite(value: Any) -> float | None:
    """A row value as a float, or None when it is missing or not a real finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _const(node: ast.Constant) -> float:
    value = node.value
    assert isinstance(value, int | float)  # guaranteed by _Checker.visit_Constant
    return float(value)


def _evaluate(node: ast.AST, env: Mapping[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant):
        return _const(node)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.BinOp):
        result = _BINOPS[type(node.op)][1](_evaluate(node.left, env), _evaluate(node.right, env))
        if isinstance(result, complex):
            raise ValueError("complex result")
        return result
    if isinstance(node, ast.UnaryOp):
        x = _evaluate(node.operand, env)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, env)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comp, env)
            if not _CMPOPS[type(op)][1](left, right):
                return 0.0
            left = right
        return 1.0
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn = FUNCTIONS[node.func.id][0]
        return float(fn(*(_evaluate(arg, env) for arg in node.args)))
    raise TypeError(f"unchecked node {type(node).__name__}")  # unreachable after _Checker


# ---------------------------------------------------------------- normal form (duplicate detection)


def _canon(node: ast.AST) -> Any:
    """A hashable normal form: sums and products flattened and sorted, so `a+b` == `b + (a)`."""
    if isinstance(node, ast.Expression):
        return _canon(node.body)
    if isinstance(node, ast.Constant):
        return ("n", _const(node))
    if isinstance(node, ast.Name):
        return ("v", node.id)
    if isinstance(node, ast.BinOp | ast.UnaryOp) and _is_additive(node):
        terms = sorted(_terms(node, 1), key=repr)
        return terms[0][1] if len(terms) == 1 and terms[0][0] == 1 else ("sum", tuple(terms))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        const, factors = 1.0, []
        for f in _factors(node):
            c = _canon(f)
            if c[0] == "n":
                const *= c[1]
            else:
                factors.append(c)
        if const != 1.0 or not factors:
            factors.append(("n", const))
        factors.sort(key=repr)
        return factors[0] if len(factors) == 1 else ("prod", tuple(factors))
    if isinstance(node, ast.BinOp):
        return (_BINOPS[type(node.op)][0], _canon(node.left), _canon(node.right))
    if isinstance(node, ast.UnaryOp):  # unary + over a non-additive operand
        return _canon(node.operand)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_canon(a) for a in node.args]
        if node.func.id in _COMMUTATIVE_CALLS:
            args.sort(key=repr)
        return ("call", node.func.id, tuple(args))
    if isinstance(node, ast.Compare):
        ops = tuple(_CMPOPS[type(op)][0] for op in node.ops)
        return ("cmp", _canon(node.left), ops, tuple(_canon(c) for c in node.comparators))
    if isinstance(node, ast.IfExp):
        return ("if", _canon(node.test), _canon(node.body), _canon(node.orelse))
    return ("?", ast.dump(node))


def _is_additive(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
    )


def _terms(node: ast.AST, sign: int) -> list[tuple[int, Any]]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        right_sign = sign if isinstance(node.op, ast.Add) else -sign
        return _terms(node.left, sign) + _terms(node.right, right_sign)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _terms(node.operand, -sign if isinstance(node.op, ast.USub) else sign)
    return [(sign, _canon(node))]


def _factors(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


# ---------------------------------------------------------------- interval arithmetic


def _imul(a: float, b: float) -> float:
    return 0.0 if a == 0 or b == 0 else a * b


def _low(x: float) -> float:
    return -_INF if math.isnan(x) else x


def _high(x: float) -> float:
    return _INF if math.isnan(x) else x


def _ispan(values: Iterable[float]) -> Interval:
    vals = [v for v in values if not math.isnan(v)]
    return (min(vals), max(vals)) if vals else (-_INF, _INF)


def _safe(fn: Callable[..., float], *args: float, overflow: float = _INF) -> float:
    try:
        return fn(*args)
    except OverflowError:
        return overflow


def _ipow(b: Interval, e: Interval) -> Interval:
    if e[0] == e[1] and float(e[0]).is_integer() and abs(e[0]) < 1e6:
        n = int(e[0])
        if n == 0:
            return (1.0, 1.0)
        if n < 0:
            if b[0] <= 0 <= b[1]:
                return (-_INF, _INF)
            b = (1 / b[1] if b[1] else _INF, 1 / b[0] if b[0] else _INF)
            b = (min(b), max(b))
            n = -n
        lo = _safe(lambda x: x**n, b[0], overflow=_INF if n % 2 == 0 or b[0] > 0 else -_INF)
        hi = _safe(lambda x: x**n, b[1])
        if n % 2 == 1:
            return (lo, hi)
        top = max(abs(lo), abs(hi))
        return (0.0, top) if b[0] <= 0 <= b[1] else (min(lo, hi), top)
    if b[0] > 0:  # x**y is monotone in each argument separately for x > 0: extremes at corners
        return _ispan(_safe(lambda x, y: x**y, x, y) for x in b for y in e)
    return (-_INF, _INF)


def _icall(fname: str, args: list[Interval]) -> Interval:
    if fname == "abs":
        lo, hi = args[0]
        if lo >= 0:
            return (lo, hi)
        if hi <= 0:
            return (-hi, -lo)
        return (0.0, max(-lo, hi))
    if fname == "min":
        return (min(a[0] for a in args), min(a[1] for a in args))
    if fname == "max":
        return (max(a[0] for a in args), max(a[1] for a in args))
    if fname == "mean":
        return (sum(a[0] for a in args) / len(args), sum(a[1] for a in args) / len(args))
    if fname == "clamp":
        xr, lor, hir = args
        return (min(max(xr[0], lor[0]), hir[0]), min(max(xr[1], lor[1]), hir[1]))
    if fname == "sqrt":
        return (math.sqrt(max(args[0][0], 0.0)), math.sqrt(max(args[0][1], 0.0)))
    if fname == "exp":
        return (_safe(math.exp, args[0][0]), _safe(math.exp, args[0][1]))
    if fname == "log":
        ln = (
            math.log(args[0][0]) if args[0][0] > 0 else -_INF,
            math.log(args[0][1]) if args[0][1] > 0 else -_INF,
        )
        if len(args) == 1:
            return ln
        base = args[1]
        if base[0] <= 0:
            return (-_INF, _INF)
        lnb = (math.log(base[0]), math.log(base[1]))
        return _idiv(ln, lnb)
    if fname == "round":
        x = args[0]
        nd = args[1] if len(args) > 1 else (0.0, 0.0)
        if nd[0] == nd[1] and float(nd[0]).is_integer():
            r = [v if math.isinf(v) else round(v, int(nd[0])) for v in x]
            return (r[0], r[1])
        return (x[0] - 0.5, x[1] + 0.5)
    return (-_INF, _INF)


def _idiv(a: Interval, b: Interval) -> Interval:
    if b[0] <= 0 <= b[1]:
        return (-_INF, _INF)
    recip = (1 / b[1], 1 / b[0])
    return _ispan(_imul(x, y) for x in a for y in recip)


def _interval(node: ast.AST, ranges: Callable[[str], Interval]) -> Interval:
    if isinstance(node, ast.Expression):
        return _interval(node.body, ranges)
    if isinstance(node, ast.Constant):
        return (_const(node), _const(node))
    if isinstance(node, ast.Name):
        return ranges(node.id)
    if isinstance(node, ast.UnaryOp):
        lo, hi = _interval(node.operand, ranges)
        return (-hi, -lo) if isinstance(node.op, ast.USub) else (lo, hi)
    if isinstance(node, ast.BinOp):
        a, b = _interval(node.left, ranges), _interval(node.right, ranges)
        if isinstance(node.op, ast.Add):
            return (_low(a[0] + b[0]), _high(a[1] + b[1]))
        if isinstance(node.op, ast.Sub):
            return (_low(a[0] - b[1]), _high(a[1] - b[0]))
        if isinstance(node.op, ast.Mult):
            return _ispan(_imul(x, y) for x in a for y in b)
        if isinstance(node.op, ast.Div):
            return _idiv(a, b)
        return _ipow(a, b)
    if isinstance(node, ast.Compare):
        return (0.0, 1.0)
    if isinstance(node, ast.IfExp):
        a, b = _interval(node.body, ranges), _interval(node.orelse, ranges)
        return (min(a[0], b[0]), max(a[1], b[1]))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _icall(node.func.id, [_interval(arg, ranges) for arg in node.args])
    return (-_INF, _INF)


def _tidy(x: float) -> float:
    """Round away float noise (0.33 + 0.27 + 0.40 = 1.0000000000000002) so ranges read cleanly."""
    return x if math.isinf(x) or math.isnan(x) else round(x, 12) + 0.0


# ---------------------------------------------------------------- the plan


class CalculationPlan:
    """The checked formulas of one framework, in an order where every metric follows its inputs."""

    def __init__(
        self,
        formulas: dict[str, str],
        trees: dict[str, ast.Expression],
        dependencies: dict[str, set[str]],
        order: list[str],
    ) -> None:
        self.formulas = formulas
        self.order = order
        self.dependencies = dependencies
        self.inputs: set[str] = {v for deps in dependencies.values() for v in deps} - set(formulas)
        self._trees = trees

    def __repr__(self) -> str:
        return f"CalculationPlan(order={self.order!r}, inputs={sorted(self.inputs)!r})"

    def evaluate(self, row: Mapping[str, Any]) -> dict[str, float | None]:
        """Every metric for one record; a metric whose inputs are missing or non-numeric, or whose
        arithmetic fails (division by zero, log of a negative, overflow), is None, and so are the
        metrics that use it. Booleans and numeric strings are not numbers here."""
        env: dict[str, float | None] = {name: _finite(row.get(name)) for name in self.inputs}
        for name in self.order:
            value: float | None = None
            if all(env.get(dep) is not None for dep in self.dependencies[name]):
                known = {k: v for k, v in env.items() if v is not None}
                try:
                    value = _finite(_evaluate(self._trees[name], known))
                except (ArithmeticError, ValueError, TypeError):
                    value = None
            env[name] = value
        return {name: env[name] for name in self.formulas}

    def duplicates(self) -> list[tuple[str, str]]:
        """Pairs of metrics whose formulas are the same after normalisation (operand order,
        parentheses and constant factors do not matter): almost always a copy-paste mistake."""
        seen: dict[str, str] = {}
        pairs: list[tuple[str, str]] = []
        for name in self.formulas:
            key = repr(_canon(self._trees[name]))
            if key in seen:
                pairs.append((seen[key], name))
            else:
                seen[key] = name
        return pairs

    def value_range(self, name: str, input_ranges: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
        """The interval a metric can take when each input stays in its range (inputs not given are
        unbounded). Interval arithmetic is conservative: the true range lies inside the result."""
        if name not in self.formulas:
            raise FormulaError(f"unknown metric '{name}'", field="calculation_spec")
        memo: dict[str, Interval] = {}

        def ranges(var: str) -> Interval:
            if var in memo:
                return memo[var]
            if var in self._trees:
                memo[var] = _interval(self._trees[var], ranges)
            else:
                lo, hi = input_ranges.get(var, (-_INF, _INF))
                memo[var] = (float(lo), float(hi))
            return memo[var]

        lo, hi = ranges(name)
        return (_tidy(lo), _tidy(hi))


def _find_cycle(deps: Mapping[str, set[str]], metrics: list[str]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(deps[node] & set(deps)):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for m in metrics:
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _topological(deps: Mapping[str, set[str]], metrics: list[str]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for dep in sorted(deps[node] & set(deps)):
            visit(dep)
        order.append(node)

    for m in metrics:
        visit(m)
    return order


def build_plan(
    calculation_spec: Mapping[str, str],
    *,
    known_inputs: set[str] | None,
    file: str | Path | None = None,
) -> CalculationPlan:
    """Check every formula and order them.

    ``known_inputs`` is the set of names a formula may read besides other metrics (the numeric
    fields of a flat output contract); pass None when they cannot be known (nested contracts), and
    unknown variables are then left for evaluation to report as None.
    """
    if not isinstance(calculation_spec, Mapping):
        raise FormulaError(
            "calculation_spec must be an object of name -> formula", file=file, field="calculation_spec"
        )
    formulas: dict[str, str] = {}
    trees: dict[str, ast.Expression] = {}
    deps: dict[str, set[str]] = {}
    for name, text in calculation_spec.items():
        if not isinstance(name, str) or not _METRIC_NAME.match(name) or name.startswith("__"):
            raise _error(
                "metric names must be identifiers (letters, digits, '_', not starting with a digit or '__')",
                name=str(name),
                file=file,
            )
        if keyword.iskeyword(name) or name in FUNCTIONS:
            raise _error(f"'{name}' is reserved and cannot name a metric", name=name, file=file)
        trees[name] = parse_formula(text, name=name, file=file)
        formulas[name] = " ".join(text.split())
        deps[name] = formula_variables(trees[name])

    if known_inputs is not None:
        candidates = sorted(set(known_inputs) | set(formulas))
        for name, used in deps.items():
            for var in sorted(used - set(formulas) - set(known_inputs)):
                close = difflib.get_close_matches(var, [c for c in candidates if c != name], n=3, cutoff=0.6)
                suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise _error(
                    f"unknown variable '{var}': not a numeric output-contract field nor another metric{suggestion}",
                    name=name,
                    file=file,
                    hint=None if close else f"known names: {', '.join(candidates) or '(none)'}",
                )

    metrics = list(formulas)
    cycle = _find_cycle(deps, metrics)
    if cycle:
        raise _error(f"formulas form a cycle: {' -> '.join(cycle)}", name=cycle[0], file=file)
    return CalculationPlan(formulas, trees, deps, _topological(deps, metrics))
