"""The paused workflows as a process sees them: read from the store, trusted for
`ergate_pause_refresh` seconds, so that a step pays no extra round trip for pausing."""

from __future__ import annotations

import threading
import time

from .stores import JobStore


class PausedWorkflows:
    """A cached copy of the store's paused set; `holds(name)` reads the store at most once per
    `refresh` seconds (per process), never once per step."""

    def __init__(self, store: JobStore, refresh: float) -> None:
        self.store = store
        self.refresh = refresh
        self._names: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> frozenset[str]:
        """The paused workflows, as read at most `refresh` seconds ago."""
        if time.monotonic() - self._read_at >= self.refresh:
            with self._lock:
                if time.monotonic() - self._read_at >= self.refresh:
                    self._names = frozenset(self.store.paused_workflows())
                    self._read_at = time.monotonic()
        return self._names

    def holds(self, workflow_name: str) -> bool:
        """Whether `workflow_name` is paused (as of at most `refresh` seconds ago)."""
        return workflow_name in self.current()

    def forget(self) -> None:
        """Read the store again at the next question (after this process paused or resumed)."""
        self._read_at = float("-inf")
