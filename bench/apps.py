"""The one Celery app both sides of the benchmark run on, configured from the environment.

The harness process and its worker subprocesses (`celery -A bench.apps worker`) build the app
with the same function, so bare Celery tasks and ergate_celery steps share the broker, the
result backend, the queue and every Celery setting. Environment variables:

- `ERGATE_BENCH_SETUP`: one of `SETUPS` (`redis` by default):
  `redis` (broker and backend; worker `-c 2`), `redis_c1` (the same with `-c 1
  --prefetch-multiplier 1` and late acknowledgement on both sides), `rabbitmq_postgres`
  (RabbitMQ broker, `db+postgresql` backend), `django_db` (RabbitMQ broker, the `django-db`
  backend of django-celery-results on PostgreSQL, see bench/django_settings.py) or
  `embedded` (the file broker and SQLite of `make demo`).
- `ERGATE_BENCH_FOLDER`: the embedded setup's folder (broker files and results.sqlite).
- `ERGATE_BENCH_QUEUE`: the queue every task goes to (default `ergate-bench`).
- `ERGATE_BENCH_MANY_WORKFLOWS=1`: also register 50 extra workflows (memory measure).
- `ERGATE_BENCH_BARE_ONLY=1`: bare Celery tasks only; ergate_celery is not even imported.
- `ERGATE_BENCH_CAPTURE`: a folder; every message published in a worker is measured there.
- `ERGATE_BENCH_REDIS_URL`, `ERGATE_BENCH_POSTGRES_SCHEMA`, `ERGATE_BENCH_RABBITMQ_URL`:
  where the setups write (Redis db 12, schema `ergate_bench` and vhost `/` by default), so
  runs can go side by side.
- `ERGATE_BENCH_DB_REUSE_MAX`: django_db only, Celery's `CELERY_DB_REUSE_MAX` (the worker
  keeps its Django connection for that many tasks instead of closing it around each), for
  both sides alike; unset by default, as in a Django project that does not set it.
- `ERGATE_BENCH_PG_PROFILE`, `ERGATE_BENCH_PG_TRACE`: record this process's PostgreSQL
  connections, and trace them (bench/pgtrace.py, for bench/profile_pg.py).
- `ERGATE_BENCH_INDEX_NAME`: the app's `ergate_index_name` (its own job indexes on a shared
  Redis db), so apps of one run can hold different stores side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import before_task_publish

from . import pgtrace

if TYPE_CHECKING:
    from ergate_celery import ErgateCelery

# bench/profile_pg.py traces a worker's PostgreSQL connections through the environment.
pgtrace.install_in_worker()

#: Redis db 12 unless ERGATE_BENCH_REDIS_URL says otherwise (the smoke tests give their run's).
REDIS_URL = os.environ.get("ERGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
RABBITMQ_URL = os.environ.get("ERGATE_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The schema the PostgreSQL setups write to; one per harness run that runs at the same time.
POSTGRES_SCHEMA = os.environ.get("ERGATE_BENCH_POSTGRES_SCHEMA", "ergate_bench")
DB_REUSE_MAX = os.environ.get("ERGATE_BENCH_DB_REUSE_MAX", "")
SETUPS = ("redis", "redis_c1", "rabbitmq_postgres", "django_db", "embedded")
#: Setups whose result backend is PostgreSQL.
POSTGRES_SETUPS = frozenset({"rabbitmq_postgres", "django_db"})
#: The options of a setup's `celery worker` beyond the pool (prefork) and the queue.
WORKER_OPTIONS: dict[str, tuple[str, ...]] = {
    "redis_c1": ("-c", "1", "--prefetch-multiplier", "1"),
}
DEFAULT_WORKER_OPTIONS = ("-c", "2")
#: Setups whose bare tasks acknowledge late, like ergate_celery's steps (`ergate_acks_late`
#: is True by default); elsewhere bare tasks keep Celery's default, early acknowledgement.
BARE_ACKS_LATE = frozenset({"redis_c1"})
#: The Django settings of the django_db setup.
DJANGO_SETTINGS = "bench.django_settings"

#: Workflow names; each has a bare Celery counterpart of the same length.
LONG_WORKFLOW, LONG_STEPS = "bench_chain20", 20
SHORT_WORKFLOW, SHORT_STEPS = "bench_chain5", 5
LENGTHY_WORKFLOW, LENGTHY_STEPS = "bench_chain100", 100
SIZED_WORKFLOW, SIZED_STEPS = "bench_sized5", 5
EXTRA_WORKFLOWS, EXTRA_STEPS = 50, 5
#: The flow-control measure's workflows: 5 no-op steps under a concurrency limit no job
#: reaches (the cost of the slot), and one no-op step, one job at a time (the hand-over).
KEYED_WORKFLOW = "bench_keyed5"
SERIAL_WORKFLOW = "bench_serial1"

#: How often `wait_for_job` and a bare `AsyncResult.get` on a polling backend read the result.
WAIT_POLL_INTERVAL = 0.002


@dataclass(frozen=True)
class BenchConfig:
    """What the environment asks for."""

    setup: str = "redis"
    folder: Path | None = None
    queue: str = "ergate-bench"
    many_workflows: bool = False
    bare_only: bool = False
    capture: Path | None = None
    index_name: str = ""
    #: The PostgreSQL schema, when not POSTGRES_SCHEMA.
    postgres_schema: str = ""
    #: `ergate_acks_late` of the steps, when not the default.
    ergate_acks_late: bool | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> BenchConfig:
        """Read the `ERGATE_BENCH_*` variables (of `os.environ` by default)."""
        env = dict(os.environ if environ is None else environ)
        setup = env.get("ERGATE_BENCH_SETUP", "redis")
        if setup not in SETUPS:
            raise ValueError(f"ERGATE_BENCH_SETUP={setup!r}; choose one of {', '.join(SETUPS)}")
        folder = env.get("ERGATE_BENCH_FOLDER")
        capture = env.get("ERGATE_BENCH_CAPTURE")
        return cls(
            setup=setup,
            folder=Path(folder) if folder else None,
            queue=env.get("ERGATE_BENCH_QUEUE", "ergate-bench"),
            many_workflows=env.get("ERGATE_BENCH_MANY_WORKFLOWS", "") not in ("", "0"),
            bare_only=env.get("ERGATE_BENCH_BARE_ONLY", "") not in ("", "0"),
            capture=Path(capture) if capture else None,
            index_name=env.get("ERGATE_BENCH_INDEX_NAME", ""),
            postgres_schema=env.get("ERGATE_BENCH_POSTGRES_SCHEMA", ""),
            ergate_acks_late=_flag(env.get("ERGATE_BENCH_ACKS_LATE", "")),
        )

    def env(self) -> dict[str, str]:
        """The variables that make a subprocess build this same configuration."""
        env = {
            "ERGATE_BENCH_SETUP": self.setup,
            "ERGATE_BENCH_QUEUE": self.queue,
            "ERGATE_BENCH_MANY_WORKFLOWS": "1" if self.many_workflows else "",
            "ERGATE_BENCH_BARE_ONLY": "1" if self.bare_only else "",
        }
        if self.setup == "django_db":
            env["DJANGO_SETTINGS_MODULE"] = DJANGO_SETTINGS
        if self.folder is not None:
            env["ERGATE_BENCH_FOLDER"] = str(self.folder)
        if self.capture is not None:
            env["ERGATE_BENCH_CAPTURE"] = str(self.capture)
        if self.index_name:
            env["ERGATE_BENCH_INDEX_NAME"] = self.index_name
        if self.postgres_schema:
            env["ERGATE_BENCH_POSTGRES_SCHEMA"] = self.postgres_schema
        if self.ergate_acks_late is not None:
            env["ERGATE_BENCH_ACKS_LATE"] = "1" if self.ergate_acks_late else "0"
        return env


def _flag(value: str) -> bool | None:
    """An on/off variable: None when unset."""
    return None if value == "" else value not in ("0", "false", "no")


@dataclass
class Bench:
    """The app with its bare tasks and, unless bare-only, its ErgateCelery."""

    config: BenchConfig
    app: Celery
    noop: Task[Any, Any]
    sized: Task[Any, Any]
    ergate: ErgateCelery | None


def celery_conf(config: BenchConfig) -> dict[str, Any]:
    """The Celery settings of a setup; everything on loopback."""
    conf: dict[str, Any] = {
        "task_default_queue": config.queue,
        "broker_connection_retry_on_startup": False,
        "worker_hijack_root_logger": False,
        "ergate_wait_poll_interval": WAIT_POLL_INTERVAL,
    }
    if config.index_name:
        conf["ergate_index_name"] = config.index_name
    if config.ergate_acks_late is not None:
        conf["ergate_acks_late"] = config.ergate_acks_late
    if config.setup in ("redis", "redis_c1"):
        return {**conf, "broker_url": REDIS_URL, "result_backend": REDIS_URL}
    if config.setup == "django_db":
        # The result backend a Django project uses with ergate_celery (the example project's
        # too): both sides write their results to django-celery-results' TaskResult table.
        conf = {**conf, "broker_url": RABBITMQ_URL, "result_backend": "django-db"}
        if DB_REUSE_MAX:  # read by Celery's Django fixup, in the worker, for both sides
            conf["CELERY_DB_REUSE_MAX"] = int(DB_REUSE_MAX)
        return conf
    if config.setup == "rabbitmq_postgres":
        schema = config.postgres_schema or POSTGRES_SCHEMA
        return {
            **conf,
            "broker_url": RABBITMQ_URL,
            "result_backend": f"db+{POSTGRES_URL}",
            "database_table_schemas": {"task": schema, "group": schema},
        }
    if config.folder is None:
        raise ValueError("The embedded setup needs ERGATE_BENCH_FOLDER")
    from ergate_celery.embedded.broker import embedded_broker_settings

    return {
        **conf,
        **embedded_broker_settings(config.folder / "broker"),
        "result_backend": f"db+sqlite:///{config.folder / 'results.sqlite'}",
    }


def noop(x: Any = None) -> Any:
    """A step or task that does nothing: its input is its return value."""
    return x


def sized(x: Any) -> Any:
    """Return a value of `x["size"]` characters of padding (and the size, for the next hop)."""
    size = int(x["size"])
    return {"size": size, "pad": "x" * size}


def _named(function: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    # A step's name is its function's name, so each step gets a function of its own.
    def step(x: Any) -> Any:
        return function(x)

    step.__name__ = step.__qualname__ = name
    return step


def _workflow(
    name: str, steps: int, function: Callable[[Any], Any], concurrency: Any = None
) -> Any:
    from ergate_celery import Workflow

    workflow = Workflow(unique_name=name, concurrency=concurrency)
    for index in range(steps):
        workflow.step(_named(function, f"step_{index:02d}"))
    return workflow


def build(config: BenchConfig) -> Bench:
    """A new Celery app (set as current) for `config`, with tasks and workflows registered."""
    if config.setup == "django_db":
        setup_django()
    app = Celery("ergate_bench", set_as_current=True)
    app.conf.update(celery_conf(config))
    acks_late = config.setup in BARE_ACKS_LATE
    noop_task = app.task(name="bench.noop", shared=False, acks_late=acks_late)(noop)
    sized_task = app.task(name="bench.sized", shared=False, acks_late=acks_late)(sized)
    ergate = None
    if not config.bare_only:
        from ergate_celery import ErgateCelery

        ergate = ErgateCelery(app)
        ergate.register_workflow(_workflow(LONG_WORKFLOW, LONG_STEPS, noop))
        ergate.register_workflow(_workflow(SHORT_WORKFLOW, SHORT_STEPS, noop))
        ergate.register_workflow(_workflow(LENGTHY_WORKFLOW, LENGTHY_STEPS, noop))
        ergate.register_workflow(_workflow(SIZED_WORKFLOW, SIZED_STEPS, sized))
        from ergate_celery import Concurrency

        keyed = Concurrency(1_000_000, key=lambda job: "bench")
        ergate.register_workflow(_workflow(KEYED_WORKFLOW, SHORT_STEPS, noop, keyed))
        ergate.register_workflow(_workflow(SERIAL_WORKFLOW, 1, noop, Concurrency(1)))
        if config.many_workflows:
            for number in range(EXTRA_WORKFLOWS):
                ergate.register_workflow(_workflow(f"bench_extra_{number:02d}", EXTRA_STEPS, noop))
    if config.capture is not None:
        _capture_into(config.capture)
    return Bench(config, app, noop_task, sized_task, ergate)


def setup_django() -> None:
    """Configure Django from bench/django_settings.py, once per process. Worker subprocesses
    get `DJANGO_SETTINGS_MODULE` in their environment, so Celery's Django fixup runs in them
    as it does in a Django project's workers."""
    import django
    from django.conf import settings

    if settings.configured:
        if getattr(settings, "SETTINGS_MODULE", None) != DJANGO_SETTINGS:
            raise RuntimeError("Django is already configured with other settings")
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    django.setup()


def _capture_into(folder: Path) -> None:
    """Record the JSON size of every message this process publishes, one file per process."""
    from kombu.serialization import dumps

    def record(sender: Any = None, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        _, _, data = dumps(body, serializer="json")
        _, _, header_data = dumps(dict(headers or {}), serializer="json")
        line = {
            "task": str(sender),
            "body_bytes": len(data.encode() if isinstance(data, str) else data),
            "headers_bytes": len(
                header_data.encode() if isinstance(header_data, str) else header_data
            ),
        }
        with (folder / f"capture-{os.getpid()}.jsonl").open("a") as file:
            file.write(json.dumps(line) + "\n")

    folder.mkdir(parents=True, exist_ok=True)
    before_task_publish.connect(record, weak=False)


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A bench.apps` reads `app`; it is built on first use, so importing this module
    # to call `build()` creates no app of its own.
    global _app
    if name == "app":
        if _app is None:
            _app = build(BenchConfig.from_env()).app
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
