"""Reading inputs through fsspec: local paths, `file://`, `s3://` (s3fs) and other fsspec URLs.

Every failure is an `OSError`: `FileNotFoundError` and `PermissionError` as the filesystems raise
them, anything else a backend raises (botocore's credential errors, say) as `StorageError`.
Callers that need a per-video error code map them (`VideoError.from_storage`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

import fsspec
from fsspec.utils import get_protocol

from vivit_batch.config import JobConfig, StorageSection
from vivit_batch.errors import StorageError

LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
REMOTE_BLOCK_SIZE = 4 * 2**20
"""Bytes per ranged read from remote storage. Demuxers jump around (header, index that may sit at
the end of the file, then the clip's packets), so remote files are read through an LRU cache of
blocks this size rather than downloaded whole or streamed front to back."""


T = TypeVar("T")


class NotARegularFile(OSError):
    """A local path that is a named pipe, a device or a socket: reading it could block for
    good or never end, so it is refused before the first read."""


HTTP_PROTOCOLS = ("http", "https")
HTTP_ALLOW_HOSTS = "http_allow_hosts"
"""The key of the storage options that carries `manifest.http_allow_hosts`."""
HTTP_READ_TIMEOUT = "http_read_timeout_s"
"""The key of the storage options that carries the most seconds an http(s) read may go without
a byte (`decode.stall_timeout_s`)."""


def _storage_call(call: Callable[[], T]) -> T:
    try:
        return call()
    except OSError:
        raise
    except Exception as error:
        raise StorageError(f"{type(error).__name__}: {error}") from error


def job_storage_options(config: JobConfig) -> dict:
    """The fsspec options for a job's manifest, videos and output."""
    return storage_options(config.storage, config.manifest.http_allow_hosts)


def storage_options(
    section: StorageSection | None = None, http_allow_hosts: tuple[str, ...] = ()
) -> dict:
    """s3fs options: botocore retries throttling, 5xx, resets and timeouts with backoff; and
    the hosts that http(s) sources may reach beyond public addresses (`source_policy`)."""
    section = section or StorageSection()
    options = {
        HTTP_ALLOW_HOSTS: http_allow_hosts,
        "anon": section.anon,
        # Workers outlive runs: a cached listing would hide an object replaced since.
        "use_listings_cache": False,
        "config_kwargs": {
            "retries": {"max_attempts": section.max_attempts, "mode": "standard"},
            "connect_timeout": section.timeout_s,
            "read_timeout": section.timeout_s,
        },
    }
    if section.endpoint_url:
        options["endpoint_url"] = section.endpoint_url
    if section.region:
        options["client_kwargs"] = {"region_name": section.region}
    if section.profile:
        options["profile"] = section.profile
    return options


def filesystem(uri: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path within it. `options` (`storage_options`)
    are s3fs's for `s3://` URIs; http(s) URIs get a client that applies the source policy."""
    if is_local(uri):
        return fsspec.filesystem("file"), local_path(uri)
    protocol = get_protocol(uri)
    options = dict(options or {})
    allow_hosts = options.pop(HTTP_ALLOW_HOSTS, ())
    read_timeout_s = options.pop(HTTP_READ_TIMEOUT, None)
    if protocol in S3_PROTOCOLS:
        return fsspec.core.url_to_fs(uri, **options)
    if protocol in HTTP_PROTOCOLS:
        from vivit_batch.source_policy import client_factory  # aiohttp: only where it is used

        return fsspec.core.url_to_fs(uri, get_client=client_factory(allow_hosts, read_timeout_s))
    return fsspec.core.url_to_fs(uri)


def single_attempt_s3(options: dict | None = None):
    """An S3 filesystem with `options` (`storage_options`) that sends each request once: no
    botocore retries, no s3fs retries. For requests whose retries must go through a new check
    (the lock's fence), with the caller's own deadline."""
    import s3fs

    ours = (HTTP_ALLOW_HOSTS, HTTP_READ_TIMEOUT)
    options = {k: v for k, v in (options or {}).items() if k not in ours}
    config = dict(options.get("config_kwargs") or {})
    config["retries"] = {"total_max_attempts": 1, "mode": "standard"}
    filesystem = s3fs.S3FileSystem(**{**options, "config_kwargs": config}, skip_instance_cache=True)
    filesystem.retries = 1
    return filesystem


def arrow_filesystem(uri: str, options: dict | None = None):
    """A pyarrow filesystem for Ray Data's readers, built from ours (pyarrow's own S3 client
    ignores AWS_ENDPOINT_URL), or None for local paths."""
    if is_local(uri):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(filesystem(uri, options)[0]))


def is_local(uri: str) -> bool:
    return get_protocol(uri) in LOCAL_PROTOCOLS


def is_s3(uri: str) -> bool:
    return get_protocol(uri) in S3_PROTOCOLS


def local_path(uri: str) -> str:
    """The absolute filesystem path of a local `uri` (a plain path or a `file://` URL)."""
    return fsspec.core.strip_protocol(uri)


class _CountingFetcher:
    """Wraps a block cache's fetcher and counts the bytes storage actually returned (the cache's
    own `total_requested_bytes` counts a whole block even where the file ends sooner)."""

    def __init__(self, fetch: Callable[[int, int], bytes]):
        self._fetch = fetch
        self.fetched = 0

    def __call__(self, start: int, end: int) -> bytes:
        data = self._fetch(start, end)
        self.fetched += len(data)
        return data


@dataclass
class InputFile:
    """A readable, seekable binary file and what reading it has cost so far."""

    file: BinaryIO
    size: int | None
    fetches: _CountingFetcher | None = None
    """Counts the remote reads behind a cache; None where every read goes to storage."""
    _delivered: int = field(default=0, init=False)

    def read(self, size: int = -1) -> bytes:
        data = _storage_call(lambda: self.file.read(size))
        self._delivered += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return _storage_call(lambda: self.file.seek(offset, whence))

    def tell(self) -> int:
        return self.file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def bytes_fetched(self) -> int:
        """Bytes fetched from storage so far."""
        return self._delivered if self.fetches is None else self.fetches.fetched

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_input(
    uri: str,
    storage_options: dict | None = None,
    *,
    block_size: int = REMOTE_BLOCK_SIZE,
    stall_timeout_s: float | None = None,
) -> InputFile:
    """Open `uri` for reading: a regular file (`NotARegularFile` otherwise), or a remote object.
    `storage_options` go to the remote filesystem (e.g. s3fs); a network read that gets no byte
    for `stall_timeout_s` raises a `TimeoutError`."""
    if is_local(uri):
        return _open_regular_file(local_path(uri))

    def open_remote() -> InputFile:
        fs, path = filesystem(uri, with_read_timeout(storage_options, stall_timeout_s))
        remote = fs.open(path, "rb", block_size=block_size, cache_type="blockcache")
        cache = getattr(remote, "cache", None)  # fsspec's buffered files have one
        if cache is None:
            return InputFile(remote, getattr(remote, "size", None))
        cache.fetcher = fetches = _CountingFetcher(cache.fetcher)
        return InputFile(remote, remote.size, fetches)

    return _storage_call(open_remote)


def _open_regular_file(path: str) -> InputFile:
    # O_NONBLOCK: opening a named pipe returns at once instead of waiting for a writer (it has
    # no effect on reading a regular file)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        raise NotARegularFile(f"{path} is {_kind_of_file(status.st_mode)}, not a regular file")
    raw = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed by InputFile)
    return InputFile(raw, status.st_size)


