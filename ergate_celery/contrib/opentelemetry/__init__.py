"""OpenTelemetry for jobs: `ErgateInstrumentor().instrument()` makes one trace per job and
records the job and step metrics (`pip install ergate-celery[otel]`).

Lives here: the instrumentor (`instrumentor.py`), the observer that makes the spans
(`tracing.py`) and the metrics (`metrics.py`). This folder is the only one that imports
OpenTelemetry: the package reaches it only through the hook of `worker/observing.py`, which
stays unset, and costs one attribute read, until `instrument()` sets it.

May import: anything of the package (as every folder of `contrib/`), Celery and OpenTelemetry.
"""

from ergate_celery.contrib.opentelemetry.instrumentor import ErgateInstrumentor

__all__ = ["ErgateInstrumentor"]
