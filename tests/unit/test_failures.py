"""Failures that are not the user's input: where the machine, a store or the cluster failed,
one logged line (what failed, on which file, what to do) and exit code 1, the traceback only
with -v and in JSON logs; anything else is called a bug, with its traceback. A run that fails
after committing files writes its report marked `failed`.

(The run whose output disk fills mid-run: tests/e2e/test_crash.py.)"""

from __future__ import annotations

import errno
import json
import logging
from datetime import datetime, timezone

import pytest
import ray.exceptions
import torch
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.helpers.outputs import HIDDEN, rows_of
from vivit_batch.cli import log_failure, main
from vivit_batch.errors import EXIT_FAILED, from_environment
from vivit_batch.job.run import finish_failed
from vivit_batch.output import Output, RunReport, Unlocked
from vivit_batch.output.dataset import write_synced
from vivit_batch.output.replacing import Relabelled
from vivit_batch.output.schema import output_schema
from vivit_batch.output.sink import FileWriter
from vivit_batch.output.writer import RunWriter

FULL_DISK = "/dev/full"  # every write to it fails with ENOSPC


@pytest.fixture()
def empty_output(tmp_path) -> Output:
    output = Output(str(tmp_path / "out"))
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    return output


def test_a_full_disk_is_one_line_saying_what_to_do_and_exit_1(empty_output, capsys):
    assert main(["report", empty_output.uri, "--html", FULL_DISK]) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert " ERROR report: failed: OSError: [Errno 28] No space left on device" in line
    assert line.endswith("Free space there, then run the same command again")


def test_json_logs_carry_the_failure_and_its_traceback(empty_output, capsys):
    arguments = ["report", empty_output.uri, "--html", FULL_DISK, "--log-format", "json"]
    assert main(arguments) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "ERROR" and logged["error"]["type"] == "OSError"
    assert "No space left on device" in logged["error"]["message"]
    assert "Traceback (most recent call last)" in logged["traceback"]


def test_a_failed_write_names_its_file(tmp_path):
    with pytest.raises(OSError) as raised:
        write_synced(FULL_DISK, b"rows")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == FULL_DISK


def test_a_bug_is_said_to_be_one_with_its_traceback(caplog):
    try:
        {}["missing"]
    except KeyError as error:
        with caplog.at_level(logging.ERROR, logger="vivit_batch"):
            log_failure("run", error, with_traceback=False)
    [record] = caplog.records
    assert "run: failed on a bug in vivit-batch (KeyError: 'missing')" in record.getMessage()
    assert record.exc_info is not None


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")


def ray_task_error(cause: Exception) -> ray.exceptions.RayTaskError:
    return ray.exceptions.RayTaskError("label", "Traceback ...", cause)


@pytest.mark.parametrize(
    "error, environment",
    [
        (OSError(errno.EIO, "Input/output error"), True),
        (MemoryError(), True),
        (client_error("SlowDown"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (ray.exceptions.ActorDiedError(), True),
        (ray_task_error(ConnectionResetError()), True),
        (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), True),
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (ray_task_error(TypeError("a bug in a stage")), False),
        (ValueError("a bug"), False),
    ],
)
def test_the_environments_failures_are_told_from_bugs(error, environment):
    assert from_environment(error) == environment


def test_a_run_that_fails_after_a_commit_reports_what_it_left(tmp_path):
    output = Output(str(tmp_path / "out"))
    started = datetime(2026, 12, 8, tzinfo=timezone.utc)
    files = FileWriter(output, "night1", output_schema(HIDDEN), rows_per_file=10)
    identity = {"weights_sha256": "ab" * 32}
    writer = RunWriter(output, Unlocked("night1"), files, identity, Relabelled.none())
    [staged] = files(rows_of("night1", ["a", "b"], started)).to_pylist()
    writer.commit(staged)
    report = RunReport(
        run_id="night1", manifest_rows=5, videos_written=2, files=list(writer.stats.files)
    )
    finish_failed(report, OSError(errno.EIO, "Input/output error", "/out/part-3"), writer)
    [written] = output.read_reports()
    assert written.failed == "OSError: [Errno 5] Input/output error: '/out/part-3'"
    assert written.warnings == [
        "failed after committing 2 videos' rows; the other 3 videos to label were not labelled"
    ]
