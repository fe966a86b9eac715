"""`vivit-batch relabel` end to end: relabelling with a head and `run --model HEAD` agree, and the
run joins the relabelled output; a relabel stopped midway (by a signal, or killed) is refused by
`run` and `compact` and finished by the next relabel; `run.time_limit_s` stops one too."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from tests.helpers.relabelling import CLASSES, by_video, generate, relabel
from vivit_batch.cli import main
from vivit_batch.fingerprint import fingerprint
from vivit_batch.output import RELABELLING
from vivit_batch.report import output_stats, summary_text


def test_relabel_and_run_with_the_head_agree_and_the_run_joins_the_relabelled_output(
    ray_cluster, motion_output, motion_head, tmp_path
):
    """One view per video: the head's labels and scores from the stored embeddings are those of
    labelling the videos again with `run --model HEAD`, which the relabelled output accepts."""
    output = shutil.copytree(motion_output.output, tmp_path / "out")
    assert relabel(output, motion_head) == 0
    relabelled = by_video(ds.dataset(output).to_table()).to_pandas().set_index("video_id")
    with open(motion_output.manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))[::4]  # 28 of the 112 videos, every motion
    manifest = tmp_path / "some.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = [f"--set={setting}" for setting in motion_output.settings]
    arguments = ["--manifest", str(manifest), "--output", str(output), "--model", str(motion_head)]
    assert main(["run", *arguments, *settings, "--force"]) == 0
    rerun = by_video(ds.dataset(output).to_table()).to_pandas().set_index("video_id")
    assert len(rerun) == len(relabelled)  # one row per video still
    head_sha256 = fingerprint((motion_head / "model.safetensors",))
    labelled = rerun[rerun.model_sha256 == head_sha256]
    assert sorted(labelled.index) == sorted(row["video_id"] for row in rows)
    expected = relabelled.loc[labelled.index]
    assert labelled.label.tolist() == expected.label.tolist()
    assert [list(ids) for ids in labelled.topk_ids] == [list(ids) for ids in expected.topk_ids]
    np.testing.assert_allclose(
        np.stack(labelled.topk_scores), np.stack(expected.topk_scores), atol=1e-4
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_relabel_stopped_midway_blocks_run_and_compact_until_the_next_relabel_finishes_it(
    tiny, tmp_path, capsys, stop
):
    directory, sha256 = tiny
    head = directory / "head"
    output = generate(tmp_path / "out", sha256, rows_per_file=2, videos=200)
    before = {path: path.read_bytes() for path in output.rglob("*.parquet")}
    process = stopped_midway(output, head, stop)

    archived = sorted((output / "_versions").rglob("*.parquet.archived"))
    changed = sorted(path for path, data in before.items() if path.read_bytes() != data)
    assert 0 < len(changed) < len(before)
    extra = len(archived) - len(changed)  # kept but not replaced: only where it was killed
    assert extra == 0 if stop == signal.SIGTERM else extra in (0, 1)
    identity = json.loads((output / "_dataset.json").read_text())
    assert identity[RELABELLING]["model"] == str(head.resolve())
    reports = [json.loads(path.read_text()) for path in (output / "_runs").glob("*.json")]
    if stop == signal.SIGTERM:
        assert process.returncode == 128 + stop
        assert "relabel: stopped by SIGTERM" in process.stderr
        assert f"after relabelling {len(changed)} of {len(before)} files" in process.stderr
        [report] = [r for r in reports if r["mode"] == "relabel"]
        assert report["stopped_by"] == "SIGTERM" and len(report["files"]) == len(changed)
    else:
        assert process.returncode == -stop
        assert all(r["mode"] != "relabel" for r in reports)

    # Nothing adds rows to, or merges, files of two taxonomies; the readers say so.
    files = {path: path.read_bytes() for path in output.rglob("*.parquet")}
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"uri\n{tmp_path / 'new.mp4'}\n")
    arguments = ["--manifest", str(manifest), "--output", str(output)]
    assert main(["run", *arguments, "--model", str(directory / "base")]) == 2
    assert main(["compact", str(output)]) == 2
    refusals = capsys.readouterr().err
    finish = f"`vivit-batch relabel {output} --model {head.resolve()}`"
    assert refusals.count("stopped midway") == 2 and refusals.count(finish) == 2
    assert "start this run again" in refusals and "start this compaction again" in refusals
    assert {path: path.read_bytes() for path in output.rglob("*.parquet")} == files
    assert f"  warning: output {output}: the relabel with {head.resolve()}" in summary_text(
        output_stats(str(output))
    )

    assert relabel(output, head) == 0
    identity = json.loads((output / "_dataset.json").read_text())
    assert RELABELLING not in identity and identity["model_source"] == str(head.resolve())
    rows = ds.dataset(output, format="parquet").to_table()
    assert rows.num_rows == 200 and len(pc.unique(rows["video_id"])) == 200
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    assert set(ok["label"].to_pylist()) <= set(CLASSES)
    [version] = (output / "_versions").iterdir()  # the version before the first relabel, whole
    kept = {path.relative_to(version): path.read_bytes() for path in version.rglob("*.archived")}
    assert kept == {
        Path(f"{path.relative_to(output)}.archived"): data for path, data in before.items()
    }
    assert "stopped midway" not in summary_text(output_stats(str(output)))


def test_a_relabel_stops_at_its_time_limit_as_on_sigterm(tiny, tmp_path):
    """`run.time_limit_s` stops a relabel as SIGTERM does (its report marked, exit 124); the
    relabel is frozen past its limit once it has replaced a file, so that the limit comes
    midway whatever the machine's speed."""
    directory, sha256 = tiny
    output = generate(tmp_path / "out", sha256, rows_per_file=2, videos=40)
    limit_s = 3
    process = stopped_midway(output, directory / "head", None, limit_s)
    assert process.returncode == 124, process.stderr
    assert f"run.time_limit_s={limit_s}s: the relabel stops at " in process.stderr
    assert "relabel: stopped by run.time_limit_s" in process.stderr
    [report] = [json.loads(path.read_text()) for path in (output / "_runs").glob("*.json")]
    assert report["mode"] == "relabel" and report["stopped_by"] == "run.time_limit_s"
    assert 0 < len(report["files"]) < 20
    assert RELABELLING in json.loads((output / "_dataset.json").read_text())


def stopped_midway(
    output: Path, head: Path, stop: signal.Signals | None, time_limit_s: float | None = None
) -> subprocess.CompletedProcess:
    """`vivit-batch relabel` in a process of its own, frozen (SIGSTOP) once it has replaced a
    file (it keeps the next one's old version first), then sent `stop` (None: left frozen until
    its `time_limit_s` has passed) and let go on."""
    arguments = [str(output), "--model", str(head)]
    if time_limit_s is not None:
        arguments += ["--set", f"run.time_limit_s={time_limit_s}"]
    command = [sys.executable, "-m", "vivit_batch.cli", "relabel", *arguments]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while len(list((output / "_versions").rglob("*.parquet.archived"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGSTOP)
    if stop is None:  # its timer started before its first file: it has passed by then
        time.sleep(time_limit_s or 0)
    else:
        process.send_signal(stop)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, None, stderr)
