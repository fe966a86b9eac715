"""Which committed videos a run skips, decided on Ray: the committed rows read by Ray Data from
an output written through the project's own writer (no decoding), hash-joined with the
manifest's rows over several partitions; and the rows to label in parts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from tests.helpers.jobs import write_csv
from vivit_batch.config import load_config
from vivit_batch.job import committed_join, prepare_job
from vivit_batch.job.pipeline import arrow_tables, manifest_with_ids, parts_to_label
from vivit_batch.job.run import choose_work
from vivit_batch.output import Output, Unlocked
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.outputs import Generated, write_generated_output

COMMITTED = range(30)
"""video-0000000 .. video-0000029, every fifth an error row (4, 9, ...), 8 rows a file"""
LISTED = [f"video-{i:07d}" for i in range(10, 30)] + [f"new-{i}" for i in range(5)]
ERRORS_LISTED = ["video-0000014", "video-0000019", "video-0000024", "video-0000029"]
PART = 4
"""run.videos_per_part"""


@pytest.fixture()
def labelled(tmp_path, monkeypatch):
    """A job over `LISTED` and its output holding `COMMITTED`; a partition per 10 rows."""
    make_checkpoint(tmp_path / "ckpt")
    rows = [{"video_id": v, "uri": f"/videos/{v}.mp4"} for v in LISTED]
    manifest = write_csv(tmp_path / "manifest.csv", rows)

    def job(*settings: str):
        return prepare_job(
            load_config(
                None,
                settings,
                manifest_uri=str(manifest),
                output_uri=str(tmp_path / "out"),
                model_source=str(tmp_path / "ckpt"),
            )
        )

    identity = job().identity  # before the output exists
    spec = Generated(("cat",), len(COMMITTED), hidden=8, weights_sha256="0" * 64, errors_every=5)
    output = write_generated_output(str(tmp_path / "out"), spec, rows_per_file=8)
    output.write_identity(identity, Unlocked())
    monkeypatch.setattr(committed_join, "ROWS_PER_PARTITION", 10)
    return job, output


def holder_of(output: Output, work, video_id: str) -> str:
    [(path, _)] = work.relabelled.holding(pa.array([video_id])).items()
    assert video_id in pq.read_table(path, columns=["video_id"])["video_id"].to_pylist()
    return path


@pytest.mark.parametrize(
    ("mode", "relabelled", "errors_kept"),
    [
        ("incremental", [], 4),
        ("rerun_errors", ERRORS_LISTED, 0),
        ("force", LISTED[:20], 0),
    ],
)
def test_the_join_decides_over_several_partitions(
    ray_cluster, labelled, mode, relabelled, errors_kept
):
    """Also: the rows to label come in parts of `run.videos_per_part`."""
    job, output = labelled
    job = job(f"run.mode={mode}", f"run.videos_per_part={PART}")
    assert committed_join.join_partitions(job.manifest.rows + len(COMMITTED)) == 6
    driver_bytes = ray.data.DataContext.get_current().shuffle_input_batch_bytes
    work = choose_work(job, output)
    assert work.rows is not None
    assert work.rows.context.shuffle_input_batch_bytes == committed_join.SHUFFLE_BATCH_BYTES
    assert ray.data.DataContext.get_current().shuffle_input_batch_bytes == driver_bytes
    assert (work.to_label, work.errors_kept) == (5 + len(relabelled), errors_kept)
    assert sorted(work.relabelled.ids.to_pylist()) == relabelled
    assert len({holder_of(output, work, v) for v in relabelled}) == min(len(relabelled), 3)
    parts = [pa.concat_tables(arrow_tables(part)) for part in parts_to_label(job, work)]
    assert [part.num_rows for part in parts] == in_parts(work.to_label)
    rows = pa.concat_tables(parts)
    assert sorted(rows["video_id"].to_pylist()) == sorted(LISTED[20:] + relabelled)
    assert rows.column_names == ["video_id", "uri"]


def in_parts(videos: int) -> list[int]:
    return [PART] * (videos // PART) + [videos % PART] * bool(videos % PART)


def test_a_fresh_output_gets_the_manifest_in_parts(ray_cluster, tmp_path):
    """Split from the manifest's rows with ids, held in the object store; streamed from the
    read when they fit in one part."""
    make_checkpoint(tmp_path / "ckpt")
    manifest = write_csv(tmp_path / "m.csv", [{"uri": f"/videos/{i}.mp4"} for i in range(11)])

    def job(videos_per_part: int):
        return prepare_job(
            load_config(
                None,
                [f"run.videos_per_part={videos_per_part}"],
                manifest_uri=str(manifest),
                output_uri=str(tmp_path / "out"),
                model_source=str(tmp_path / "ckpt"),
            )
        )

    def parts(job) -> list[pa.Table]:
        work = choose_work(job, Output(str(tmp_path / "out")))
        return [pa.concat_tables(arrow_tables(part)) for part in parts_to_label(job, work)]

    whole = pa.concat_tables(arrow_tables(manifest_with_ids(job(11)))).sort_by("video_id")
    assert whole.num_rows == 11
    [streamed] = parts(job(11))
    assert streamed.sort_by("video_id").equals(whole)
    split = parts(job(PART))
    assert [part.num_rows for part in split] == in_parts(11)
    assert pa.concat_tables(split).sort_by("video_id").equals(whole)


def test_an_output_without_rows_is_not_joined(ray_cluster, tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    manifest = write_csv(tmp_path / "m.csv", [{"uri": "/videos/a.mp4"}])
    job = prepare_job(
        load_config(
            None,
            manifest_uri=str(manifest),
            output_uri=str(tmp_path / "out"),
            model_source=str(tmp_path / "ckpt"),
        )
    )
    work = choose_work(job, Output(str(tmp_path / "out")))
    assert (work.rows, work.to_label, len(work.relabelled)) == (None, 1, 0)
