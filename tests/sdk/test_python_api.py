"""The Python SDK's promise (docs/python-sdk.md, "Stability"): a public name (`mcpz.__all__`, their
public members, and the parameters of their functions and methods) disappears only after a
deprecation released earlier, and docs/python-api.md is generated from the current docstrings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.version import Version

import mcpz

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_api_reference
    finally:
        sys.path.pop(0)
    yield gen_api_reference


def removal_problems(listed: dict[str, str], current: set[str], version: str) -> list[str]:
    """What breaks the promise: a listed name that is gone although it was not deprecated in an
    earlier minor release (an earlier major one from 1.0 on)."""
    now = Version(version)
    problems = []
    for name, note in sorted(listed.items()):
        if name in current:
            continue
        words = note.split()
        if len(words) < 2 or words[0] != "deprecated":
            problems.append(f"{name} disappeared without a deprecation")
            continue
        since = Version(words[1])
        earlier = since.major < now.major if now.major >= 1 else since.release[:2] < now.release[:2]
        if not earlier:
            problems.append(f"{name} was deprecated in {since}: it may go only in a later release")
    return problems


def test_no_public_name_disappears_without_a_deprecation(gen: ModuleType) -> None:
    listed = gen.listed_names(gen.NAMES.read_text(encoding="utf-8"))
    current = set(gen.public_names())
    assert removal_problems(listed, current, mcpz.__version__) == []
    new = sorted(current - set(listed))
    assert new == [], f"new public names: run `python docs/gen_api_reference.py --add-new` ({new[:5]})"


def test_the_rule_itself() -> None:
    current = {"mcpz.Client", "mcpz.Client.call"}
    assert removal_problems({"mcpz.Client.call": ""}, current, "0.2.0") == []
    assert removal_problems({"mcpz.Client.gone": ""}, current, "0.2.0") == [
        "mcpz.Client.gone disappeared without a deprecation"
    ]
    deprecated = {"mcpz.Client.old": "deprecated 0.2.0 use call"}
    assert removal_problems(deprecated, current, "0.2.5") == [
        "mcpz.Client.old was deprecated in 0.2.0: it may go only in a later release"
    ]
    assert removal_problems(deprecated, current, "0.3.0") == []
    assert removal_problems({"mcpz.x": "deprecated 1.4.0"}, current, "1.9.0") != []
    assert removal_problems({"mcpz.x": "deprecated 1.4.0"}, current, "2.0.0") == []


def test_the_api_reference_is_generated_from_the_current_code(gen: ModuleType) -> None:
    current = gen.REFERENCE.read_text(encoding="utf-8")
    assert current == gen.render(), "run: python docs/gen_api_reference.py"
