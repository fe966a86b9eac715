"""Measuring what the stages cost per clip (`vivit_batch.calibration`), in its own process on
real videos and a real checkpoint's geometry; no Ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.helpers.http import LOCAL_HTTP, CrashingServer
from vivit_batch import calibration
from vivit_batch.calibration import Calibration
from vivit_batch.config import load_config
from vivit_batch.job import prepare_job
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video
from vivit_batch.video import VideoMetadata
from vivit_batch.video.sandbox import probe
from vivit_batch.video.worker import (
    PROBE_URI,
    TEST_PROBE,
    Decoded,
    MalformedReply,
    encode_reply,
    parse_reply,
)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A prepared job (the tiny checkpoint) over two good videos, a missing one and a file that
    is not a video."""
    directory = tmp_path_factory.mktemp("calibration")
    make_checkpoint(directory / "checkpoint")
    uris = [
        write_video(directory / "a.mp4", num_frames=60, content="detailed"),
        directory / "missing.mp4",
        directory / "notes.mp4",
        write_video(directory / "b.mp4", num_frames=40, content="detailed"),
    ]
    (directory / "notes.mp4").write_text("not a video\n")
    (directory / "manifest.csv").write_text("uri\n" + "".join(f"{uri}\n" for uri in uris))
    config = load_config(
        None,
        [],
        manifest_uri=str(directory / "manifest.csv"),
        output_uri=str(directory / "out"),
        model_source=str(directory / "checkpoint"),
    )
    return prepare_job(config)


def measure(job, uris: list[str]) -> Calibration:
    return Calibration(job.decode, job.model_config, uris, clips_per_forward=8)


def test_the_manifest_scan_keeps_the_first_videos_to_measure(job):
    assert [Path(uri).name for uri in job.manifest.first_uris] == [
        "a.mp4",
        "missing.mp4",
        "notes.mp4",
    ]


def test_costs_come_from_the_videos_that_decode(job):
    uris = [str(Path(job.manifest.first_uris[0]).with_name(n)) for n in ("notes.mp4", "b.mp4")]
    measured = measure(job, [*job.manifest.first_uris, *uris])
    costs = measured.costs()
    assert costs is not None and measured.failure is None
    assert (costs.videos, costs.clips) == (2, 2)  # a.mp4 and b.mp4: the budget was not spent
    assert 0 < costs.decode_s < 5 and 0 < costs.inference_s < 5
    assert measured.record() == {**costs.to_dict(), "failure": None}


def test_without_a_decodable_video_inference_is_still_measured(job):
    costs = measure(job, job.manifest.first_uris[1:]).costs()
    assert costs is not None and costs.decode_s is None and costs.videos == 0
    assert costs.inference_s > 0


def test_a_measurement_past_its_deadline_is_a_failure_not_an_error(job, monkeypatch):
    monkeypatch.setattr(calibration, "TIMEOUT_S", 0.01)
    measured = measure(job, job.manifest.first_uris)
    assert measured.costs() is None
    assert measured.failure == "the measurement took more than 0.01 s"
    assert measured.record() == {"failure": measured.failure}
    assert measured.process.returncode is not None  # killed, not left running


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_the_measuring_process_holds_no_credentials(job, monkeypatch, isolation):
    """It handles what untrusted bytes decode to: the decoding processes' environment (no
    `AWS_*`, no `HOME`), or with isolation=none, where it reads and decodes the videos itself,
    that plus what reading needs (`AWS_*`, `HOME`); never a token. Seen in the process, as it
    runs."""
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("HOME", "/home/calibration-test")
    decode = dataclasses.replace(
        job.decode, config=dataclasses.replace(job.decode.config, isolation=isolation)
    )
    measured = Calibration(decode, job.model_config, [], clips_per_forward=8)
    environment = Path(f"/proc/{measured.process.pid}/environ").read_bytes().split(b"\0")
    # it was the measuring process, and it measured
    assert measured.costs() is not None, measured.failure
    names = {variable.split(b"=")[0] for variable in environment}
    assert b"HF_TOKEN" not in names
    reads_sources = isolation == "none"
    assert (b"AWS_ACCESS_KEY_ID=AKIAEXAMPLE" in environment) == reads_sources
    assert (b"HOME=/home/calibration-test" in environment) == reads_sources
    if not reads_sources:
        assert not any(name.startswith(b"AWS_") for name in names)


