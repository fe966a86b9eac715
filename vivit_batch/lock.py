"""One run at a time per output: a lock file with a heartbeat, taken over when it goes stale.

Works the same on local disk and S3 (which reads back what was last written): a run writes its
claim, waits a moment, and reads it back; of two runs that claim at once only the last writer
sees its own claim. A live run refreshes the heartbeat; a lock whose heartbeat is older than
`stale_after_s`, or whose process on this same host is gone, belongs to a dead run and is taken
over.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time

from vivit_batch import storage
from vivit_batch.config import ConfigError

LOCK_FILE = "_lock.json"
SETTLE_S = 1.0


class OutputLocked(ConfigError):
    """Another live run is writing to this output."""


class OutputLock:
    def __init__(
        self, output_uri: str, run_id: str, options: dict | None, stale_after_s: float = 120
    ):
        self.filesystem, self.path = storage.filesystem(
            f"{output_uri.rstrip('/')}/{LOCK_FILE}", options
        )
        self.output_uri = output_uri
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> OutputLock:
        holder = self._read()
        if holder and self._is_live(holder):
            raise self._locked_error(holder)
        self._write()
        time.sleep(SETTLE_S)
        holder = self._read()
        if not holder or holder["run_id"] != self.run_id:
            raise self._locked_error(holder or {})
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._heartbeat.join()
        holder = self._read()
        if holder and holder["run_id"] == self.run_id:
            self.filesystem.rm(self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after_s / 4):
            self._write()

    def _is_live(self, holder: dict) -> bool:
        if holder.get("host") == platform.node() and not _process_exists(holder.get("pid")):
            return False  # its driver on this machine is gone: no need to wait
        return time.time() - holder.get("heartbeat", 0) < self.stale_after_s

    def _locked_error(self, holder: dict) -> OutputLocked:
        return OutputLocked(
            f"output {self.output_uri} is being written by run {holder.get('run_id')} "
            f"(host {holder.get('host')}, pid {holder.get('pid')}); wait for it to finish. "
            f"If that run is dead, its lock is taken over {self.stale_after_s:.0f} s after its "
            "last heartbeat (run.lock_stale_after_s)."
        )

    def _read(self) -> dict | None:
        try:
            with self.filesystem.open(self.path, "r") as stream:
                return json.load(stream)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write(self) -> None:
        claim = {
            "run_id": self.run_id,
            "host": platform.node(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }
        self.filesystem.makedirs(self.filesystem._parent(self.path), exist_ok=True)
        with self.filesystem.open(self.path, "w") as stream:
            json.dump(claim, stream)


def _process_exists(pid: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError):
        return True
    return True
