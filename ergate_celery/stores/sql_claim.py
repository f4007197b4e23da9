"""PostgreSQL: a step's claim in one statement, without reading the record first.

A step message names its run, not the job (worker/step_message.py), so a claim used to read the
record, run the lifecycle's claim transition on it, and compare-and-set the result: two round
trips. The transition's common case — a QUEUED job at the run the message names — changes a
few fields the claim knows in advance, so the statement makes that change in the database and
returns the claimed record. Any other case (RUNNING, CANCELLING, another run, a deadline to
check, a record too close to its size limit) writes nothing and returns the record as stored,
for the Python transition and its compare-and-set: still one round trip before them.

The record is edited as `json`, not `jsonb`: `json_each` hands each top-level value back as
its text, so every value the claim does not change (a user's floats, unicode, key order) is
kept as written; only the spacing of the top level changes. The stored text is what the next
compare-and-set compares (its digest), so the store takes its token from the returned row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic import TypeAdapter
from pydantic_core import to_json

from ergate_celery.lifecycle.events import Claim
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.stores.base import ACTIVE, ClaimedInOne, job_from_document
from ergate_celery.stores.sql_driver import driver_cursor

#: The fields the claim sets from what it knows (a JSON parameter each), in the statement's
#: order; `attempt` and `started_at` are computed from the stored values.
_SET = ("current_step", "current_step_name", "workflow_version", "claim", "lease_until")
#: The fields whose stored values the claimed job's `before` is rebuilt from.
_WAS = (
    "current_step",
    "workflow_version",
    "claim",
    "lease_until",
    "started_at",
    "step_started_at",
    "queued_by",
)
#: Every field the statement changes must be in the record (one stored by an older version
#: may lack some): otherwise the record is returned for the Python transition.
_CHANGED = (*_SET, "status", "attempt", "started_at", "step_started_at", "queued_by")
#: Bytes a claim may add to a record (its times, its token, the top level's spacing) beside
#: the text of its parameters: a record closer than this to `max_bytes` takes the Python path,
#: which checks the size exactly.
HEADROOM = 1024

#: `\u0000` as the record's bytes: PostgreSQL's JSON functions refuse a string holding it (they
#: decode every string they pass), so such a record is left to the Python path, and the CASE
#: keeps them from seeing it.
_NUL = "'\\x5c7530303030'::bytea"

_WHEN: TypeAdapter[datetime | None] = TypeAdapter(datetime | None)


class ClaimRow(NamedTuple):
    """What the statement returned: whether it claimed, the row's status and record (the
    claimed one, or the one stored), and the stored values of `_WAS` when it claimed."""

    claimed: bool
    status: str
    result: bytes
    was: str | None


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def claim_sql(table: str, index: str, listing: str) -> str:
    """The statement on the (quoted, qualified) tables; parameters by name, pyformat. The
    row is locked first (`held`): a claim that waited for another write sees that write, and
    returns it when it does not claim."""
    values = "\n".join(f"        WHEN '{name}' THEN %(j_{name})s::json" for name in _SET)
    return f"""
