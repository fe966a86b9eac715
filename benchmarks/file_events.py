"""What every process does in some folders, from the kernel (inotify, Linux only): how often
each folder was opened (a listing: `opendir`), which files in it were opened, and which appeared
(created or renamed in). Nothing in the code being measured changes."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from collections import Counter

IN_OPEN = 0x00000020
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
EVENT_HEADER = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len (of the name that follows)"""


class FolderEvents(threading.Thread):
    """Counts, while it runs, for the `folders` (not their subfolders): `listings` (opens of a
    watched folder itself), `opens` (per file name, opens of files in them) and `appeared` (per
    file name). `overflowed`: the kernel dropped events (its queue holds 16,384 by default)."""

    def __init__(self, folders: list[str]):
        super().__init__(daemon=True)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: dict[int, str] = {}
        for folder in folders:
            watch = self.libc.inotify_add_watch(
                self.fd, os.fsencode(folder), IN_OPEN | IN_MOVED_TO | IN_CREATE
            )
            if watch < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self.folders[watch] = folder
        self.listings: Counter[str] = Counter()
        self.opens: Counter[str] = Counter()
        self.appeared: Counter[str] = Counter()
        self.overflowed = False
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                self.drain()
        self.drain()
        os.close(self.fd)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            self.count(data)

    def count(self, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            watch, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size
            name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
            offset += length
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
            elif mask & IN_OPEN and mask & IN_ISDIR and not name:
                self.listings[self.folders[watch]] += 1
            elif mask & IN_OPEN and not mask & IN_ISDIR:
                self.opens[name] += 1
            elif mask & (IN_MOVED_TO | IN_CREATE) and not mask & IN_ISDIR:
                self.appeared[name] += 1
