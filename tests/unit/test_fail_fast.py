"""Mistakes cost seconds: every check that needs no cluster runs before Ray starts, and each
failure is one logged line (time, level, what is wrong and the fix) with exit code 2.

The cases run in one fresh Python process (`CASES_SCRIPT`), which reports for each its exit
code, what it wrote to stderr, its seconds, and whether Ray had been started by then."""

from __future__ import annotations

import json
import logging
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.logs import LOG_LINE
from vivit_batch import __version__
from vivit_batch.errors import CheckpointError, DeviceError
from vivit_batch.job.pipeline import stage_errors
from vivit_batch.logs import progress_line, setup_logging
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

CASES_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys, time
    import ray
    from vivit_batch.cli import main

    results = {}
    for name, argv in json.loads(sys.argv[1]).items():
        err, out = io.StringIO(), io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exit:
                code = exit.code
        results[name] = {
            "code": code,
            "stderr": err.getvalue(),
            "stdout": out.getvalue(),
            "seconds": time.monotonic() - started,
            "ray_started": ray.is_initialized(),
        }
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fail-fast")
    make_checkpoint(directory / "ckpt")
    write_video(directory / "a.mp4", num_frames=8, width=32, height=32)
    (directory / "good.csv").write_text(f"uri,truth\n{directory / 'a.mp4'},cat\n")
    (directory / "clash.csv").write_text(f"uri,label\n{directory / 'a.mp4'},cat\n")
    (directory / "broken.csv").write_text('uri,x\n"a.mp4,1\nb.mp4,2,3\n')
    (directory / "a-file").write_text("not a directory\n")
    return directory


def run_cases(workspace: Path, cases: dict[str, list[str]], *env: str) -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-c", CASES_SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workspace,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def job(workspace: Path, manifest="good.csv", output: str | None = None, model: str | None = None):
    output = output or str(workspace / "out")
    model = model or str(workspace / "ckpt")
    return ["run", "--manifest", str(workspace / manifest), "--output", output, "--model", model]


@pytest.fixture(scope="module")
def results(workspace, s3_server) -> dict[str, dict]:
    w = workspace
    s3 = ["--set", f"storage.endpoint_url={s3_server.endpoint_url}"]
    cases = {
        "missing manifest": job(w, manifest="nope.csv"),
        "manifest column clash": job(w, manifest="clash.csv"),
        "unparsable manifest": job(w, manifest="broken.csv"),
        "missing model": job(w, model=str(w / "no-model")),
        "output under a file": job(w, output=str(w / "a-file/out")),
        "output bucket missing": [*job(w, output="s3://no-such-bucket/out"), *s3],
        "unknown key": [*job(w), "--set", "sampling.num_frame=8"],
        "force with rerun-errors": [*job(w), "--force", "--rerun-errors"],
        "force with refresh-changed": [*job(w), "--force", "--refresh-changed"],
        "json log format": [*job(w, manifest="nope.csv"), "--log-format", "json"],
        "version": ["--version"],
    }
    return run_cases(w, cases)


FAILURES = {
    "missing manifest": "nope.csv does not exist: check --manifest",
    "manifest column clash": "manifest.column_prefix=manifest_ (label becomes manifest_label)",
    "unparsable manifest": "is not valid CSV",
    "missing model": "no-model: no such file or directory",
    "output under a file": "a-file is a file, not a directory",
    "output bucket missing": "no-such-bucket/out: its bucket or location does not exist",
    "unknown key": "did you mean 'sampling.num_frames'",
    "force with rerun-errors": "argument --rerun-errors: not allowed with argument --force",
    "force with refresh-changed": "--force already relabels every video",
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_mistake_is_one_logged_line_and_exit_2_before_ray(results, case):
    result = results[case]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result["stderr"]
    assert len(lines) == 1 and LOG_LINE.match(lines[0]) and " ERROR " in lines[0], lines
    assert FAILURES[case] in lines[0]
    assert "Traceback" not in result["stderr"] and not result["stdout"]
    assert not result["ray_started"]
    assert result["seconds"] < 20  # the model is a directory here: nothing to download


def test_no_case_started_ray_or_wrote_an_output(results, workspace):
    assert not any(r["ray_started"] for r in results.values())
    assert not (workspace / "out").exists()


def test_json_log_lines_carry_time_level_and_message(results):
    [line] = results["json log format"]["stderr"].splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and "does not exist" in entry["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])


def test_version_prints_the_package_version(results):
    assert results["version"]["code"] == 0
    assert results["version"]["stdout"].strip() == f"vivit-batch {__version__}"


def test_progress_line_counts_rate_eta_and_errors():
    line, fields = progress_line(1200, videos=120, committed=96, clips=480, errors=3, elapsed_s=60)
    assert line == (
        "progress: 120/1200 videos labelled (10.0%), 96 committed, 8.0 clips/s, ETA 9m 00s, "
        "3 errors"
    )
    assert fields["progress"]["eta_seconds"] == 540.0
    assert fields["progress"]["videos_committed"] == 96
    line, fields = progress_line(10, videos=0, committed=0, clips=0, errors=0, elapsed_s=5)
    assert line == (
        "progress: 0/10 videos labelled (0.0%), 0 committed, 0.0 clips/s, ETA unknown, 0 errors"
    )
    assert fields["progress"]["eta_seconds"] is None


def test_progress_line_says_when_the_time_limit_comes_before_the_end():
    line, fields = progress_line(1200, 120, 96, 480, 0, elapsed_s=60, time_left_s=130)
    assert "ETA 9m 00s (the time limit stops it in 2m 10s), 0 errors" in line
    assert fields["progress"]["time_limit_in_seconds"] == 130
    line, fields = progress_line(1200, 120, 96, 480, 0, elapsed_s=60, time_left_s=600)
    assert "ETA 9m 00s, 0 errors" in line and fields["progress"]["time_limit_in_seconds"] == 600
    assert progress_line(10, 0, 0, 0, 0, elapsed_s=5, time_left_s=30)[0].endswith(
        "ETA unknown (the time limit stops it in 30s), 0 errors"
    )


def test_a_stage_refusal_reaches_the_command_in_its_own_words():
    """What Ray does to a stage's refusal on its way to the driver: Ray Data appends its retry
    advice to the error's text, and the error is pickled; the run raises it as raised."""
    refusal = DeviceError("planned with a GPU, but torch cannot use CUDA there")
    refusal.args = (f"{refusal.args[0]}\nTo change retry attempts, configure DataContext",)
    with pytest.raises(DeviceError) as raised, stage_errors():
        raise pickle.loads(pickle.dumps(refusal))
    assert str(raised.value) == "planned with a GPU, but torch cannot use CUDA there"


def test_ray_datas_account_of_a_refusal_is_dropped_and_of_other_errors_kept(capsys):
    ray_data = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    setup_logging()
    for error in (CheckpointError("a refusal"), RuntimeError("a bug")):
        ray_data.error("An exception was raised from a task of operator", exc_info=error)
    logged = capsys.readouterr().err
    assert "a refusal" not in logged
    assert "RuntimeError: a bug" in logged and logged.count("An exception was raised") == 1