WITH held AS (
    SELECT task_id, status, result FROM {table} WHERE task_id = %(job_id)s FOR UPDATE
), claimed AS (
    UPDATE {table} AS t SET
        status = 'RUNNING',
        date_done = NULL,
        result = convert_to((
            SELECT json_object_agg(e.key, CASE e.key
{values}
                WHEN 'status' THEN '{JobStatus.RUNNING.value}'::json
                WHEN 'attempt' THEN to_json((e.value::text)::bigint + 1)
                WHEN 'started_at' THEN
                    CASE WHEN e.value::text = 'null' THEN %(j_now)s::json ELSE e.value END
                WHEN 'step_started_at' THEN %(j_now)s::json
                WHEN 'queued_by' THEN 'null'::json
                ELSE e.value END ORDER BY e.n)::text
            FROM json_each(convert_from(t.result, 'UTF8')::json) WITH ORDINALITY
                AS e(key, value, n)
        ), 'UTF8')
    FROM held
    WHERE t.task_id = held.task_id
        AND t.status = 'QUEUED'
        AND octet_length(t.result) <= %(room)s
        AND CASE WHEN position({_NUL} IN t.result) > 0 THEN false ELSE (
            SELECT d ->> 'status' = '{JobStatus.QUEUED.value}'
                AND d ->> 'workflow_name' = %(workflow_name)s
                AND d ->> 'steps_completed' = %(steps_completed)s
                AND d ->> 'current_step_name' = %(step_name)s
                AND (%(later_step)s OR d ->> 'deadline' IS NULL)
                AND (
                    SELECT count(DISTINCT k) FROM json_object_keys(d) AS k
                    WHERE k IN ({_quoted(_CHANGED)})
                ) = {len(set(_CHANGED))}
            FROM (SELECT convert_from(t.result, 'UTF8')::json AS d) AS doc
        ) END
    RETURNING t.task_id, t.status, t.result, (
        SELECT json_object_agg(w.key, w.value)
        FROM json_each(convert_from(held.result, 'UTF8')::json) AS w
        WHERE w.key IN ({_quoted(_WAS)})
    )::text AS was
), indexed AS (
    INSERT INTO {index} (job_id, kind, at)
    SELECT task_id, '{ACTIVE}', %(at)s FROM claimed
    ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind, at = excluded.at
), relisted AS (
    UPDATE {listing} SET status = 'RUNNING' WHERE job_id IN (SELECT task_id FROM claimed)
)
SELECT true AS claimed, status, result, was FROM claimed
UNION ALL
SELECT false, status, result, NULL FROM held WHERE NOT EXISTS (SELECT 1 FROM claimed)
"""


class ClaimStatement:
    """The claim statement of one store's tables, its SQL text built once."""

    def __init__(self, table: sa.Table, index: sa.Table, listing: sa.Table) -> None:
        self._tables = (table, index, listing)
        self._sql: str | None = None

    def sql(self, dialect: sa.Dialect) -> str:
        if self._sql is None:
            quote = dialect.identifier_preparer.format_table
            self._sql = claim_sql(*(quote(table) for table in self._tables))
        return self._sql

    @staticmethod
    def parameters(
        job_id: str, claim: Claim, now: datetime, at: datetime, max_bytes: int
    ) -> dict[str, Any]:
        """The statement's parameters: the claimed fields as JSON text, what the record must
        hold for the common case, the index entry's time `at` (naive UTC)."""
        values: dict[str, Any] = {
            "j_current_step": str(claim.step_index),
            "j_current_step_name": json.dumps(claim.step_name),
            "j_workflow_version": json.dumps(claim.workflow_version),
            "j_claim": json.dumps(claim.token),
            # As pydantic writes a job's times, so the record parses to the same instants.
            "j_lease_until": to_json(claim.lease_until).decode(),
            "j_now": to_json(now).decode(),
        }
        added = sum(len(value) for value in values.values())
        values.update(
            job_id=job_id,
            workflow_name=claim.workflow_name,
            steps_completed=str(claim.steps_completed),
            step_name=claim.step_name,
            # A first step checks the job's deadline, if it has one: the Python path.
            later_step=claim.steps_completed > 0,
            at=at,
            room=max_bytes - HEADROOM - added,
        )
        return values

    def run(self, cursor: Any, dialect: sa.Dialect, params: dict[str, Any]) -> ClaimRow | None:
        """Send the statement on the driver's `cursor` (sql_driver.py); its row, or None when
        no record holds the job's id."""
        cursor.execute(self.sql(dialect), params)
        row = cursor.fetchone()
        if row is None:
            return None
        claimed, status, result, was = row
        return ClaimRow(bool(claimed), str(status), bytes(result), was)

    def claim(
        self,
        engine: sa.Engine,
        params: dict[str, Any],
        decode: Callable[[bytes], Any],
        remember: Callable[[Job, tuple[str, bytes]], None],
    ) -> ClaimedInOne:
        """Run the claim: the job claimed (and as it stood), or the record as stored. The
        record's token, the text PostgreSQL stored, is handed to `remember`: the next
        compare-and-set on the job compares it."""
        with driver_cursor(engine) as cursor:
            row = self.run(cursor, engine.dialect, params)
        if row is None:
            return ClaimedInOne(None, None)
        job = job_from_document(decode(row.result))
        remember(job, (row.status, row.result))
        if not row.claimed or row.was is None:
            return ClaimedInOne(job, None)
        return ClaimedInOne(before_claim(job, row.was), job)


def before_claim(after: Job, was: str) -> Job:
    """The job as it stood before the claim wrote `after`, from the stored values of the
    fields the claim replaced (`was`); the others the claim kept or knows."""
    stored = json.loads(was)
    return after.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "attempt": after.attempt - 1,
            "current_step": stored["current_step"],
            "workflow_version": stored["workflow_version"],
            "claim": stored["claim"],
            "lease_until": _WHEN.validate_python(stored["lease_until"]),
            "started_at": _WHEN.validate_python(stored["started_at"]),
            "step_started_at": _WHEN.validate_python(stored["step_started_at"]),
            "queued_by": stored["queued_by"],
        }
    )
