"""Job records in a SQLite file: the SQLAlchemy store, whose waiters wake on each commit."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

from ergate_celery.embedded.folder_watch import watch_folder
from ergate_celery.model.job import Job
from ergate_celery.stores.sqlalchemy import SQLAlchemyJobStore

#: Longest wait between two reads of a waited-for job while commits are watched (s): a
#: safety net only, for a change the watch could not tell.
WATCHED_POLL = 1.0


class SQLiteJobStore(SQLAlchemyJobStore):
    """The SQLAlchemy store on SQLite; `wait_final` reads the job when another process
    commits (inotify on the write-ahead log), not every `poll_interval` s."""

    def wait_final(self, job_id: str, timeout: float | None, poll_interval: float) -> Job | None:
        """See `JobStore.wait_final`: a read after each commit to the database, or every
        `poll_interval` s where commits cannot be watched."""
        database = sa.engine.make_url(str(self.backend.url)).database
        watch = None
        if database and database != ":memory:":
            folder, name = os.path.split(os.path.abspath(database))
            # A commit writes to "<file>-wal" (made anew after the last connection left), or
            # to the file itself where the write-ahead log is off.
            watch = watch_folder(folder, name, f"{name}-wal", written=True)
        if watch is None:
            return super().wait_final(job_id, timeout, poll_interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:  # the watch is older than the read: no commit goes unseen
                job = self.get(job_id)
                if job is None or job.is_final:
                    return job
                wait = max(poll_interval, WATCHED_POLL)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return job
                    wait = min(wait, left)
                watch.wait(wait)
        finally:
            watch.close()