def test_decoding_is_timed_in_the_sandboxed_worker(job, tmp_path):
    """decode_s is the worker's CPU seconds (and the serving thread's): of the order of what
    decoding the same video costs in the measuring process itself (isolation=none, as before
    the sandbox: the first video in a fresh process either way). Not the measuring process's
    own CPU seconds (next to nothing: the worker decodes) nor with the worker's start (Python
    and PyAV: about 0.17 CPU seconds here, over 5x this video's 0.03); the bounds leave room
    for a loaded machine (2.45x seen under `pytest -n 2`, the e2e tests beside it)."""
    video = str(write_video(tmp_path / "v.mp4", num_frames=90, width=640, height=480))
    config = dataclasses.replace(job.decode.config, isolation="none")
    in_process = Calibration(
        dataclasses.replace(job.decode, config=config), job.model_config, [video], 8
    ).costs()
    measured = measure(job, [video])
    costs = measured.costs()
    assert costs is not None and costs.decode_s is not None, measured.failure
    assert in_process is not None and in_process.decode_s is not None
    assert (costs.videos, costs.clips) == (in_process.videos, in_process.clips) == (1, 1)
    assert 0.2 < costs.decode_s / in_process.decode_s < 5, (costs, in_process)


def test_without_a_centre_crop_the_forward_is_timed_on_the_decoded_clips(job):
    """No crop: the clips' shape is the video's, so the measuring process waits for the first
    clips from the decoding worker."""
    uncropped = dataclasses.replace(job.decode.processor, do_center_crop=False)
    settings = dataclasses.replace(job.decode, processor=uncropped)
    measured = Calibration(settings, job.model_config, job.manifest.first_uris[:1], 8)
    costs = measured.costs()
    assert costs is not None and measured.failure is None
    assert costs.videos == 1 and costs.decode_s > 0 and costs.inference_s > 0


@pytest.mark.skipif(probe().missing is not None, reason="no Landlock or seccomp filters")
def test_the_videos_are_decoded_in_the_sandbox(job, tmp_path, monkeypatch):
    """The calibration's decoding worker, probed in place of a video (`TEST_PROBE`: its
    findings come back as the error that fails the measurement), has the decoding processes'
    sandbox and environment: the credentials file in the home directory it does not know is
    unreadable, nothing can be created."""
    credentials = tmp_path / "home" / ".aws" / "credentials"
    credentials.parent.mkdir(parents=True)
    credentials.write_text("[default]\naws_secret_access_key = in-the-home\n")
    for name, value in [("HOME", str(credentials.parents[1])), ("AWS_PROFILE", "x")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(TEST_PROBE, "1")
    spec = {"read": [str(credentials)], "create": [str(tmp_path / "written")]}
    measured = measure(job, [PROBE_URI + json.dumps(spec)])
    assert measured.costs() is None
    prefix = "the decoding processes failed: "
    assert measured.failure is not None and measured.failure.startswith(prefix)
    found = json.loads(measured.failure.removeprefix(prefix))
    assert (found["read 0"], found["create 0"]) == ("PermissionError", "PermissionError")
    assert not {"HOME", "AWS_PROFILE"} & set(found["environment"])
    assert not (tmp_path / "written").exists()


def test_a_video_that_crashes_the_decoder_costs_that_video_only(job):
    """The poison file kills the decoding worker that opens it (SIGSEGV from the server, as a
    decoder exploit or bug would), each attempt: as in the run, that video is not decoded; the
    measuring process never saw it, and the next video is measured."""
    poison = CrashingServer()
    settings = dataclasses.replace(job.decode, storage_options=LOCAL_HTTP)
    try:
        uris = [poison.url, job.manifest.first_uris[0]]
        measured = Calibration(settings, job.model_config, uris, clips_per_forward=8)
        costs = measured.costs()
    finally:
        poison.stop()
    assert costs is not None and measured.failure is None
    assert (costs.videos, costs.clips) == (1, 1) and costs.decode_s > 0
    assert len(poison.killed) == 2  # crash_retries=1: two workers
    assert measured.process.pid not in poison.killed


def test_with_isolation_none_a_crash_costs_the_measurement_only(job):
    """The measuring process decodes itself and dies on the poison file: the figures are
    missing, the reason says so, nothing is raised."""
    poison = CrashingServer()
    config = dataclasses.replace(job.decode.config, isolation="none")
    settings = dataclasses.replace(job.decode, storage_options=LOCAL_HTTP, config=config)
    try:
        measured = Calibration(settings, job.model_config, [poison.url], clips_per_forward=8)
        assert measured.costs() is None
    finally:
        poison.stop()
    assert measured.failure.startswith("the measuring process ended with status -11")
    assert poison.killed == [measured.process.pid]


def test_the_workers_cpu_seconds_are_checked_before_they_are_believed():
    """A worker that a video exploited can claim any `cpu_s`: a figure that is not one makes
    its reply malformed (its worker is treated as crashed), as any field does."""
    header = json.loads(encode_reply(Decoded(VideoMetadata(), (1, 4, 32, 32, 3), 0, 0.25)))
    assert parse_reply(json.dumps(header).encode(), "v.mp4", 2**30).cpu_s == 0.25
    for claim in [-1, "0.1", True, float("nan"), 1e9]:
        with pytest.raises(MalformedReply):
            parse_reply(json.dumps({**header, "cpu_s": claim}).encode(), "v.mp4", 2**30)
