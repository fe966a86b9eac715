"""Ray Data's read of a JSON Lines manifest, streamed: a read task parses the file a chunk at a
time to the schema the scan found (`json_lines`), so that it holds no more than a block of rows
and its rows are typed as the scan's were. (Ray Data's own `read_json(lines=True)` parses with
pandas, to other types, and takes no filesystem: no S3 endpoint of ours.)"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import ray
from ray.data.datasource import FileBasedDatasource

from vivit_batch.manifest.json_lines import typed_batches


class JsonLinesDatasource(FileBasedDatasource):
    def __init__(self, paths: str, schema: pa.Schema, **file_options):
        super().__init__(paths, **file_options)
        self._row_schema = schema

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        for batch in typed_batches(f, self._row_schema):
            yield pa.Table.from_batches([batch])


def read_json_lines(uri: str, schema: pa.Schema, *, filesystem=None, **read_options):
    """The manifest at `uri` as a dataset; `read_options` are `ray.data.read_datasource`'s."""
    source = JsonLinesDatasource(uri, schema, filesystem=filesystem)
    return ray.data.read_datasource(source, **read_options)
