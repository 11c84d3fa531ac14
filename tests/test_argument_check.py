"""Tool arguments checked against the tool's input schema before they are sent (pure):
`mcpz.local_args.check_arguments`."""

from __future__ import annotations

from typing import Any

import pytest

from mcpz.errors import UsageError
from mcpz.local_args import check_arguments

FORECAST: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"enum": ["c", "f"]}},
    "required": ["city"],
}


def test_arguments_that_fit_the_schema_pass() -> None:
    check_arguments(FORECAST, {"city": "Oslo"})
    check_arguments(FORECAST, {"city": "Oslo", "days": 3, "units": "c"})
    check_arguments(FORECAST, {"city": "Oslo", "units": "k"})  # a string: the agent judges the value
    check_arguments(None, {"anything": 1})  # no schema: nothing to check
    check_arguments({"type": "object"}, {"free": [1, 2]})  # no properties listed: anything goes


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "forecast needs the argument city"),
        ({"days": 2}, "forecast needs the argument city"),
        ({"city": "Oslo", "dayz": 2}, 'forecast has no argument "dayz"; did you mean "days"?'),
        ({"city": "Oslo", "days": "two"}, 'argument days of forecast must be integer, not string ("two")'),
        ({"city": 42}, "argument city of forecast must be string, not integer (42)"),
    ],
)
def test_a_missing_unknown_or_mistyped_argument_is_a_usage_error(
    arguments: dict[str, Any], problem: str
) -> None:
    with pytest.raises(UsageError) as caught:
        check_arguments(FORECAST, arguments, tool="forecast", list_command="mcpz tools acme/weather")
    assert caught.value.message == problem
    assert caught.value.hint == (
        "forecast takes (city: string, days?: integer, units?: string); see mcpz tools acme/weather"
    )
    assert caught.value.exit_code == 2


def test_other_properties_pass_when_the_schema_allows_them() -> None:
    open_schema = {**FORECAST, "additionalProperties": True}
    check_arguments(open_schema, {"city": "Oslo", "extra": 1})
    typed_extra = {**FORECAST, "additionalProperties": {"type": "string"}}
    check_arguments(typed_extra, {"city": "Oslo", "note": "x"})


def test_a_number_property_takes_an_integer_and_nullable_takes_null() -> None:
    schema = {
        "type": "object",
        "properties": {"lat": {"type": "number"}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    }
    check_arguments(schema, {"lat": 59, "note": None})
    with pytest.raises(UsageError, match="argument lat of the tool must be number, not boolean"):
        check_arguments(schema, {"lat": True})
