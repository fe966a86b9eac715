"""The job with S3 manifests, videos and outputs, against a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest
from pyarrow.fs import FSSpecHandler, PyFileSystem

from tests.helpers.s3 import SECRET_KEY, FaultyProxy, tally
from vivit_batch.cli import main
from vivit_batch.testing.media import write_video

BUCKET = "media"


@pytest.fixture(scope="module")
def s3(tmp_path_factory, s3_server):
    server = s3_server
    fs = server.filesystem()
    fs.mkdir(BUCKET)
    local = tmp_path_factory.mktemp("s3-videos")
    for i in range(3):
        path = write_video(local / f"clip{i}.mp4", num_frames=24 + 4 * i, content="detailed")
        fs.put(str(path), f"{BUCKET}/in/clip{i}.mp4")
    fs.pipe(
        f"{BUCKET}/in/manifest.csv",
        b"uri,video_id,source\nclip0.mp4,c0,cam\nclip1.mp4,c1,cam\nclip2.mp4,c2,phone\n"
        b"gone.mp4,c3,cam\n",
    )
    return server


EXPLICIT_POOLS = ("decode_actors", "inference_actors", "inference_cpus")


def run(manifest, output, checkpoint, endpoint, *extra):
    return main(
        [
            "run",
            "--manifest",
            manifest,
            "--output",
            output,
            "--model",
            str(checkpoint),
            "--set",
            f"storage.endpoint_url={endpoint}",
            "--set",
            "run.max_error_fraction=0.5",
            *extra,
        ]
    )


def read_s3_output(server, prefix: str):
    filesystem = PyFileSystem(FSSpecHandler(server.filesystem()))
    return ds.dataset(f"{BUCKET}/{prefix}", filesystem=filesystem, format="parquet").to_table()


def test_manifest_videos_and_output_all_on_s3(ray_cluster, s3, checkpoint, capfd):
    output = f"s3://{BUCKET}/out-all"
    assert run(f"s3://{BUCKET}/in/manifest.csv", output, checkpoint, s3.endpoint_url) == 0
    rows = {r["video_id"]: r for r in read_s3_output(s3, "out-all").to_pylist()}
    assert set(rows) == {"c0", "c1", "c2", "c3"}
    assert rows["c0"]["uri"] == f"s3://{BUCKET}/in/clip0.mp4"
    assert rows["c2"]["status"] == "ok" and rows["c2"]["source"] == "phone"
    assert rows["c3"]["error_code"] == "not_found"
    assert f"{BUCKET}/in/gone.mp4" in rows["c3"]["error_message"]

    fs = s3.filesystem()
    [report_path] = fs.glob(f"{BUCKET}/out-all/_runs/*.json")
    report = fs.cat(report_path).decode()
    assert json.loads(report)["throughput"]["bytes_read"] > 0
    # The secret key is nowhere: not in the logs, the report or the rows.
    captured = capfd.readouterr()
    assert SECRET_KEY not in captured.out + captured.err
    assert SECRET_KEY not in report
    assert SECRET_KEY not in json.dumps(list(rows.values()), default=str)


def test_prefix_as_manifest_and_mixed_local_and_s3(ray_cluster, s3, checkpoint, tmp_path):
    output = tmp_path / "prefix"
    assert run(f"s3://{BUCKET}/in/", str(output), checkpoint, s3.endpoint_url) == 0
    table = ds.dataset(output).to_table()
    assert sorted(table.column("uri").to_pylist()) == [
        f"s3://{BUCKET}/in/clip{i}.mp4" for i in range(3)
    ]

    local_video = write_video(tmp_path / "local.mp4", num_frames=20, content="detailed")
    manifest = tmp_path / "mixed.txt"
    manifest.write_text(f"{local_video}\ns3://{BUCKET}/in/clip1.mp4\n")
    assert run(str(manifest), str(tmp_path / "mixed"), checkpoint, s3.endpoint_url) == 0
    mixed = ds.dataset(tmp_path / "mixed").to_table().to_pylist()
    assert {r["status"] for r in mixed} == {"ok"} and len(mixed) == 2


def test_forbidden_object_is_an_error_row_naming_bucket_and_key(
    ray_cluster, s3, checkpoint, tmp_path
):
    proxy = FaultyProxy(s3.port, forbidden=("clip2.mp4",))
    try:
        output = tmp_path / "forbidden"
        assert (
            run(f"s3://{BUCKET}/in/manifest.csv", str(output), checkpoint, proxy.endpoint_url) == 0
        )
    finally:
        proxy.stop()
    rows = {r["video_id"]: r for r in ds.dataset(output).to_table().to_pylist()}
    assert rows["c2"]["error_code"] == "permission_denied"
    assert f"s3://{BUCKET}/in/clip2.mp4" in rows["c2"]["error_message"]
    assert rows["c0"]["status"] == "ok"


def test_transient_failures_are_retried_and_lose_nothing(ray_cluster, s3, checkpoint, tmp_path):
    clean = tmp_path / "clean"
    assert run(f"s3://{BUCKET}/in/manifest.csv", str(clean), checkpoint, s3.endpoint_url) == 0
    proxy = FaultyProxy(s3.port, every=4)
    try:
        output = f"s3://{BUCKET}/out-faulty"
        assert run(f"s3://{BUCKET}/in/manifest.csv", output, checkpoint, proxy.endpoint_url) == 0
    finally:
        proxy.stop()
    assert proxy.failures >= 5
    expected = {
        r["video_id"]: (r["status"], r["label"], r["error_code"])
        for r in ds.dataset(clean).to_table().to_pylist()
    }
    got = {
        r["video_id"]: (r["status"], r["label"], r["error_code"])
        for r in read_s3_output(s3, "out-faulty").to_pylist()
    }
    assert got == expected


def test_a_replaced_object_is_relabelled_with_refresh_changed(ray_cluster, s3, checkpoint):
    """A prefix is listed once per run, and its listing gives each video's size, ETag and
    modification time: no HEAD per video for its version (requests counted at a proxy). The
    pools are set, so that no cost measurement reads the first videos too."""
    fs = s3.filesystem()
    pools = [f"--set=resources.{key}=1" for key in EXPLICIT_POOLS]
    fs.copy(f"{BUCKET}/in/clip0.mp4", f"{BUCKET}/changing/x.mp4")
    fs.copy(f"{BUCKET}/in/clip1.mp4", f"{BUCKET}/changing/y.mp4")
    manifest = f"s3://{BUCKET}/changing/"
    output = f"s3://{BUCKET}/out-refresh"
    proxy = FaultyProxy(s3.port)  # no faults: it records the requests
    try:
        assert run(manifest, output, checkpoint, proxy.endpoint_url, *pools) == 0
        first = tally(proxy.requests, f"{BUCKET}/changing/")
        before = {r["uri"]: r for r in read_s3_output(s3, "out-refresh").to_pylist()}
        x = f"s3://{BUCKET}/changing/x.mp4"
        assert before[x]["source_etag"] == fs.info(f"{BUCKET}/changing/x.mp4")["ETag"]
        assert before[x]["source_size"] == fs.size(f"{BUCKET}/changing/x.mp4")

        fs.copy(f"{BUCKET}/in/clip2.mp4", f"{BUCKET}/changing/x.mp4")  # a new upload, same key
        assert run(manifest, output, checkpoint, s3.endpoint_url) == 0  # not asked: nothing done
        unchanged = {r["uri"]: r["run_id"] for r in read_s3_output(s3, "out-refresh").to_pylist()}
        assert unchanged == {uri: row["run_id"] for uri, row in before.items()}
        proxy.requests.clear()
        refresh = [*pools, "--refresh-changed"]
        assert run(manifest, output, checkpoint, proxy.endpoint_url, *refresh) == 0
        refreshed = tally(proxy.requests, f"{BUCKET}/changing/")
    finally:
        proxy.stop()
    after = {r["uri"]: r for r in read_s3_output(s3, "out-refresh").to_pylist()}
    assert len(after) == 2
    assert after[x]["run_id"] != before[x]["run_id"]
    assert after[x]["source_etag"] == fs.info(f"{BUCKET}/changing/x.mp4")["ETag"]
    assert after[x]["num_frames"] != before[x]["num_frames"]
    y = f"s3://{BUCKET}/changing/y.mp4"
    assert after[y]["run_id"] == before[y]["run_id"]
    # What is left per video decoded: its open (s3fs asks the size and ETag for its If-Match
    # reads) and its reads. Before the listing was kept: 2 LIST pages and 2 HEADs per video in
    # the first run, 4 LIST pages and a HEAD per video with --refresh-changed.
    each_once = {f"changing/{name}": 1 for name in ("x.mp4", "y.mp4")}
    assert first["LIST", "changing/"] == 1
    assert {key: n for (kind, key), n in first.items() if kind == "HEAD"} == each_once
    assert refreshed["LIST", "changing/"] == 1
    assert {key: n for (kind, key), n in refreshed.items() if kind == "HEAD"} == {
        "changing/x.mp4": 1
    }
