"""Fixtures that tests in both tests/unit and tests/e2e use (registered by tests/conftest.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers.http import LOCAL_HTTP, FileServer
from tests.helpers.outputs import (
    HIDDEN,
    START,
    THUMBNAIL_VIDEOS,
    commit_rows,
    commit_run,
    new_output,
    thumbnail_rows,
)
from tests.helpers.relabelling import tiny_backbone_and_head
from vivit_batch.config import StorageSection
from vivit_batch.demo import CHECKPOINT_DIR
from vivit_batch.model import load_pretrained
from vivit_batch.output import Output
from vivit_batch.output.schema import (
    output_schema,
)
from vivit_batch.storage import storage_options
from vivit_batch.testing.media import write_video


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, str]:
    """A tiny checkpoint (hidden size 32) in `base`, a head trained on it in `head` (about 10 s:
    once per session), and the sha256 of its weights."""
    directory = tmp_path_factory.mktemp("tiny")
    return directory, tiny_backbone_and_head(directory)


@pytest.fixture(scope="module")
def ours():
    return load_pretrained(CHECKPOINT_DIR)


@pytest.fixture(name="output")
def nightly_output(tmp_path) -> Output:
    """`output`: two nightly runs, ten videos, three of them error rows."""
    output = new_output(tmp_path / "out")
    commit_run(output, "night1", ["v0", "v1", "v2", "v3", "e0", "e1"], START)
    commit_run(output, "night2", ["v4", "v5", "v6", "e2"], START + timedelta(days=1))
    return output


@pytest.fixture
def video_output(tmp_path) -> Output:
    """Five videos labelled cat or dog: three real 64x48 videos of 30 frames at 30 fps (each
    frame draws its index), one missing, one broken (`THUMBNAIL_VIDEOS`)."""
    uris = []
    for video_id, (_, _, source) in THUMBNAIL_VIDEOS.items():
        path = tmp_path / "videos" / f"{video_id}.mp4"
        path.parent.mkdir(exist_ok=True)
        if isinstance(source, tuple):
            write_video(path, num_frames=30, width=64, height=48, fps=30)
        elif source is not None:
            path.write_bytes(source)
        uris.append(str(path))
    output = new_output(tmp_path / "out")
    commit_rows(output, thumbnail_rows(THUMBNAIL_VIDEOS, uris), output_schema(HIDDEN), START)
    return output


@pytest.fixture(scope="module")
def sources(tmp_path_factory, s3_server):
    """The same video as a local file, an S3 object (moto) and an http URL (a local server)."""
    directory = tmp_path_factory.mktemp("sandbox-sources")
    video = write_video(directory / "v.mp4", num_frames=48, content="detailed")
    s3 = s3_server.filesystem()
    bucket = f"sandboxed-{uuid.uuid4().hex[:12]}"  # one per module that uses it
    s3.mkdir(bucket)
    s3.put(str(video), f"{bucket}/v.mp4")
    http = FileServer(directory)
    options = storage_options(StorageSection(endpoint_url=s3_server.endpoint_url)) | LOCAL_HTTP
    yield [str(video), f"s3://{bucket}/v.mp4", f"{http.url}/v.mp4"], options
    http.stop()
