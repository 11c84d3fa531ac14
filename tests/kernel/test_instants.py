"""`mcpz.instants.parse_instant`: every text is an instant in UTC or a one-line UsageError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpz.errors import UsageError
from mcpz.instants import parse_instant

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_the_forms() -> None:
    assert parse_instant("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_instant(" 2W ", NOW) == NOW - timedelta(weeks=2)
    assert parse_instant("0", NOW) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_instant("2025-01-31T12:00+02:00", NOW) == datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
    assert parse_instant("2025-01-31", NOW) == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_instant("0001-01-01T00:00:00Z", NOW) == datetime(1, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["99999999999999w", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-01:00", "1e300", "nan"]
)
def test_out_of_range(text: str) -> None:
    with pytest.raises(UsageError, match="is out of range"):
        parse_instant(text, NOW)


@given(st.text(max_size=80) | st.from_regex(r"\d{1,70}[smhdw]", fullmatch=True))
def test_any_text_is_an_instant_or_a_usage_error(text: str) -> None:
    for naive in (UTC, None):
        try:
            moment = parse_instant(text, NOW, naive=naive)
        except UsageError as e:
            assert "\n" not in e.message
        else:
            assert moment.tzinfo is UTC
