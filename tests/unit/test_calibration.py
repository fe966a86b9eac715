"""Measuring what the stages cost per clip (`vivit_batch.calibration`), in its own process on
real videos and a real checkpoint's geometry; no Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.helpers.http import LOCAL_HTTP, CrashingServer
from vivit_batch import calibration
from vivit_batch.calibration import Calibration
from vivit_batch.config import load_config
from vivit_batch.job import prepare_job
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video


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


def test_the_measuring_process_keeps_only_what_decoding_needs(job, monkeypatch):
    """It reads untrusted bytes: the decoding processes' environment, no secrets."""
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    measured = measure(job, [])
    environment = Path(f"/proc/{measured.process.pid}/environ").read_bytes().split(b"\0")
    measured.costs()
    assert b"AWS_ACCESS_KEY_ID=AKIAEXAMPLE" in environment
    assert not any(variable.startswith(b"HF_TOKEN=") for variable in environment)


def test_a_video_that_crashes_the_decoder_costs_the_measurement_only(job):
    """The measuring process dies on the poison file (SIGSEGV from the server, as a decoder
    exploit or bug would): the figures are missing, the reason says so, nothing is raised."""
    poison = CrashingServer()
    settings = dataclasses.replace(job.decode, storage_options=LOCAL_HTTP)
    try:
        measured = Calibration(settings, job.model_config, [poison.url], clips_per_forward=8)
        assert measured.costs() is None
    finally:
        poison.stop()
    assert measured.failure.startswith("the measuring process ended with status -11")
    assert poison.killed == [measured.process.pid]
