"""What each source video is right now: its size, modification time and ETag.

Every row records the version of the file it labelled, so that a later run can tell a video
replaced at the same URI (`run.refresh_changed`) from one that is unchanged. A directory, glob or
prefix manifest carries each video's version from its listing (`list_videos`); the rows of a
file manifest get theirs from the storage's `info` call (a stat locally, a HEAD on S3), before
the video is decoded, within `decode.stall_timeout_s` in all for http(s) and S3 sources: a source
that does not answer in time is marked (`STAT_TIMED_OUT`) and becomes a `timeout` row without
being decoded; a run with `run.refresh_changed` keeps its previous row (whether it changed is
unknown) and checks it again next time.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch import storage
from vivit_batch.output.schema import STAT_TIMED_OUT, VERSION_COLUMNS

log = logging.getLogger("vivit_batch")

STAT_THREADS = 16
"""Concurrent `info` calls per block: on S3 each is a round trip."""


def source_version(uri: str, options: dict | None) -> dict:
    """{source_size, source_modified, source_etag, STAT_TIMED_OUT}: the version, all None when
    the file cannot be read (the decode stage reports why) or did not answer within the stall
    timeout that `options` carry (`storage.with_read_timeout`; then STAT_TIMED_OUT is True)."""
    unknown = dict.fromkeys(VERSION_COLUMNS)
    try:
        filesystem, path = storage.filesystem(uri, options)
        info = storage.info_within(filesystem, path, storage.read_timeout(options))
    except TimeoutError:
        return {**unknown, STAT_TIMED_OUT: True}
    except Exception:  # noqa: BLE001 (an unreadable source is the decode stage's error row)
        return {**unknown, STAT_TIMED_OUT: False}
    return {**version_of(info), STAT_TIMED_OUT: False}


def version_of(info: dict) -> dict:
    """{source_size, source_modified, source_etag} from what the storage tells of a file, by
    `info` or in a listing (`find`, `glob` with `detail=True`)."""
    return {
        "source_size": info.get("size"),
        "source_modified": _modified(info),
        "source_etag": (info.get("ETag") or info.get("etag") or None),
    }


def has_versions(table: pa.Table) -> bool:
    """Whether the rows carry their versions already (they come from a listing)."""
    return all(name in table.column_names for name in VERSION_COLUMNS)


def with_versions(table: pa.Table, options: dict | None) -> pa.Table:
    """Append the version columns for each row's `uri` and `STAT_TIMED_OUT`, unless the rows
    carry the versions (from a listing)."""
    if has_versions(table):
        return table
    uris = table.column("uri").to_pylist()
    with ThreadPoolExecutor(min(STAT_THREADS, max(1, len(uris)))) as pool:
        versions = list(pool.map(lambda uri: source_version(uri, options), uris))
    types = {**VERSION_COLUMNS, STAT_TIMED_OUT: pa.bool_()}
    for name, kind in types.items():
        table = table.append_column(name, pa.array([v[name] for v in versions], kind))
    return table


def changed_ids(table: pa.Table, recorded: pa.Table, options: dict | None) -> pa.Table:
    """Ids of the rows in `table` (manifest rows with ids) whose source differs from the version
    `recorded` (committed rows: video_id + version columns) holds for them; one column. A source
    that did not answer in time is not among them: its row stays until a check answers."""
    known = table.filter(pc.is_in(table["video_id"], recorded["video_id"]))
    listed = list(VERSION_COLUMNS) if has_versions(known) else []
    now = with_versions(known.select(["video_id", "uri", *listed]), options)
    then = recorded.select(["video_id", *VERSION_COLUMNS]).rename_columns(
        ["video_id", *(f"recorded_{name}" for name in VERSION_COLUMNS)]
    )
    both = now.join(then, "video_id")
    if STAT_TIMED_OUT in both.column_names:
        both = _without_timed_out(both)
    return both.filter(source_differs(both)).select(["video_id"])


def _without_timed_out(rows: pa.Table) -> pa.Table:
    stalled = rows[STAT_TIMED_OUT]
    count = pc.sum(stalled).as_py() or 0
    if count:
        log.warning(
            f"{count} source(s) did not answer the version check within decode.stall_timeout_s: "
            "their rows are kept as they are; the next run with --refresh-changed checks again"
        )
    return rows.filter(pc.invert(stalled))


def source_differs(rows: pa.Table) -> pa.Array:
    """Size differs, or the ETag where both have one, else the modification time. A side that
    is unknown (unreadable now, or recorded before versions were) counts as a change."""

    def differ(name: str) -> pa.Array:
        now, then = rows[name], rows[f"recorded_{name}"]
        return pc.fill_null(pc.not_equal(now, then), True)

    etags = (rows["source_etag"], rows["recorded_source_etag"])
    both_etags = pc.and_(pc.is_valid(etags[0]), pc.is_valid(etags[1]))
    content = pc.if_else(both_etags, differ("source_etag"), differ("source_modified"))
    return pc.or_(differ("source_size"), content)


def _modified(info: dict) -> datetime | None:
    """Local filesystems give `mtime` in seconds; S3 gives `LastModified` as a datetime."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return None
