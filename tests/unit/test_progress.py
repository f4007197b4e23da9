"""A step's progress reporter alone: throttled, forward only, bounded to the step's share."""

import pytest

from ergate_celery import ProgressReporter


def test_progress_reporter_throttles_and_bounds() -> None:
    writes: list[float] = []
    reporter = ProgressReporter(20.0, 40.0, writes.append, interval=3600)
    for i in range(1, 11):
        reporter.report(i / 10)
    assert writes == [22.0]  # the first report is written; the rest fall in the same interval
    assert reporter.percent == 40.0
    reporter.report(0.5)  # backwards: ignored
    reporter.report(7)  # clamped to the end of the step's share
    assert reporter.percent == 40.0
    with pytest.raises(TypeError, match="fraction"):
        reporter.report("half")  # type: ignore[arg-type]
    unthrottled: list[float] = []
    reporter = ProgressReporter(0.0, 10.0, unthrottled.append, interval=0)
    for i in range(1, 5):
        reporter.report(i / 4)
    assert unthrottled == [2.5, 5.0, 7.5, 10.0]
