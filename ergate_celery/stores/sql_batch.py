"""PostgreSQL: many new jobs (a fan-out's children) stored in one statement.

The rows come as one array per column, unnested into a row set, so the statement's text is the
same for any number of jobs and psycopg prepares it once. The job rows are inserted with
`ON CONFLICT DO NOTHING`: an id that is taken is left alone and reported as not created, and
the index entries, listing rows and tags are written for the created rows only (joined to the
insert's RETURNING), all in the statement's one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ergate_celery.model.job import Job
from ergate_celery.stores.base import index_entry
from ergate_celery.stores.sql_postgres import Compiled
from ergate_celery.stores.sql_tables import naive_utc
from ergate_celery.stores.task_rows import NewJob, batch_parameters

_ROW = ("task_id", "status", "result", "traceback", "date_done")


def _rows(prefix: str, table: sa.Table, names: Sequence[str]) -> Any:
    """The row set of `names` columns of `table`, each sent as an array `<prefix>_<name>`."""
    arrays = [
        sa.bindparam(f"{prefix}_{name}", type_=pg.ARRAY(table.c[name].type)) for name in names
    ]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived(name=f"{prefix}_rows")


def new_job(job: Job, row: Mapping[str, Any], now: datetime) -> NewJob:
    """What creating `job` as `row` (its columns) writes: its index entry at `now` and its
    listing row, in the columns' naive UTC."""
    entry = index_entry(job, now=now)
    submitted = job.submitted_at
    return NewJob(
        row,
        None if entry is None else (entry.kind, naive_utc(entry.at)),
        None if submitted is None else (job.workflow_name, job.status.name, naive_utc(submitted)),
        job.tags,
    )


class BatchCreate:
    """The statement that creates many jobs, built and compiled on first use."""

    def __init__(self, table: sa.Table, index: sa.Table, listing: sa.Table, tags: sa.Table) -> None:
        self.table, self.index, self.listing, self.tags = table, index, listing, tags
        self._compiled: Compiled | None = None

    def _statement(self) -> Any:
        table, index, listing, tags = self.table, self.index, self.listing, self.tags
        rows = _rows("r", table, _ROW)
        insert = pg.insert(table).from_select(
            list(_ROW), sa.select(*[rows.c[name] for name in _ROW])
        )
        created = (
            insert.on_conflict_do_nothing(index_elements=[table.c.task_id])
            .returning(table.c.task_id)
            .cte("created")
        )
        entries = _rows("i", index, ("job_id", "kind", "at"))
        indexed = pg.insert(index).from_select(
            ["job_id", "kind", "at"],
            sa.select(entries.c.job_id, entries.c.kind, entries.c.at).join(
                created, created.c.task_id == entries.c.job_id
            ),
        )
        indexed = indexed.on_conflict_do_update(
            index_elements=[index.c.job_id],
            set_={"kind": indexed.excluded.kind, "at": indexed.excluded.at},
        )
        listed_names = ("job_id", "workflow", "status", "submitted_at")
        entries_listed = _rows("l", listing, listed_names)
        listed = listing.insert().from_select(
            list(listed_names),
            sa.select(*[entries_listed.c[name] for name in listed_names]).join(
                created, created.c.task_id == entries_listed.c.job_id
            ),
        )
        pairs = _rows("t", tags, ("job_id", "key", "value"))
        tagged = tags.insert().from_select(
            ["job_id", "key", "value"],
            sa.select(pairs.c.job_id, pairs.c.key, pairs.c.value).join(
                created, created.c.task_id == pairs.c.job_id
            ),
        )
        return sa.select(created.c.task_id).add_cte(
            indexed.cte("indexed"), listed.cte("listed"), tagged.cte("tagged")
        )

    def create(self, conn: sa.Connection, jobs: Sequence[NewJob]) -> set[str]:
        """Store `jobs` whose ids are free, with their index entries, listing rows and tags;
        the ids stored. IntegrityError (nothing written) when a listing row or tag of a
        created job is already there (left by an expired record)."""
        if self._compiled is None:
            self._compiled = Compiled(self._statement(), conn.dialect)
        params = batch_parameters(jobs, _ROW)
        return {str(task_id) for (task_id,) in self._compiled.run(conn, params)}
