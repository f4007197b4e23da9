"""The concurrency slots of one key, as pure data: which jobs hold a slot, which wait.

A store keeps one small document per (workflow, key) and changes it by compare-and-set; the
rules of taking and freeing a slot are the pure functions here, computed again when a
concurrent change wins, so every store decides alike and atomically.
"""

from __future__ import annotations

import json
from bisect import insort_right
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Slots:
    """The jobs in progress under one key (`holding`) and those waiting, oldest first."""

    holding: tuple[str, ...] = ()
    #: (submitted at, ISO 8601; job id), in that order: who starts next.
    waiting: tuple[tuple[str, str], ...] = ()
    #: The limit last seen by a job taking a slot (what freeing a slot fills up to).
    limit: int = 1

    @property
    def empty(self) -> bool:
        """Nothing holds or waits: the document can go."""
        return not self.holding and not self.waiting

    def ahead_of(self, job_id: str) -> int | None:
        """How many jobs start before `job_id`: the waiting ones ahead of it (None: it does
        not wait)."""
        for position, (_, waiting_id) in enumerate(self.waiting):
            if waiting_id == job_id:
                return position
        return None

    def encode(self) -> str:
        """The document as stored."""
        document = {
            "holding": list(self.holding),
            "waiting": [list(entry) for entry in self.waiting],
            "limit": self.limit,
        }
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Slots:
        """The document `raw` as read (None: no document, nothing held)."""
        if raw is None:
            return cls()
        data: dict[str, Any] = json.loads(raw)
        return cls(
            holding=tuple(data.get("holding", ())),
            waiting=tuple((str(at), str(job_id)) for at, job_id in data.get("waiting", ())),
            limit=int(data.get("limit", 1)),
        )


def take(slots: Slots, job_id: str, submitted_at: str, limit: int) -> tuple[Slots | None, bool]:
    """Take a slot for `job_id` if fewer than `limit` are held; else it waits, in the order of
    `submitted_at`. Returns (the document to write, None for no change; whether it holds one).

    Taking is idempotent: a job that holds a slot keeps it; one that waits keeps its place.
    """
    if job_id in slots.holding:
        return (None if slots.limit == limit else replace(slots, limit=limit)), True
    place = slots.ahead_of(job_id)
    # A waiting job goes first only from the head of the line (room with jobs waiting
    # appears when a deploy raised the limit).
    if len(slots.holding) < limit and (place == 0 or (place is None and not slots.waiting)):
        rest = tuple(entry for entry in slots.waiting if entry[1] != job_id)
        return replace(slots, holding=(*slots.holding, job_id), waiting=rest, limit=limit), True
    if place is not None:  # waits already: keeps its place
        return (None if slots.limit == limit else replace(slots, limit=limit)), False
    # Behind every job submitted at the same moment or before: first come, first served.
    waiting = list(slots.waiting)
    insort_right(waiting, (submitted_at, job_id), key=lambda entry: entry[0])
    return replace(slots, waiting=tuple(waiting), limit=limit), False


def free(slots: Slots, job_id: str) -> tuple[Slots | None, list[str]]:
    """Free the slot of `job_id` (or its place in line); the oldest waiting jobs take the
    freed slots. Returns (the document to write, None for no change; the jobs that now hold
    a slot and are to be started)."""
    holding = tuple(held for held in slots.holding if held != job_id)
    waiting = [entry for entry in slots.waiting if entry[1] != job_id]
    if len(holding) == len(slots.holding) and len(waiting) == len(slots.waiting):
        return None, []
    promoted = [waiting_id for _, waiting_id in waiting[: max(0, slots.limit - len(holding))]]
    return (
        replace(slots, holding=(*holding, *promoted), waiting=tuple(waiting[len(promoted) :])),
        promoted,
    )
