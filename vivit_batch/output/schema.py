"""Every column of an output row, declared once, and the internal columns that travel between
the stages but are never written.

Order of an output row: identification (with the segment's columns when
`sampling.temporal_views` is segments), outcome, prediction, video metadata, source version,
provenance, partition columns, then the manifest's own columns as given.
"""

from __future__ import annotations

import pyarrow as pa

SEGMENT_COLUMNS = {
    "segment_index": pa.int32(),
    "segment_start_s": pa.float64(),
    "segment_end_s": pa.float64(),
}
"""Which segment of its video a row labels: 0..n-1 in time order, and its span in seconds from
the first frame (segments outputs only; null on a video's error row)."""
OUTCOME_COLUMNS = {
    "status": pa.string(),
    "error_code": pa.string(),
    "error_message": pa.string(),
}
PREDICTION_COLUMNS = {
    "label": pa.string(),
    "label_id": pa.int32(),
    "score": pa.float32(),
    "topk_labels": pa.list_(pa.string()),
    "topk_ids": pa.list_(pa.int32()),
    "topk_scores": pa.list_(pa.float32()),
    # "embedding": fixed_size_list<float32>[hidden], sized by the model (see output_schema)
}
METADATA_COLUMNS = {
    "duration_s": pa.float64(),
    "fps": pa.float64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "num_frames": pa.int64(),
    "clip_start_s": pa.float64(),
    "clip_end_s": pa.float64(),
}
"""What the decode stage reports of each video (`VideoMetadata` attributes of the same names)."""
VERSION_COLUMNS = {
    "source_size": pa.int64(),
    "source_modified": pa.timestamp("us", tz="UTC"),
    "source_etag": pa.string(),
}
"""The version of the source file a row labelled (see `source_versions`)."""
PROVENANCE_COLUMNS = {
    "model": pa.string(),
    "model_sha256": pa.string(),
    "run_id": pa.string(),
    "processed_at": pa.timestamp("us", tz="UTC"),
}
PARTITION_COLUMNS = ("run_date",)
"""What `output.partition_by` may name: the UTC date the run started."""
PARTITION_TYPE = pa.dictionary(pa.int32(), pa.string())
"""Dictionary-encoded strings: the type readers infer from `key=value` folders."""

# Internal columns: between the stages only, dropped before writing. Their names start with
# "_", which manifests may not use.
CLIPS = "_clips"
"""uint8 clips of a video as bytes (decode -> inference)"""
CLIP_SHAPE = "_clip_shape"
VIEWS = "_views"
"""clips decoded for the row"""
BYTES_READ = "_bytes_read"
SEGMENT_SPAN_COLUMNS = ("clip_start_s", "clip_end_s")
"""metadata columns that a segment row holds of its segment, not of its video"""
SEGMENTS_TOTAL = "_segments_total"
"""on the rows of a video's last chunk of segments: how many segments it has; on its error row:
how many segment rows came before it (see `output.videos`)"""
STAT_TIMED_OUT = "_stat_timed_out"
"""bool: the source did not answer the version check within decode.stall_timeout_s
(`source_versions.with_versions` -> decode stage, which makes the row a `timeout` without
decoding)"""
DECODE_SECONDS = "_decode_s"
DECODED_ON_NVDEC = "_nvdec"
"""bool: the video's frames came from NVDEC (`VideoMetadata.decoder`), for the run report"""
INFERENCE_SECONDS = "_inference_s"
INFERENCE_DEVICE = "_inference_device"
"""JSON: what the inference actor that labelled the row runs on (see `device.describe`)"""
DECODED_COLUMNS = {
    **OUTCOME_COLUMNS,
    **METADATA_COLUMNS,
    CLIPS: pa.large_binary(),
    CLIP_SHAPE: pa.list_(pa.int32()),
    VIEWS: pa.int32(),
    BYTES_READ: pa.int64(),
    DECODE_SECONDS: pa.float64(),
    DECODED_ON_NVDEC: pa.bool_(),
}
"""What the decode stage appends to each manifest row."""


def embedding_type(hidden_size: int) -> pa.DataType:
    return pa.list_(pa.float32(), hidden_size)


SEGMENT_DECODED_COLUMNS = {**SEGMENT_COLUMNS, SEGMENTS_TOTAL: pa.int32()}
"""What the decode stage appends besides `DECODED_COLUMNS` in segments mode."""


def output_schema(
    hidden_size: int, partition_by: tuple[str, ...] = (), segments: bool = False
) -> pa.Schema:
    """The columns every output row has, in order (manifest columns follow them)."""
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("uri", pa.string()),
            *(SEGMENT_COLUMNS.items() if segments else ()),
            *OUTCOME_COLUMNS.items(),
            *PREDICTION_COLUMNS.items(),
            ("embedding", embedding_type(hidden_size)),
            *METADATA_COLUMNS.items(),
            *VERSION_COLUMNS.items(),
            *PROVENANCE_COLUMNS.items(),
            *((name, PARTITION_TYPE) for name in partition_by),
        ]
    )


RESERVED_COLUMNS = frozenset(output_schema(1, PARTITION_COLUMNS, segments=True).names) - {
    "video_id",
    "uri",
}
"""Names a manifest column may not have (besides those starting with "_")."""
WRITTEN_COLUMNS = RESERVED_COLUMNS | {"video_id", "uri"}
"""What vivit-batch writes; the other columns are the manifest's."""
ROW_TYPES = pa.schema(
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
