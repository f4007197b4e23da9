"""The one reading of moments a person types, shared by the CLI (`--since`, `--at`,
`--deadline`) and the console (`since`): durations, ISO dates and times, and a clear
`InvalidInputError` for anything else, out-of-range values included."""

from datetime import UTC, datetime, timedelta

import pytest

from ergate_celery import InvalidInputError
from ergate_celery.operations.listing import parse_moment

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago", "expected"),
    [
        ("30s", True, NOW - timedelta(seconds=30)),
        ("15m", True, NOW - timedelta(minutes=15)),
        ("1H", True, NOW - timedelta(hours=1)),
        ("2d", False, NOW + timedelta(days=2)),
        ("1w", False, NOW + timedelta(weeks=1)),
        ("2026-11-30", True, datetime(2026, 11, 30, tzinfo=UTC)),
        (" 2026-11-30T09:00 ", True, datetime(2026, 11, 30, 9, 0, tzinfo=UTC)),
        ("2026-11-30T09:00+01:00", False, datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
    ],
)
def test_durations_and_iso_moments(text: str, ago: bool, expected: datetime) -> None:
    moment = parse_moment("--since", text, NOW, ago=ago)
    assert moment == expected
    assert moment.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "'yesterday' is not a duration (30s, 15m, 1h, 2d, 1w) or an ISO 8601"),
        ("1 h", "is not a duration"),
        ("-1h", "is not a duration"),
        ("99999999999d", "is out of range: write a shorter duration (e.g. 30d or 52w)"),
        ("9" * 5000 + "d", "is not a duration"),
        ("0001-01-01T00:00+05:00", "or a date between 0001-01-02 and 9999-12-30"),
        ("9999-12-31T23:59-05:00", "is out of range"),
    ],
)
def test_what_does_not_parse_says_what_to_write(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^since ") as raised:
        parse_moment("since", text, NOW, ago=True)
    assert message in str(raised.value)
    assert len(str(raised.value)) < 300  # the value is quoted shortened, not whole
