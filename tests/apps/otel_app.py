"""A traced workflow, and a Celery app for `celery -A tests.apps.otel_app worker|beat`
subprocesses of the OpenTelemetry tests (its configuration comes in ERGATE_TEST_CONF).

- ERGATE_OTEL_OUT: a folder; the process instruments itself with `ErgateInstrumentor` and
  writes its spans and metrics there (`tests/telemetry.py`).
- ERGATE_OTEL_CELERY: also instrument Celery with opentelemetry-instrumentation-celery.
- ERGATE_OTEL_SHIP_OK: a file; `order.ship` fails until it exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from ergate_celery import (
    ChildResult,
    CurrentRun,
    FanOut,
    FanOutPath,
    Sleep,
    StepRun,
    WaitPath,
    Workflow,
)

from . import app_from_env

order = Workflow(unique_name="traced_order")


@order.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0.2)
def charge(amount: int, run: Annotated[StepRun, CurrentRun()]) -> int:
    if run.attempt == 1:
        raise ConnectionError("the card service is down")
    return amount


@order.step(paths=[WaitPath()])
def nap(amount: int) -> int:
    raise Sleep(seconds=float(os.environ.get("ERGATE_OTEL_NAP", "3")), retval=amount)


@order.step
def ship(amount: int) -> int:
    if not Path(os.environ.get("ERGATE_OTEL_SHIP_OK", "/nonexistent")).exists():
        raise RuntimeError("no courier today")
    return amount + 1


pair = Workflow(unique_name="traced_pair")


@pair.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0.2)
def pay(amount: int, run: Annotated[StepRun, CurrentRun()]) -> int:
    if run.attempt == 1:
        raise ConnectionError("the card service is down")
    return amount


@pair.step
def confirm(amount: int) -> int:
    return amount


split = Workflow(unique_name="traced_split")
piece = Workflow(unique_name="traced_piece")


@piece.step
def cut(size: int) -> int:
    return size * 2


@split.step(paths=[FanOutPath("gather")])
def spread(sizes: list[int]) -> None:
    raise FanOut("traced_piece", inputs=sizes, then=gather)


@split.step
def gather(pieces: list[ChildResult]) -> int:
    return sum(result.value for result in pieces)


WORKFLOWS = (order, pair, split, piece)

app, ergate = app_from_env("otel_app", *WORKFLOWS)

if os.environ.get("ERGATE_OTEL_OUT"):
    from ergate_celery.contrib.opentelemetry import ErgateInstrumentor

    from ..telemetry import file_providers

    tracer_provider, meter_provider = file_providers(Path(os.environ["ERGATE_OTEL_OUT"]))
    ErgateInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    if os.environ.get("ERGATE_OTEL_CELERY"):
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=tracer_provider)
