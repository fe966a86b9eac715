"""What a prefix manifest costs in S3 requests, counted at a proxy in front of the moto server:
one listing per run, whose sizes, ETags and modification times stand in for a HEAD per video."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.s3 import tally
from vivit_batch.config import ManifestSection, StorageSection
from vivit_batch.manifest import remove_listing, scan_manifest, with_ids
from vivit_batch.output import RESERVED_COLUMNS
from vivit_batch.source_versions import changed_ids
from vivit_batch.storage import storage_options
from vivit_batch.testing.media import write_video

BUCKET = "counted"
VIDEOS = 6


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, s3_server):
    fs = s3_server.filesystem()
    fs.mkdir(BUCKET)
    local = tmp_path_factory.mktemp("counted-videos")
    for i in range(VIDEOS):
        path = write_video(local / f"v{i}.mp4", num_frames=8 + 2 * i, width=32, height=32)
        fs.put(str(path), f"{BUCKET}/raw/v{i}.mp4")
    fs.pipe(f"{BUCKET}/raw/notes.txt", b"not a video")
    return fs


def test_scanning_a_prefix_lists_once_and_keeps_each_version(bucket, proxy):
    options = storage_options(StorageSection(endpoint_url=proxy.endpoint_url))
    section = ManifestSection(f"s3://{BUCKET}/raw/")
    summary = scan_manifest(section, RESERVED_COLUMNS, options)
    assert not summary.problems and summary.rows == VIDEOS
    assert tally(proxy.requests, BUCKET) == {("LIST", "raw/"): 1}

    assert summary.listing is not None
    listing = pq.read_table(summary.listing)  # the file the run reads
    remove_listing(summary.listing)
    info = bucket.info(f"{BUCKET}/raw/v3.mp4")
    [v3] = [row for row in listing.to_pylist() if row["uri"] == f"s3://{BUCKET}/raw/v3.mp4"]
    assert v3["source_etag"] == info["ETag"] and v3["source_size"] == info["size"]
    assert v3["source_modified"] == info["LastModified"]

    # The version check of --refresh-changed reads the listing: no request at all.
    proxy.requests.clear()
    rows = with_ids(listing, "")
    recorded = rows.set_column(
        rows.schema.get_field_index("source_etag"),
        "source_etag",
        pa.array(rows["source_etag"].to_pylist()[:-1] + ['"replaced"']),
    )
    changed = changed_ids(rows, recorded, options)
    assert changed["video_id"].to_pylist() == [rows["video_id"][-1].as_py()]
    assert proxy.requests == []
