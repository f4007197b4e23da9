"""Run by tests/test_store_django_postgres.py in a process of its own (Django is configured
once per process, and the other Django tests' process is on SQLite):

    python -m tests.django_postgres_writes <schema> <use_tz: 0|1>

Configures Django on PostgreSQL in `schema`, migrates, and checks the django-db store's writes
there: one statement each, and the same rows as the ORM writes (which other databases use).
Exits non-zero (an AssertionError) when a check fails.
"""

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

HOUR = timedelta(hours=1)

#: What differs between two runs of the same writes (date_done is compared as a duration).
DROPPED = {"id", "task_id", "date_created", "date_done"}


def configure(schema: str, use_tz: bool) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django_celery_results",
            "ergate_celery.contrib.django",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "test",
                "USER": "postgres",
                "HOST": "127.0.0.1",
                "PORT": "5432",
                "OPTIONS": {"options": f"-c search_path={schema}"},
            }
        },
        USE_TZ=use_tz,
        TIME_ZONE="Europe/Paris",  # not UTC: naive times must still be stored as UTC
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    call_command("migrate", verbosity=0)


def rows(model: Any, drop: frozenset[str] = frozenset(), **where: Any) -> list[dict[str, Any]]:
    """The rows, without what differs between runs: date_done as hours after date_created
    (None: never), so that a time stored in the wrong zone shows."""
    found = []
    for row in model.objects.filter(**where).order_by("date_created").values():
        done, created = row["date_done"], row["date_created"]
        kept = {name: value for name, value in row.items() if name not in DROPPED | drop}
        kept["done_after"] = None if done.year == 9999 else round((done - created) / HOUR)
        found.append(kept)
    return found


