"""Hostile inputs end to end: one run over a corpus of broken, huge, stalled and crashing files,
a malformed manifest stopped before any work, presigned URLs kept out of rows, reports and logs."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import av
import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.helpers.http import (
    CrashingServer,
    FileServer,
    StallingServer,
)
from vivit_batch.cli import main
from vivit_batch.output import Output
from vivit_batch.testing.media import write_audio_only, write_video

TIMEOUT_S = 180
"""decode.timeout_s: so high that only decode.stall_timeout_s can end the stalled source soon"""

STALL_TIMEOUT_S = 3

GOOD = {  # name: write_video arguments
    "good.mp4": {"num_frames": 30},
    "good.mkv": {"num_frames": 24, "width": 48, "height": 64},
    "good.avi": {"num_frames": 20, "codec": "mpeg4", "width": 80, "height": 60},
    "good.mov": {"num_frames": 40, "width": 96, "height": 54},
}


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        picture = np.full((48, 64, 3), 128, np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def huge_declared_resolution(path: Path) -> Path:
    """A raw-video AVI whose headers declare 16000x16000 frames (256 Mpx; 768 MB each)."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr24"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), i, np.uint8), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    strf, avih = data.find(b"strf"), data.find(b"avih")
    struct.pack_into("<ii", data, strf + 12, 16000, 16000)  # BITMAPINFOHEADER width, height
    struct.pack_into("<II", data, avih + 40, 16000, 16000)  # MainAVIHeader width, height
    path.write_bytes(bytes(data))
    return path


