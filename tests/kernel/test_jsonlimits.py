"""The depth-bounded JSON loader, and the one door for eth_account that keeps the recursion limit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz import jsonlimits
from mcpz.errors import UsageError
from mcpz.jsonlimits import MAX_DEPTH, JSONError

ROOT = Path(__file__).resolve().parents[2]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((true_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((true_depth(v) for v in value.values()), default=0)
    return 0


def test_documents_up_to_the_bound_load_and_deeper_ones_are_refused() -> None:
    assert jsonlimits.loads(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(JSONError, match=f"deeper than {MAX_DEPTH}"):
        jsonlimits.loads(nested(MAX_DEPTH + 1))
    with pytest.raises(JSONError):
        jsonlimits.loads(b"[" * 1_000_000)
    assert jsonlimits.loads('{"a": [1, {"b": []}]}', max_depth=4) == {"a": [1, {"b": []}]}
    with pytest.raises(JSONError):
        jsonlimits.loads('{"a": [1, {"b": []}]}', max_depth=3)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps(["[" * 1000, {"k{": '\\"[[[[', '"': "}}}}]]"}])
    assert jsonlimits.depth(text.encode()) == 2
    assert jsonlimits.loads(text, max_depth=2) == json.loads(text)


def test_invalid_json_is_a_json_error_which_is_a_usage_error_and_a_value_error() -> None:
    for bad in (b"", b"{", b"\xff\xfe\xfd", b"[1,]", b'"unterminated [[[[', "\ud800"):
        with pytest.raises(JSONError) as raised:
            jsonlimits.loads(bad)
        assert isinstance(raised.value, UsageError) and isinstance(raised.value, ValueError)


def test_a_raised_recursion_limit_cannot_crash_the_loader() -> None:
    """py_ecc's limit of 100,000 once let a deep body overflow the C stack; now it is refused first."""
    code = (
        "import sys; sys.setrecursionlimit(100000)\n"
        "from mcpz import jsonlimits\n"
        "try:\n    jsonlimits.loads(b'[' * 100000)\n"
        "except jsonlimits.JSONError as e:\n    print('refused:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:")


def test_importing_mcpz_the_registry_and_web3_leaves_the_recursion_limit_alone() -> None:
    code = (
        "import sys\nbefore = sys.getrecursionlimit()\n"
        "import mcpz.cli.app, mcpz.keys.wallet, mcpz.keys.signing, mcpz.client.signin\n"
        "import mcpz.node.agent, mcpz.node.connector\n"
        "import registry_server.app, registry_server.accounts.routes\n"
        "import eth_account, py_ecc\n"
        "try:\n    import web3\nexcept ImportError:\n    pass\n"
        "print(before, sys.getrecursionlimit())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.split()
    assert after == before, f"the recursion limit went from {before} to {after}"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_eth_account_and_py_ecc_are_imported_only_through_mcpz_ethkeys() -> None:
    door = ROOT / "mcpz" / "keys" / "ethkeys.py"
    for package in ("mcpz", "registry_server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == door:
                continue
            modules = _imports(path)
            top = {m.split(".")[0] for m in modules}
            where = path.relative_to(ROOT)
            assert not top & {"eth_account", "py_ecc"}, f"{where} imports eth_account: use mcpz.keys.ethkeys"
            if "web3" in top:
                assert "mcpz.keys.ethkeys" in modules, f"{where} imports web3 without mcpz.keys.ethkeys first"


# --- garbage never raises anything but JSONError ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | st.text(max_size=256).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_garbage_loads_or_is_a_json_error(data: bytes) -> None:
    try:
        jsonlimits.loads(data, max_depth=8)
    except JSONError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=12))
def test_valid_documents_load_exactly_when_within_the_depth(value: Any, bound: int) -> None:
    text = json.dumps(value)
    assert jsonlimits.depth(text.encode()) == true_depth(value)
    if true_depth(value) <= bound:
        assert jsonlimits.loads(text, max_depth=bound) == json.loads(text)
    else:
        with pytest.raises(JSONError):
            jsonlimits.loads(text, max_depth=bound)
