from __future__ import annotations

import pytest
from packaging.version import Version

from mcpz.errors import UsageError
from mcpz.specifiers import admits, parse_specifier, specifier_problem, translate


@pytest.mark.parametrize(
    ("sugar", "pep440"),
    [
        ("^1.2", ">=1.2,<2"),
        ("^1.2.3", ">=1.2.3,<2"),
        ("^0.2.3", ">=0.2.3,<0.3"),
        ("^0.0.3", ">=0.0.3,<0.0.4"),
        ("~1.2.3", ">=1.2.3,<1.3"),
        ("~1.2", ">=1.2,<1.3"),
        ("~1", ">=1,<2"),
        ("~=1.4", "~=1.4"),
        (">=1,<2", ">=1,<2"),
        ("*", ""),
    ],
)
def test_sugar_translates_to_pep440(sugar: str, pep440: str) -> None:
    assert translate(sugar) == pep440


@pytest.mark.parametrize("bad", ["1.x", "^1.x", "~banana", ">>1", "^1.0b1"])
def test_bad_specifiers_are_refused(bad: str) -> None:
    assert specifier_problem(bad) is not None
    with pytest.raises(UsageError):
        parse_specifier(bad)


def test_prereleases_only_when_the_specifier_names_one() -> None:
    assert not admits(parse_specifier(">=1.0"), Version("2.0.0b1"))
    assert admits(parse_specifier(">=2.0.0b1"), Version("2.0.0b1"))
    assert admits(parse_specifier("^1.2"), Version("1.9"))
    assert not admits(parse_specifier("^1.2"), Version("2.0"))
