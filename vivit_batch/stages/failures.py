"""One video's unexpected exception -> that video's `internal_error` row; what stays fatal.

A bug that one odd file hits, while decoding, preprocessing or labelling it, must cost that video
and not the run: a failed run fails again on the same video every night. So the stages turn any
`Exception` of one video into a `VideoError` with code `internal_error` (an error row, counted in
the error budget like the others), and log its traceback once per distinct error (same types
raised at the same places) in each actor process, not once per video.

What is no video's fault stays fatal, raised as before: exceptions that are not `Exception`s
(KeyboardInterrupt, which is how a lost lock stops the driver; SystemExit), a configuration or
device refusal or a changed checkpoint (`UsageError` and its kinds), and what each stage lists
besides (the decoding processes failing to start; CUDA out of memory or a CUDA error, which leave
the device unusable for every video).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback

from vivit_batch.errors import UsageError
from vivit_batch.redact import redact
from vivit_batch.video import ErrorCode, VideoError

log = logging.getLogger("vivit_batch")

ALWAYS_FATAL: tuple[type[Exception], ...] = (UsageError,)
"""Exceptions that stop the run whichever video raised them (see the module's docstring)."""
_MESSAGE_CHARS = 500
_PLACE_IN_TEXT = re.compile(r'File "[^"]*", line \d+')
"""A frame of a traceback carried as text (one raised in the decoding process)."""

_logged: set[tuple[str, ...]] = set()
_logged_lock = threading.Lock()


def error_columns(error: VideoError) -> dict:
    """A row's outcome columns for `error`."""
    return {"status": "error", "error_code": str(error.code), "error_message": redact(str(error))}


def internal_error(uri: str, error: Exception, stage: str) -> VideoError:
    """The `internal_error` for an unexpected `error` of the video at `uri` in `stage`; its
    traceback is logged the first time this process sees an error like it."""
    _log_once(error, stage)
    message = f"{type(error).__name__}: {error}"[:_MESSAGE_CHARS]
    return VideoError(
        ErrorCode.INTERNAL_ERROR,
        uri,
        f"unexpected error while {stage} it ({message}); likely a bug that this file hits, with "
        "its traceback in the log. Report it with the file; --rerun-errors retries it",
    )


def _log_once(error: Exception, stage: str) -> None:
    signature = _signature(error)
    with _logged_lock:
        if signature in _logged:
            return
        _logged.add(signature)
    text = "".join(traceback.format_exception(error))
    log.error(redact(f"internal_error while {stage} a video (logged once per error):\n{text}"))


def _signature(error: BaseException) -> tuple[str, ...]:
    """What makes two errors the same one: their types and the places they were raised, along
    the chain of causes (not their messages, which name the video)."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 200:
        parts.append(type(seen).__name__)
        parts += [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(seen.__traceback__)]
        if "Traceback" in str(seen):  # a traceback from the decoding process, as text
            parts += _PLACE_IN_TEXT.findall(str(seen))
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return tuple(parts)
