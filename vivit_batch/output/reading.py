"""Reading an output as its commands do (`report`, `review`): open it, or say in one line
(`ConfigError`) why the path is not an output; its committed rows with every file's columns,
whole or file by file; its manifest columns."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from vivit_batch.config import ConfigError
from vivit_batch.output.dataset import IDENTITY_FILE, Output
from vivit_batch.output.schema import (
    METADATA_COLUMNS,
    OUTCOME_COLUMNS,
    PREDICTION_COLUMNS,
    PROVENANCE_COLUMNS,
    RESERVED_COLUMNS,
)

KNOWN_TYPES = pa.schema(
    {
        "video_id": pa.string(),
        "uri": pa.string(),
        **OUTCOME_COLUMNS,
        **PREDICTION_COLUMNS,
        **METADATA_COLUMNS,
        **PROVENANCE_COLUMNS,
    }
)
"""Columns every output row has, typed: what an output with no rows yet reads as."""
WRITTEN_COLUMNS = RESERVED_COLUMNS | {"video_id", "uri"}
"""What vivit-batch writes; the other columns are the manifest's."""


def open_output(output_uri: str, storage_options: dict | None = None) -> Output:
    from botocore.exceptions import BotoCoreError

    try:
        output = Output(output_uri, storage_options)
        exists = output.filesystem.exists(output.root)
        identity = exists and output.read_identity()
    except (OSError, ValueError, BotoCoreError) as error:  # a bad URI, an unreachable store
        raise ConfigError(
            f"{output_uri}: cannot read it ({error}); check the URI, the credentials and "
            "storage.endpoint_url"
        ) from error
    if not exists:
        raise ConfigError(f"{output_uri}: no such output; give the --output of earlier runs")
    if identity is None:
        raise ConfigError(
            f"{output_uri} is not a vivit-batch output (it has no {IDENTITY_FILE}); give the "
            "--output of earlier runs"
        )
    return output


def committed_dataset(output: Output) -> ds.Dataset:
    """The committed rows with every file's columns (a column a file lacks reads as null
    there: manifests may gain columns between runs); the known columns when there are none."""
    dataset = ds.dataset(output.root, filesystem=output.filesystem, format="parquet")
    schemas = [fragment.physical_schema for fragment in dataset.get_fragments()]
    return dataset.replace_schema(
        pa.unify_schemas(schemas or [KNOWN_TYPES], promote_options="permissive")
    )


def committed_files(
    dataset: ds.Dataset, columns: list[str], where: ds.Expression | None = None
) -> Iterator[pa.Table]:
    """`columns` of the committed rows that match `where`, one data file at a time: what a
    command reads of a large output without holding all of it."""
    for fragment in dataset.get_fragments():
        yield fragment.to_table(schema=dataset.schema, columns=columns, filter=where)


def manifest_columns(dataset: ds.Dataset) -> list[str]:
    return [name for name in dataset.schema.names if name not in WRITTEN_COLUMNS]


def check_truth_column(dataset: ds.Dataset, truth_column: str) -> None:
    """`ConfigError` unless `truth_column` is one of the output's manifest columns."""
    columns = manifest_columns(dataset)
    if truth_column not in columns:
        raise ConfigError(
            f"--truth-column {truth_column}: the output has no such manifest column; it has "
            + (", ".join(columns) or "none")
        )


def first_per_video(rows: pa.Table) -> pa.Table:
    """The first of each video's rows (by `video_id`), in their order."""
    ids = rows["video_id"].combine_chunks().dictionary_encode().indices.to_numpy()
    _, first = np.unique(ids, return_index=True)
    return rows.take(np.sort(first))
