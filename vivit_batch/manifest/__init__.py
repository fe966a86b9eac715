"""Manifests: which videos to label, their ids, and the columns that pass through to the output.
`read` reads them (streamed, or with Ray Data) and assigns ids, `json_lines` reads a JSON Lines
file in bounded batches, `listing` streams a directory's, glob's or prefix's videos; `check`
checks one before any work."""

from vivit_batch.manifest.check import ManifestSummary, scan_manifest
from vivit_batch.manifest.json_lines import schema_of
from vivit_batch.manifest.listing import list_videos, remove_listing
from vivit_batch.manifest.read import (
    base_directory,
    manifest_format,
    read_dataset,
    resolve_uri,
    video_id_for,
    with_ids,
)

__all__ = [
    "ManifestSummary",
    "base_directory",
    "list_videos",
    "manifest_format",
    "read_dataset",
    "remove_listing",
    "resolve_uri",
    "scan_manifest",
    "schema_of",
    "video_id_for",
    "with_ids",
]
