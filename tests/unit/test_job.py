"""The labelling job end to end on a real Ray cluster: manifest -> Parquet, CLI and exit codes."""

from __future__ import annotations

import pytest

from tests.helpers.jobs import run, write_csv


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"uri": "a.mp4", "video_id": "x"}, {"uri": "b.mkv", "video_id": "x"}],
            "duplicate video ids: video_id 'x' at line 3 (first at line 2)",
        ),
        ([{"path": "a.mp4"}], "no 'uri' column"),
        ([{"uri": "a.mp4", "label": "cat"}], "columns that the output also writes: label"),
    ],
)
def test_bad_manifest_exits_2_before_any_work(tmp_path, checkpoint, rows, message, capsys):
    manifest = write_csv(tmp_path / "m.csv", rows)
    assert run(manifest, tmp_path / "out", checkpoint) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_manifest_and_bad_config_exit_2(tmp_path, checkpoint, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("uri,video_id\n")
    assert run(empty, tmp_path / "out", checkpoint) == 2
    assert "has no rows" in capsys.readouterr().err

    manifest = write_csv(tmp_path / "m.csv", [{"uri": "a.mp4"}])
    assert run(manifest, tmp_path / "out", checkpoint, "--set", "sampling.num_frame=8") == 2
    assert "did you mean 'sampling.num_frames'" in capsys.readouterr().err
    assert run(manifest, tmp_path / "out", tmp_path / "no-model") == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
