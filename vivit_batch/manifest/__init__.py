"""Manifests: which videos to label, their ids, and the columns that pass through to the output.
`read` reads them (streamed, or with Ray Data) and assigns ids; `check` checks one before any
work."""

from vivit_batch.manifest.check import ManifestSummary, scan_manifest
from vivit_batch.manifest.read import (
    base_directory,
    list_videos,
    listing_table,
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
    "listing_table",
    "manifest_format",
    "read_dataset",
    "resolve_uri",
    "scan_manifest",
    "video_id_for",
    "with_ids",
]
