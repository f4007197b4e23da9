"""What stands in for the broker in a `WorkflowTester`: step messages, serialized as Celery
serializes a task's arguments, each due at a moment of the virtual clock (now, or at the end
of a retry's countdown), delivered earliest first and in the order they were sent."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kombu.serialization import dumps, loads


@dataclass(frozen=True, order=True)
class Message:
    """One step message: the task it is for, its task id, its body and its retry count."""

    due: datetime
    sent: int
    task_name: str = field(compare=False)
    task_id: str = field(compare=False)
    body: bytes | str = field(compare=False, repr=False)
    content_type: str = field(compare=False, repr=False)
    content_encoding: str = field(compare=False, repr=False)
    retries: int = field(compare=False, default=0)

    def payload(self) -> Any:
        """The task's one argument, decoded as a worker decodes it."""
        return loads(
            self.body, self.content_type, self.content_encoding, accept=[self.content_type]
        )


class MessageQueue:
    """Messages by due time, then by the order they were sent."""

    def __init__(self, serializer: str) -> None:
        self.serializer = serializer
        self._heap: list[Message] = []
        self._sent = itertools.count()

    def put(self, task_name: str, task_id: str, payload: Any, due: datetime, retries: int) -> None:
        """Send `payload` (serialized now, as a publish does) for delivery at `due`."""
        content_type, content_encoding, body = dumps(payload, serializer=self.serializer)
        message = Message(
            due, next(self._sent), task_name, task_id, body, content_type, content_encoding, retries
        )
        heapq.heappush(self._heap, message)

    def pop_due(self, now: datetime) -> Message | None:
        """The next message due at `now`, taken off the queue; None if none is due."""
        if self._heap and self._heap[0].due <= now:
            return heapq.heappop(self._heap)
        return None

    def next_due(self) -> datetime | None:
        """When the earliest message falls due (None: the queue is empty)."""
        return self._heap[0].due if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
