"""The decoding workers' sandbox (`video.sandbox`) and their parent-served reads (`video.served`).

A worker with the sandbox on runs a probe in place of decoding (`TEST_PROBE`, honoured only when
the test sets it before the decoder starts): it cannot read a credentials file, reach a TCP
server on 127.0.0.1 or create a file, and its environment holds no credentials or home; the same
probe without the sandbox can, so the probe sees what it claims to. Sandboxed decoding of local,
S3 (moto) and http (a local server) videos equals decoding in process, pixel for pixel. A kernel
without Landlock is simulated (`WITHOUT_LANDLOCK`, honoured only by `sandbox.probe`):
`decode.sandbox=required` is exit 2 naming it, `auto` runs with one warning and `sandbox: none`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from vivit_batch.cli import main
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.video import DecodeRequest, decode_video
from vivit_batch.video.isolation import IsolatedDecoder
from vivit_batch.video.sandbox import WITHOUT_LANDLOCK, probe
from vivit_batch.video.segments import decode_segments
from vivit_batch.video.worker import PROBE_URI, TEST_PROBE

PROCESSOR = ProcessorConfig(shortest_edge=64, crop_height=64, crop_width=64)
SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=2)

needs_landlock = pytest.mark.skipif(
    probe().missing is not None, reason="this kernel has no Landlock or seccomp filters"
)


class CountingServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.listener.close()


def probe_worker(sandbox: str, spec: dict) -> tuple[dict, str | None]:
    """What a worker with `decode.sandbox=sandbox` found probing `spec`, and its sandbox."""
    with IsolatedDecoder(DecodeConfig(sandbox=sandbox)) as decoder:
        request = DecodeRequest(PROBE_URI + json.dumps(spec), SAMPLING, PROCESSOR)
        with pytest.raises(RuntimeError) as probed:
            decoder.decode(request)
        return json.loads(str(probed.value)), decoder.sandbox


@needs_landlock
def test_a_sandboxed_worker_reads_writes_and_reaches_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    credentials = home / ".aws" / "credentials"
    credentials.write_text("[default]\naws_secret_access_key = in-the-home\n")
    for name, value in [("HOME", str(home)), ("HF_TOKEN", "hf_secret"), (TEST_PROBE, "1")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session")
    server = CountingServer()
    spec = {
        "read": [str(credentials), f"/proc/{os.getpid()}/environ"],
        "create": [str(tmp_path / "written"), str(home / "written")],
        "connect": ["127.0.0.1", server.port],
    }
    try:
        confined, described = probe_worker("required", spec)
        accepted_confined = server.accepted
        free, _ = probe_worker("off", spec)
    finally:
        server.close()
    assert described is not None and described.startswith("landlock ABI ")
    failures = ("read 0", "read 1", "create 0", "create 1", "connect")
    assert {name: confined[name] for name in failures} == dict.fromkeys(failures, "PermissionError")
    assert accepted_confined == 0
    environment = confined["environment"]
    assert not [n for n in environment if n.startswith(("AWS_", "HF_")) or n == "HOME"]
    # the probe sees what it claims to: without the sandbox the same process can
    assert free["read 0"] == free["create 0"] == free["connect"] == "ok"
    assert server.accepted == 1 and (tmp_path / "written").exists()
    assert free["environment"] == environment  # the environment is not the sandbox's doing


@needs_landlock
def test_sandboxed_decoding_equals_decoding_in_process(sources):
    uris, options = sources
    uniform = SamplingConfig(
        num_frames=4, temporal_views="uniform", num_temporal_views=2, spatial_crops="three"
    )
    segments = SamplingConfig(num_frames=4, frame_sample_rate=2, temporal_views="segments")
    with IsolatedDecoder(DecodeConfig(sandbox="required")) as decoder:
        for uri in uris:
            for sampling in (SAMPLING, uniform):
                request = DecodeRequest(uri, sampling, PROCESSOR, "v", storage_options=options)
                isolated, in_process = decoder.decode(request), decode_video(request)
                np.testing.assert_array_equal(isolated.clips, in_process.clips)
                assert isolated.metadata == in_process.metadata  # bytes_read included
            request = DecodeRequest(uri, segments, PROCESSOR, "v", storage_options=options)
            chunks = list(decoder.decode_segments(request))
            expected = list(decode_segments(request))
            np.testing.assert_array_equal(
                np.concatenate([c.clips for c in chunks]),
                np.concatenate([c.clips for c in expected]),
            )
            assert chunks[-1].metadata == expected[-1].metadata
        assert decoder.sandbox is not None and decoder.sandbox.startswith("landlock")


def test_required_on_a_kernel_without_landlock_is_exit_2_naming_it(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(WITHOUT_LANDLOCK, "1")
    (tmp_path / "m.txt").write_text("a.mp4\n")
    args = ["run", "--manifest", str(tmp_path / "m.txt"), "--output", str(tmp_path / "out")]
    args += ["--model", str(tmp_path / "no-model"), "--set", "decode.sandbox=required"]
    assert main(args) == 2
    [line] = capfd.readouterr().err.splitlines()
    assert "decode.sandbox=required, but this kernel has no Landlock" in line
    assert not (tmp_path / "out").exists()


def test_auto_on_a_kernel_without_landlock_decodes_unsandboxed(monkeypatch, sources):
    monkeypatch.setenv(WITHOUT_LANDLOCK, "1")
    local = sources[0][0]
    with IsolatedDecoder(DecodeConfig(sandbox="auto")) as decoder:
        decoded = decoder.decode(DecodeRequest(local, SAMPLING, PROCESSOR))
        assert decoder.sandbox == "none"
    np.testing.assert_array_equal(
        decoded.clips, decode_video(DecodeRequest(local, SAMPLING, PROCESSOR)).clips
    )


def test_the_probe_request_is_only_a_bad_path_in_normal_runs(monkeypatch):
    monkeypatch.delenv(TEST_PROBE, raising=False)
    spec = {"read": [str(Path.home())]}
    with IsolatedDecoder() as decoder:
        request = DecodeRequest(PROBE_URI + json.dumps(spec), SAMPLING, PROCESSOR)
        with pytest.raises(Exception) as refused:
            decoder.decode(request)
    assert not isinstance(refused.value, RuntimeError)
    assert getattr(refused.value, "code", None) == "not_found"