def _kind_of_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a file"


def read_timeout(options: dict | None) -> float | None:
    """The seconds `with_read_timeout` gave `options`, if any."""
    return (options or {}).get(HTTP_READ_TIMEOUT)


def info_within(filesystem: fsspec.AbstractFileSystem, path: str, timeout_s: float | None) -> dict:
    """`filesystem.info(path)`, given up after `timeout_s` in all on the async filesystems
    (http(s), S3): one deadline over the clients' retries and fallbacks (s3fs retries a stalled
    read, fsspec's http falls back from HEAD to GET), the request cancelled. Raises
    `TimeoutError` (fsspec's `FSTimeoutError`) then."""
    if timeout_s is None or not getattr(filesystem, "async_impl", False):
        return filesystem.info(path)
    from fsspec.asyn import sync

    return sync(filesystem.loop, filesystem._info, path, timeout=timeout_s)


def with_read_timeout(options: dict | None, read_timeout_s: float | None) -> dict | None:
    """`options` whose network reads give up after `read_timeout_s` without a byte: botocore's
    read timeout for S3, aiohttp's socket read timeout for http(s)."""
    if read_timeout_s is None:
        return options
    options = dict(options or {})
    options[HTTP_READ_TIMEOUT] = read_timeout_s
    if "config_kwargs" in options:
        config = dict(options["config_kwargs"])
        config["read_timeout"] = min(config.get("read_timeout", read_timeout_s), read_timeout_s)
        options["config_kwargs"] = config
    return options
