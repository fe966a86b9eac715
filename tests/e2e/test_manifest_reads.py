"""Ray Data's reads of streamed manifests: a JSON Lines file on S3 parsed to the scan's schema a
chunk at a time, and a listing file put into the object store a block at a time."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import ray

from vivit_batch.config import ManifestSection, StorageSection
from vivit_batch.manifest import read_dataset, scan_manifest, schema_of
from vivit_batch.manifest.json_lines import CHUNK_BYTES
from vivit_batch.manifest.listing import LISTING_SCHEMA
from vivit_batch.output import RESERVED_COLUMNS
from vivit_batch.storage import storage_options

BUCKET = "jsonl-read"


def test_a_jsonl_manifest_on_s3_reads_as_the_scan_typed_it(ray_cluster, s3_server):
    """Rows that change shape after the first chunk: Ray Data's blocks hold the whole-file
    read's rows and types (pandas' `read_json(lines=True)` typed them otherwise, and took no
    S3 endpoint of ours)."""
    rows = [{"uri": f"{i}.mp4", "n": 1, "c": None, "m": {"a": 1}} for i in range(40_000)]
    rows += [{"uri": "b.mp4", "n": 2.5, "c": "text", "m": {"b": "x"}, "new": [1]}]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert len(data) > CHUNK_BYTES
    s3_server.filesystem().mkdir(BUCKET)
    s3_server.filesystem().pipe(f"{BUCKET}/m.jsonl", data)
    options = storage_options(StorageSection(endpoint_url=s3_server.endpoint_url))
    section = ManifestSection(f"s3://{BUCKET}/m.jsonl")
    summary = scan_manifest(section, RESERVED_COLUMNS, options)
    assert summary.problems == [] and summary.schema is not None

    read = read_dataset(section, options, schema=schema_of(summary.schema), tasks=1)
    blocks = ray.get(read.to_arrow_refs())
    assert pa.concat_tables(blocks).equals(pa_json.read_json(io.BytesIO(data)))


def test_a_listing_file_becomes_blocks_in_its_order(ray_cluster, tmp_path):
    uris = [f"/videos/{i:04d}.mp4" for i in range(1_000)]
    listing = pa.table(
        {"uri": uris, "source_size": list(range(1_000))}
        | {name: [None] * 1_000 for name in ("source_modified", "source_etag")},
        schema=LISTING_SCHEMA,
    )
    path = tmp_path / "listing.parquet"
    pq.write_table(listing, path, row_group_size=300)
    dataset = read_dataset(ManifestSection(str(tmp_path)), None, str(path))
    blocks = ray.get(dataset.to_arrow_refs())
    least = ray.data.DataContext.get_current().read_op_min_num_blocks
    assert len(blocks) == least and {len(block) for block in blocks} == {1_000 // least}
    assert pa.concat_tables(blocks).equals(listing)
