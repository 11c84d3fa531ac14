"""No float anywhere near money: the code that computes, stores and shows amounts is read (its
syntax tree) for `float(...)`, float literals, true division and `float` annotations in any
statement that names an amount.

Floats stay allowed for time (seconds of a TTL, `us / 1e6` into a datetime): a statement is
"near money" when one of its names has a money word as a part (`price`, `per_call_price`,
`fee_bps`, `amount` ...). `float(` is refused everywhere in these files.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MONEY_CODE = [
    *sorted((ROOT / "registry_server" / "billing").glob("*.py")),
    ROOT / "mcpz" / "money.py",
    ROOT / "mcpz" / "client" / "billing.py",
    ROOT / "mcpz" / "cli" / "commands" / "billing.py",
]
MONEY_WORDS = frozenset(
    "price amount amounts fee fees balance balances earning earnings credit charge charged total cost "
    "overage units bps payout refund spend spent earned captured".split()
)


def _units(tree: ast.AST) -> Iterator[ast.AST]:
    """The pieces a finding is judged in: simple statements whole, compound statements by their
    header (a test, an iterable, a function's arguments one by one), never a whole body."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            yield from (
                *args.posonlyargs,
                *args.args,
                *args.kwonlyargs,
                *filter(None, (args.vararg, args.kwarg)),
            )
            yield from (d for d in (*args.defaults, *args.kw_defaults) if d is not None)
            if node.returns is not None:
                yield ast.Tuple(elts=[ast.Name(id=node.name), node.returns])
        elif isinstance(node, ast.If | ast.While):
            yield node.test
        elif isinstance(node, ast.For | ast.AsyncFor):
            yield ast.Tuple(elts=[node.target, node.iter])
        elif isinstance(node, ast.With | ast.AsyncWith):
            yield from node.items
        elif isinstance(node, ast.stmt) and not hasattr(node, "body"):
            yield node


def _names(unit: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(unit):
        name = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else node.arg
            if isinstance(node, ast.arg | ast.keyword) and node.arg
            else None
        )
        if name:
            found.update(part for part in name.lower().split("_") if part)
    return found


def _floaty(unit: ast.AST) -> str | None:
    for node in ast.walk(unit):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            return f"the float literal {node.value!r}"
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            return "true division (/)"
        if isinstance(node, ast.Name) and node.id == "float":
            return "float"
    return None


def findings(source: str, filename: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
            out.append(f"{filename}:{node.lineno}: float(...)")
    for unit in _units(tree):
        what = _floaty(unit)
        money = _names(unit) & MONEY_WORDS
        if what and money:
            line = getattr(unit, "lineno", None) or getattr(getattr(unit, "elts", [None])[-1], "lineno", "?")
            out.append(f"{filename}:{line}: {what} beside {', '.join(sorted(money))}")
    return sorted(set(out))


def test_no_float_anywhere_near_money() -> None:
    problems = []
    for path in MONEY_CODE:
        assert path.exists(), path
        problems += findings(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "floats near money (keep amounts integers of base units):\n" + "\n".join(problems)


def test_the_check_sees_floats_beside_amounts_and_lets_time_be() -> None:
    caught = [
        "price = amount / 2",
        "fee = float(text)",
        "total = units * 0.2",
        "def quote(per_call_price: float) -> int: ...",
        "def show(x: int) -> None:\n    for part in (amount / 10 for amount in parts): pass",
        "if balance > 0.5:\n    pass",
        "x = float('1')",  # refused wherever it is
    ]
    for snippet in caught:
        assert findings(snippet), snippet
    allowed = [
        "valid = min(valid, now + (prices.pending[0][0] - service.now_us()) / 1e6)",
        "CACHE_TTL = 5.0",
        "price = amount * fee_bps // 10_000",
        "def month_of(us: int) -> str:\n    return datetime.fromtimestamp(us / 1e6, UTC).strftime('%Y-%m')",
    ]
    for snippet in allowed:
        assert not findings(snippet), snippet
