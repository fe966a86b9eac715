"""`vivit-batch lock OUTPUT`: one line and an exit code saying whether a run could start now,
judged by the lock's own rules, on local disk and on a real S3 server (moto). No Ray."""

from __future__ import annotations

import time

import pytest

from tests.helpers.locks import STALE, Backend, another_holder, gone_holder_here
from vivit_batch.cli import main
from vivit_batch.errors import EXIT_LOCK_HELD, EXIT_OK, EXIT_USAGE
from vivit_batch.output.lock import ProcessIdentity


def lock_command(capsys, output: str, *options: str) -> tuple[int, str]:
    code = main(["lock", output, *options])
    captured = capsys.readouterr()
    return code, captured.out.strip() + captured.err.strip()


def s3_options(backend: Backend) -> list[str]:
    if backend.server is None:
        return []
    return ["--set", f"storage.endpoint_url={backend.server.endpoint_url}"]


def test_an_output_never_locked_is_free_and_looking_creates_nothing(backend, capsys):
    code, printed = lock_command(capsys, f"{backend.root}/new", *s3_options(backend))
    assert (code, printed) == (EXIT_OK, "free: no run has locked this output yet")
    output = backend.output("new")
    assert not output.filesystem.exists(output.root)


def test_a_released_lock_lets_a_run_start(backend, capsys):
    with backend.lock("done", "last-night"):
        pass
    code, printed = lock_command(capsys, f"{backend.root}/done", *s3_options(backend))
    assert code == EXIT_OK
    assert printed.startswith("released by run last-night") and "s ago" in printed


def test_a_live_run_holding_the_lock_is_reported_within_a_renewal(backend, capsys):
    with backend.lock("busy", "tonight"):
        started = time.monotonic()
        code, printed = lock_command(capsys, f"{backend.root}/busy", *s3_options(backend))
    assert code == EXIT_LOCK_HELD == 75
    me = ProcessIdentity.current()
    assert printed.startswith(f"held by run tonight on host {me.host} (pid {me.pid}), renewed")
    assert time.monotonic() - started < STALE  # it renews every STALE / 4


def test_a_lock_left_by_a_dead_run_elsewhere_is_stale_after_its_own_period(tmp_path, capsys):
    output = Backend("local", str(tmp_path)).output("crashed")
    output.lock("setup", STALE).store.create(another_holder(stale_after_s=0.5))
    started = time.monotonic()
    code, printed = lock_command(capsys, output.uri)
    assert time.monotonic() - started >= 0.5
    assert code == EXIT_OK
    assert printed.startswith("stale: run other-run on host elsewhere (pid 1) has not renewed")


def test_a_lock_of_an_ended_process_on_this_machine_is_stale_at_once(tmp_path, capsys):
    output = Backend("local", str(tmp_path)).output("ended")
    here = ProcessIdentity.current().pid_namespace
    output.lock("setup", STALE).store.create(gone_holder_here(here) | {"stale_after_s": 60})
    started = time.monotonic()
    code, printed = lock_command(capsys, output.uri)
    assert (code, printed.split(":")[0]) == (EXIT_OK, "stale")
    assert "has ended (same machine)" in printed and time.monotonic() - started < 10


def test_locking_none_in_the_config_is_said_plainly(tmp_path, capsys):
    code, printed = lock_command(capsys, str(tmp_path / "out"), "--set", "run.locking=none")
    assert (code, printed) == (
        EXIT_OK,
        "no lock: run.locking=none (nothing stops overlapping runs)",
    )


@pytest.mark.parametrize(
    "output, options, problem",
    [
        ("memory://bucket/out", [], "can lock local and s3:// outputs only"),
        ("nosuchscheme://bucket/out", [], "cannot read its lock (Protocol not known"),
        (
            "s3://bucket/out",
            ["storage.endpoint_url=http://127.0.0.1:9", "storage.max_attempts=1"],
            "cannot read its lock",
        ),
    ],
)
def test_an_output_that_cannot_be_read_is_exit_2_in_one_line(
    tmp_path, capsys, output, options, problem
):
    arguments = [item for option in options for item in ("--set", option)]
    code, printed = lock_command(capsys, output, *arguments)
    assert code == EXIT_USAGE
    assert problem in printed and len(printed.splitlines()) == 1
