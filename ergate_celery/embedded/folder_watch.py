"""Wake-ups when a file lands in a folder, through Linux's inotify (libc, by ctypes).

`watch_folder` gives None where inotify cannot be had (another system, no watches left):
the caller then polls the folder as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import struct
import time
from typing import Any

__all__ = ["FolderWatch", "watch_folder"]

# From <sys/inotify.h>: a file written to, created in or moved into the watched folder; the
# event queue overflowed; the watch is gone (its folder was removed). Flags of inotify_init1.
_IN_MODIFY, _IN_CREATE, _IN_MOVED_TO = 0x2, 0x100, 0x80
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
#: struct inotify_event: wd, mask, cookie, len, then `len` bytes of NUL-padded name.
_EVENT = struct.Struct("iIII")


class FolderWatch:
    """One inotify instance watching one folder for files whose name ends with one of some
    suffixes, and an eventfd that any thread may `poke` to end a `wait` early."""

    def __init__(self, inotify_fd: int, wake_fd: int, suffixes: tuple[str, ...]) -> None:
        self._inotify = inotify_fd
        self._wake = wake_fd
        self._suffixes = tuple(os.fsencode(suffix) for suffix in suffixes)
        self._broken = False
        self._poll = select.poll()
        self._poll.register(inotify_fd, select.POLLIN)
        self._poll.register(wake_fd, select.POLLIN)

    @property
    def broken(self) -> bool:
        """True once the folder's watch is gone: only polling finds files from then on."""
        return self._broken

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` s; True as soon as a matching file landed (or may have: the
        kernel's queue overflowed) since the last call, or a `poke` came."""
        deadline = time.monotonic() + timeout
        while not self._broken:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = self._poll.poll(max(1, int(left * 1000 + 0.999)))
            for fd, _ in ready:
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(fd)
                    return True
            if ready and self._landed():
                return True
        return True  # the caller scans, then polls from now on

    def poke(self) -> None:
        """End the current or next `wait` at once (safe from any thread)."""
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def _landed(self) -> bool:
        landed = False
        while True:
            try:
                data = os.read(self._inotify, 65536)
            except (BlockingIOError, InterruptedError):
                return landed
            offset = 0
            while offset < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if mask & _IN_IGNORED:
                    self._broken = True
                if mask & _IN_Q_OVERFLOW or name.endswith(self._suffixes):
                    landed = True

    def close(self) -> None:
        """Release both descriptors; calling it again does nothing."""
        for fd in (self._inotify, self._wake):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._inotify = self._wake = -1


def watch_folder(folder: str, *suffixes: str, written: bool = False) -> FolderWatch | None:
    """A watch on `folder` for files named `*<one of suffixes>` created or renamed into it
    (or, if `written`, also written to), or None where inotify is not available."""
    calls = _inotify_calls()
    if calls is None:
        return None
    init, add = calls
    inotify_fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if inotify_fd < 0:  # EMFILE: this user's inotify instances are used up
        return None
    try:
        mask = _IN_CREATE | _IN_MOVED_TO | _IN_ONLYDIR | (_IN_MODIFY if written else 0)
        if add(inotify_fd, os.fsencode(folder), mask) < 0:  # ENOSPC, ENOENT, ...
            os.close(inotify_fd)
            return None
        wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except BaseException:
        os.close(inotify_fd)
        raise
    return FolderWatch(inotify_fd, wake_fd, suffixes)


@functools.cache
def _inotify_calls() -> tuple[Any, Any] | None:
    """libc's inotify_init1 and inotify_add_watch, looked up once per process."""
    if not hasattr(os, "eventfd"):  # Linux only, as inotify
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running program's own libc
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    return init, add
