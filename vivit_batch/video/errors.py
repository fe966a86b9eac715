"""What can go wrong with one video, as a code the output table records and a message for people."""

from __future__ import annotations

from enum import Enum

from vivit_batch.errors import SourceRefused, StorageError
from vivit_batch.storage import NotARegularFile


class ErrorCode(str, Enum):
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    UNREADABLE = "unreadable"
    """Not a media file, or its header is damaged or truncated."""
    NO_VIDEO_STREAM = "no_video_stream"
    DECODE_ERROR = "decode_error"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    DECODE_CRASH = "decode_crash"
    """The decoding process died (set by the pipeline, which sees the worker go)."""
    STORAGE_ERROR = "storage_error"
    INTERNAL_ERROR = "internal_error"
    """An unexpected exception while decoding, preprocessing or labelling the video (a bug that
    this file hits): see `stages.failures`."""

    def __str__(self) -> str:
        return self.value


class VideoError(Exception):
    """One video could not be turned into clips; `code` says why, the message says what to do."""

    def __init__(self, code: ErrorCode | str, uri: str, detail: str):
        self.code = ErrorCode(code)
        self.uri = uri
        self.detail = detail
        super().__init__(f"{uri}: {detail}")

    def __reduce__(self):
        return type(self), (self.code, self.uri, self.detail)

    @classmethod
    def from_storage(cls, uri: str, error: BaseException) -> VideoError:
        """The error for a failure to open or read `uri` from its storage."""
        refused = _caused_by(error, SourceRefused)
        if refused:
            return cls(ErrorCode.PERMISSION_DENIED, uri, str(refused))
        if isinstance(error, FileNotFoundError):
            return cls(ErrorCode.NOT_FOUND, uri, "no such file; check the path in the manifest")
        if isinstance(error, PermissionError):
            return cls(
                ErrorCode.PERMISSION_DENIED,
                uri,
                "access denied; grant this job read access to the file or its bucket",
            )
        if isinstance(error, IsADirectoryError):
            return cls(ErrorCode.UNREADABLE, uri, "is a directory, not a video file")
        if isinstance(error, NotARegularFile):
            return cls(
                ErrorCode.UNREADABLE,
                uri,
                f"{error}: only regular files and objects are read (a pipe or device could "
                "block or never end)",
            )
        stalled = _caused_by(error, TimeoutError)
        if stalled:
            name = type(stalled).__name__
            stall = f"{name}: {stalled}" if str(stalled) else name
            return cls(
                ErrorCode.TIMEOUT,
                uri,
                f"the source stopped sending bytes ({stall}); raise decode.stall_timeout_s "
                "for sources this slow",
            )
        described = error if isinstance(error, StorageError) else f"{type(error).__name__}: {error}"
        return cls(
            ErrorCode.STORAGE_ERROR,
            uri,
            f"could not read from storage ({described}); "
            "check the storage options and connectivity, then retry",
        )


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """`error` or the first exception of type `kind` along the chain a traceback shows: its
    `__cause__`s, and the `__context__` of one raised while handling another (s3fs raises an
    IndexError handling a read timeout)."""
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return error
