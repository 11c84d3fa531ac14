"""Tool arguments checked against the tool's input schema before they are sent (pure):
`mcpz.local.args.check_arguments`, used by `mcpz call` locally and through the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from mcpz.errors import UsageError
from mcpz.local.args import check_arguments

FORECAST: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"enum": ["c", "f"]}},
    "required": ["city"],
}


def test_arguments_that_fit_the_schema_pass() -> None:
    check_arguments({"city": "Oslo"}, FORECAST)
    check_arguments({"city": "Oslo", "days": 3, "units": "c"}, FORECAST)
    check_arguments({"anything": 1}, None)  # type: ignore[arg-type]  # no schema: nothing to check
    check_arguments({"free": [1, 2]}, {"type": "object"})  # no properties listed: anything goes


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, 'missing argument "city" (string)'),
        ({"days": 2}, 'missing argument "city" (string)'),
        ({"city": "Oslo", "dayz": 2}, 'unknown argument "dayz"'),
        ({"city": "Oslo", "days": "two"}, 'argument "days" must be integer, not string "two"'),
        ({"city": 42}, 'argument "city" must be string, not integer 42'),
        ({"city": "Oslo", "units": "k"}, 'argument "units" must be one of "c", "f", not "k"'),
    ],
)
def test_a_missing_unknown_or_mistyped_argument_is_a_usage_error(
    arguments: dict[str, Any], problem: str
) -> None:
    with pytest.raises(UsageError) as caught:
        check_arguments(arguments, FORECAST)
    assert caught.value.message == problem
    assert caught.value.exit_code == 2
    assert "city: string" in (caught.value.hint or "")


def test_a_close_unknown_name_is_suggested() -> None:
    with pytest.raises(UsageError) as caught:
        check_arguments({"city": "Oslo", "dayz": 2}, FORECAST)
    assert (caught.value.hint or "").startswith('did you mean "days"?')


def test_other_properties_pass_when_the_schema_allows_them() -> None:
    check_arguments({"city": "Oslo", "extra": 1}, {**FORECAST, "additionalProperties": True})
    check_arguments({"city": "Oslo", "note": "x"}, {**FORECAST, "additionalProperties": {"type": "string"}})


def test_a_number_property_takes_an_integer_and_nullable_takes_null() -> None:
    schema = {
        "type": "object",
        "properties": {"lat": {"type": "number"}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    }
    check_arguments({"lat": 59, "note": None}, schema)
    with pytest.raises(UsageError, match='argument "lat" must be number, not boolean'):
        check_arguments({"lat": True}, schema)