def garble(path: Path, start: float, end: float) -> Path:
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def cut(source: Path, path: Path, keep: float | int) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{name: expected error code or None for a labelled row}, the directory, and the servers."""
    d = tmp_path_factory.mktemp("corpus")
    good = {name: write_video(d / name, content="detailed", **kw) for name, kw in GOOD.items()}
    expected: dict[str, str | None] = dict.fromkeys(GOOD)
    detailed = {"num_frames": 60, "content": "detailed"}
    mp4 = write_video(d / "source.mp4", **detailed)  # index ("moov") at the end
    mkv = write_video(d / "source.mkv", **detailed)
    faststart = write_video(
        d / "source-faststart.mp4", **detailed, container_options={"movflags": "faststart"}
    )
    for keep in (0.1, 0.5, 0.9):
        expected[cut(mp4, d / f"cut-{keep}.mp4", keep).name] = "unreadable"
    expected[cut(mkv, d / "cut-header.mkv", 200).name] = "unreadable"
    expected[cut(mkv, d / "cut-0.6.mkv", 0.6).name] = None  # a clip from what is there
    expected[cut(faststart, d / "cut-0.5-faststart.mp4", 0.5).name] = None
    (d / "zero.mp4").touch()
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "notes.mp4").write_text("these are not the frames you are looking for\n" * 50)
    (d / "picture.mp4").write_bytes(png_bytes())
    write_audio_only(d / "audio.mp4")
    huge_declared_resolution(d / "huge.avi")
    write_video(d / "long.mkv", num_frames=13, fps=1, timestamps=[600.0 * i for i in range(13)])
    garble(write_video(d / "corrupt-middle.mp4", width=96, height=64, **detailed), 0.3, 0.7)
    garble(write_video(d / "corrupt-middle.mkv", width=96, height=64, **detailed), 0.4, 0.6)
    expected |= {
        "zero.mp4": "unreadable",
        "random.mp4": "unreadable",
        "notes.mp4": "unreadable",
        "picture.mp4": "unreadable",
        "audio.mp4": "no_video_stream",
        "huge.avi": "too_large",
        "long.mkv": "too_large",  # two hours, above the cap set below
        "corrupt-middle.mp4": "decode_error",
        "corrupt-middle.mkv": None,  # one corrupt frame, counted
        "missing.mp4": "not_found",
        "pipe.mp4": "unreadable",  # nobody writes to it: reading would wait for good
        "/dev/zero": "unreadable",  # a device: reading would never end
    }
    os.mkfifo(d / "pipe.mp4")
    servers = [FileServer(d), StallingServer(mp4.read_bytes()), CrashingServer()]
    files, stalling, poison = servers
    http_good = f"{files.url}/good.mp4"
    expected |= {http_good: None, stalling.url: "timeout", poison.url: "decode_crash"}
    hosts = ",".join(server.host for server in servers)
    yield {
        "dir": d,
        "expected": expected,
        "good": good,
        "http": [http_good],
        "hosts": hosts,
        "stalled": stalling.url,
        "poison": poison.url,
    }
    for server in servers:
        server.stop()


def label_run(manifest: Path, output: Path, checkpoint: Path, *settings: str) -> int:
    every_video_alone = ["resources.batch_size=1", "resources.clips_per_forward=1"]
    args = ["run", "--manifest", str(manifest), "--output", str(output), "--model", str(checkpoint)]
    for setting in ["run.max_error_fraction=1", *every_video_alone, *settings]:
        args += ["--set", setting]
    return main(args)


def test_one_run_over_the_hostile_corpus(ray_cluster, tmp_path, corpus, checkpoint):
    d, expected = corpus["dir"], corpus["expected"]
    uris = [u if "://" in u else str(d / u) for u in expected]
    (tmp_path / "all.txt").write_text("".join(u + "\n" for u in uris))
    http = ["manifest.allow_http=true", f"manifest.http_allow_hosts={corpus['hosts']}"]
    code = label_run(
        tmp_path / "all.txt",
        tmp_path / "out",
        checkpoint,
        f"decode.timeout_s={TIMEOUT_S}",
        f"decode.stall_timeout_s={STALL_TIMEOUT_S}",
        "decode.max_duration_s=3600",
        *http,
    )
    assert code == 0
    rows = {r["uri"]: r for r in ds.dataset(tmp_path / "out").to_table().to_pylist()}
    assert sorted(rows) == sorted(uris)  # every row, once
    got = {name: rows[uri]["error_code"] for name, uri in zip(expected, uris, strict=True)}
    assert got == expected, {
        n: rows[u]["error_message"] for n, u in zip(expected, uris, strict=True)
    }
    for row in rows.values():
        assert (row["status"] == "ok") == (row["error_code"] is None)
        assert (row["embedding"] is None) == (row["status"] == "error")
    assert "SIGSEGV" in rows[corpus["poison"]]["error_message"]
    assert "decode.stall_timeout_s" in rows[corpus["stalled"]]["error_message"]
    # The stalled source ends after STALL_TIMEOUT_S, the pipe and the device at once: no video
    # waits out TIMEOUT_S (three minutes); the run takes under a minute when the machine is idle.
    [report] = Output(str(tmp_path / "out")).read_reports()
    assert report.wall_seconds < TIMEOUT_S / 2

    # The good videos, alone and decoded in the actors themselves, get the same rows.
    clean = list(map(str, corpus["good"].values())) + corpus["http"]
    (tmp_path / "clean.txt").write_text("".join(u + "\n" for u in clean))
    assert (
        label_run(
            tmp_path / "clean.txt",
            tmp_path / "clean",
            checkpoint,
            "decode.isolation=none",
            *http,
        )
        == 0
    )
    columns = ["label", "label_id", "score", "topk_ids", "topk_scores", "embedding", "num_frames"]
    for row in ds.dataset(tmp_path / "clean").to_table().to_pylist():
        assert row["status"] == "ok"
        assert {c: rows[row["uri"]][c] for c in columns} == {c: row[c] for c in columns}


def test_a_malformed_manifest_stops_the_run_before_any_work(
    ray_cluster, tmp_path, checkpoint, capsys
):
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,video_id\na.mp4,1\nb.mp4,2,3\n")
    assert label_run(manifest, tmp_path / "out", checkpoint) == 2
    assert "line 3: 3 values for the header's 2 columns" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


PRESIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLEKEY%2F20261130%2Fus-east-1"
    "%2Fs3%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature={signature}"
)


def test_presigned_urls_keep_their_secrets_out_of_rows_reports_and_logs(
    ray_cluster, tmp_path, checkpoint, capfd
):
    """A presigned URL and a user:password URI: fetched as given, written and printed with
    REDACTED in place of each secret; signed again, they keep their ids and are skipped."""
    write_video(tmp_path / "v.mp4", content="detailed")
    server = FileServer(tmp_path)
    with_password = server.url.replace("://", "://reader:pa55word@")
    manifest, output = tmp_path / "m.txt", tmp_path / "out"
    try:
        for signature, date in [("5ecret0ne", "20261130T000000Z"), ("5ecret2wo", "20261201T00")]:
            query = PRESIGNED.format(signature=signature, date=date)
            manifest.write_text(f"{server.url}/v.mp4?{query}\n{with_password}/gone.mp4?sig=s\n")
            http = ["manifest.allow_http=true", "manifest.http_allow_hosts=127.0.0.1"]
            assert label_run(manifest, output, checkpoint, *http) == 0
    finally:
        server.stop()
    rows = {r["status"]: r for r in ds.dataset(output).to_table().to_pylist()}
    assert rows["ok"]["uri"] == (
        f"{server.url}/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
        "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=REDACTED"
    )
    assert rows["error"]["uri"] == f"http://REDACTED@{server.url[7:]}/gone.mp4?sig=REDACTED"
    assert rows["error"]["error_code"] == "not_found"
    assert rows["error"]["error_message"].startswith(rows["error"]["uri"])
    [*_, report] = Output(str(output)).read_reports()
    assert (report.rows_written, report.skipped_committed) == (0, 2)  # the same ids
    written = [str(v) for row in rows.values() for v in row.values()]
    written += [p.read_text() for p in (output / "_runs").iterdir()]
    printed = capfd.readouterr()
    for secret in ("5ecret0ne", "5ecret2wo", "AKIAEXAMPLEKEY", "pa55word"):
        assert not [text for text in written if secret in text]
        assert secret not in printed.out + printed.err