def main(schema: str, use_tz: bool) -> None:
    configure(schema, use_tz)
    from celery import Celery
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django_celery_results.models import TaskResult as TaskRow

    from ergate_celery import DuplicateJobError, ErgateCelery, JobStatus
    from ergate_celery.contrib.django.models import JobIndexEntry, JobListing, JobTag
    from ergate_celery.stores.base import TaskResult

    from .workflows import echo_workflow

    app = Celery("django_postgres_writes", set_as_current=True)
    app.conf.update(broker_url="memory://", result_backend="django-db", result_extended=True)
    ergate = ErgateCelery(app)
    ergate.register_workflow(echo_workflow("pg_writes"))
    store: Any = ergate.store
    assert store.postgres is not None

    def bump(job: Any) -> Any:
        # RUNNING: the listing row's status moves too.
        return job.model_copy(update={"attempt": job.attempt + 1, "status": JobStatus.RUNNING})

    def run(prefix: str) -> list[Any]:
        """Submit, write a step's outcome with its summary, miss a compare-and-set; returns
        the rows each table holds of this run."""
        store.clock()  # the store's clock reads the server's time now and then, not per write
        with CaptureQueriesContext(connection) as queries:
            job = ergate.submit_job("pg_writes", initial_input_value=1, tags={"run": prefix})
        later = ergate.submit_job(
            "pg_writes",
            initial_input_value=2,
            requested_start_time=datetime.now(UTC) + timedelta(hours=1),
        )
        if store.postgres is not None:
            assert len(queries) == 1, queries.captured_queries
        # A fan-out's children: one statement for all, a taken id left alone.
        children = [
            job.model_copy(update={"id": f"{job.id}-{n}", "tags": {"run": prefix, "n": str(n)}})
            for n in range(2)
        ]
        with CaptureQueriesContext(connection) as queries:
            assert store.create_many([children[0], job, children[1]]) == [True, False, True]
        if store.postgres is not None:
            assert len(queries) == 1, queries.captured_queries
        assert store.create_many([children[1]]) == [False]
        assert store.get_many([str(child.id) for child in children]) == children
        # While its workflow is paused: parked in the same statement, stored as returned.
        store.set_paused("pg_writes", True)
        with CaptureQueriesContext(connection) as queries:
            parked = ergate.submit_job("pg_writes", initial_input_value=3, tags={"run": prefix})
        if store.postgres is not None:
            assert len(queries) == 1, queries.captured_queries
        store.set_paused("pg_writes", False)
        assert parked.parked
        assert store.get(str(parked.id)) == parked
        with CaptureQueriesContext(connection) as queries:
            assert store.update(str(parked.id), bump, assume=parked).after is not None
        if store.postgres is not None:
            assert len(queries) == 1, queries.captured_queries
        summary = TaskResult(f"{prefix}-step", lambda written: {"attempt": written.attempt})
        with CaptureQueriesContext(connection) as queries:
            written = store.update(str(job.id), bump, assume=job, result=summary).after
        if store.postgres is not None:
            assert len(queries) == 1, queries.captured_queries
            # The record compared against goes out as its digest, not a second time.
            assert store._content(job) not in queries.captured_queries[0]["sql"]
        # A stale assumption misses, reads the row in the same statement, and writes again.
        again = store.update(str(job.id), bump, assume=job).after
        assert again is not None
        assert written is not None
        assert again.attempt == written.attempt + 1
        # Inside the caller's transaction: a duplicate id leaves that transaction usable.
        with transaction.atomic():
            try:
                ergate.submit_job(job)
            except DuplicateJobError:
                pass
            else:
                raise AssertionError("a duplicate id was stored")
            assert TaskRow.objects.filter(task_id=str(job.id)).exists()
        ids = [str(job.id), str(later.id), str(parked.id), *(str(c.id) for c in children)]
        entries = JobIndexEntry.objects.filter(job_id__in=ids)
        due = JobIndexEntry.objects.get(job_id=str(later.id)).at
        # Aware under USE_TZ, naive UTC without (as `_to_db`).
        assert abs(due.replace(tzinfo=UTC) - (later.requested_start_time or due)) < HOUR / 60
        return [
            rows(TaskRow, frozenset({"result"}), task_id__in=ids),
            rows(TaskRow, task_id=f"{prefix}-step"),
            sorted((e.kind, e.job_id == str(later.id)) for e in entries),
            # Sorted: rows made in one statement need not be stored in the ORM's order.
            sorted(JobListing.objects.filter(job_id__in=ids).values_list("workflow", "status")),
            sorted(JobTag.objects.filter(job_id__in=ids).values_list("key", "value")),
        ]

    one_statement = run("pg")
    # A connection the server closed between two writes (between a step's claim and its
    # outcome): the write fails, and the next one, as the runtime's retry, goes through.
    job = ergate.submit_job("pg_writes", initial_input_value=3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    try:
        store.update(str(job.id), bump, assume=job)
    except Exception:  # whichever error the closed connection gives
        pass
    else:
        raise AssertionError("a write on a closed connection went through")
    assert store.update(str(job.id), bump, assume=job).after is not None
    told_of_the_end(ergate, store)
    store._postgres = None  # the ORM writes, as on other databases
    orm = run("orm")
    one_statement[-1] = [(key, value.replace("pg", "orm")) for key, value in one_statement[-1]]
    assert one_statement == orm, (one_statement, orm)


def told_of_the_end(ergate: Any, store: Any) -> None:
    """`wait_final` ends on the final write's notification: with no read again unless told,
    nothing else could end it (as tests/test_store_sql.py checks it on SQLAlchemy)."""
    import threading

    from ergate_celery import JobStatus
    from ergate_celery.stores import sql_listen

    job = ergate.submit_job("pg_writes", initial_input_value=4)
    ended: list[Any] = []

    def read_then_end(job_id: str) -> Any:
        listening = store._listener.is_listening()
        stored = type(store).get(store, job_id)
        if listening and not ended:
            ended.append(
                store.update(
                    job_id, lambda s: s.model_copy(update={"status": JobStatus.COMPLETED})
                ).after
            )
        return stored

    kept, sql_listen.REREAD = sql_listen.REREAD, 3600.0
    store.get = read_then_end
    try:
        waited: list[Any] = []
        waiter = threading.Thread(
            target=lambda: waited.append(store.wait_final(str(job.id), None, 0.01)), daemon=True
        )
        waiter.start()
        waiter.join(60.0)  # a bound for the failure only: told, it ends at once
        assert len(ended) == 1
        assert waited == ended, waited
    finally:
        sql_listen.REREAD = kept
        del store.get


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
