"""A driver killed with SIGKILL mid-run leaves a readable output, and the rerun completes it with
exactly one row per manifest entry, keeping the rows committed before the crash; one stopped by
SIGTERM commits the rows it labelled and says what it committed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow.dataset as ds
import pytest

from tests.helpers.http import StallingServer
from tests.helpers.locks import FROZEN_COMMITTER, frozen_process, record_of
from vivit_batch.errors import EXIT_USAGE
from vivit_batch.output import Output
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

VIDEOS = 8


@dataclass
class Job:
    directory: Path
    output: str
    s3: object | None = None

    def filesystem(self):
        if self.s3 is None:
            return fsspec.filesystem("file"), self.output
        return self.s3.filesystem(), self.output.removeprefix("s3://")

    def committed(self) -> list[dict]:
        """The output as a reader sees it; fails if a file is partial or a row is doubled."""
        filesystem, path = self.filesystem()
        if not filesystem.exists(path):
            return []
        rows = ds.dataset(path, filesystem=filesystem, format="parquet").to_table().to_pylist()
        ids = [r["video_id"] for r in rows]
        assert len(ids) == len(set(ids))
        return rows

    def files(self) -> set[str]:
        filesystem, path = self.filesystem()
        return set(filesystem.glob(f"{path}/*.parquet"))

    def lock_holder(self) -> str | None:
        return self.lock_record().get("run_id")

    def lock_state(self) -> str | None:
        return self.lock_record().get("state")

    def lock_record(self) -> dict:
        filesystem, path = self.filesystem()
        try:
            return json.loads(filesystem.cat(f"{path}/_lock.json"))
        except FileNotFoundError:
            return {}


@pytest.fixture()
def job(request, tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    for i in range(VIDEOS):
        write_video(tmp_path / f"v{i}.mp4", num_frames=20 + i, content="detailed")
    (tmp_path / "manifest.txt").write_text("".join(f"v{i}.mp4\n" for i in range(VIDEOS)))
    if request.param == "local":  # parametrised indirectly: "local" or "s3"
        return Job(tmp_path, str(tmp_path / "out"))
    server = request.getfixturevalue("s3_server")
    bucket = f"crash-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    server.filesystem().mkdir(bucket)
    return Job(tmp_path, f"s3://{bucket}/out", server)


def start_run(
    job: Job,
    ray_cluster,
    manifest: str = "manifest.txt",
    extra: list[str] = (),
    log: Path | None = None,
) -> subprocess.Popen:
    return ray_cluster.start_run(*run_arguments(job, manifest, extra), log=log)


def run_arguments(job: Job, manifest: str, extra: list[str]) -> list[str]:
    arguments = [
        "--manifest",
        str(job.directory / manifest),
        "--output",
        job.output,
        "--model",
        str(job.directory / "ckpt"),
        "--set",
        "resources.batch_size=1",
        "--set",
        "resources.decode_batch_size=1",
        "--set",
        "output.rows_per_file=1",
    ]
    if job.s3 is not None:
        arguments += ["--set", f"storage.endpoint_url={job.s3.endpoint_url}"]
    return [*arguments, *extra]


def write_long_manifest(job: Job, copies: int) -> list[str]:
    """`long.csv`: each video `copies` times under different ids, so that a run has work left
    well after its first commits."""
    rows = [f"v{i}.mp4,copy{copy}-v{i}" for copy in range(copies) for i in range(VIDEOS)]
    (job.directory / "long.csv").write_text("uri,video_id\n" + "\n".join(rows) + "\n")
    return rows


@pytest.fixture()
def stalling():
    """An http source that sends a few bytes and then nothing, until the test ends."""
    server = StallingServer(b"\0" * 10_000)
    yield server
    server.stop()


def never_ending_manifest(job: Job, stalling: StallingServer) -> list[str]:
    """`never-ending.txt`: the videos and the `stalling` source. One decode actor waits on it
    (up to decode.timeout_s: its stall timeout is longer), so a run of it is mid-run for as long
    as a test needs; the returned settings let it reach the source and give it a second decode
    actor."""
    manifest = (job.directory / "manifest.txt").read_text()
    (job.directory / "never-ending.txt").write_text(f"{manifest}{stalling.url}\n")
    settings = [
        "resources.decode_actors=2",
        "manifest.allow_http=true",
        f"manifest.http_allow_hosts={stalling.host}",
        "decode.stall_timeout_s=600",
    ]
    return [argument for setting in settings for argument in ("--set", setting)]


def wait_for_files(job: Job, count: int, existing: set[str] = frozenset(), timeout=300) -> None:
    """Until `count` files other than `existing` are committed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(job.files() - existing) >= count:
            return
        time.sleep(0.2)  # each look lists the output: on S3 a request the server answers
    raise AssertionError(f"no {count} committed files within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_run_killed_at_start_up_leaves_a_lock_the_rerun_takes_at_once(ray_cluster, job):
    process = start_run(job, ray_cluster)
    time.sleep(4)  # starting up: model loading, manifest scan
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = start_run(job, ray_cluster, extra=["--set", "run.lock_wait_s=60"])
    assert rerun.wait(timeout=600) == 0  # the holder's pid is gone: no stale period to wait
    assert len(job.committed()) == VIDEOS


@pytest.mark.slow
@pytest.mark.parametrize("job, kill_after", [("local", 3), ("s3", 2)], indirect=["job"])
def test_a_relabelling_run_killed_midway_always_shows_one_row_per_video(
    ray_cluster, job, kill_after, stalling
):
    """A `--force` run over a complete output replaces each video's row in place: a reader
    looking all the while sees every video exactly once, old row or new. Killed (SIGKILL)
    mid-way, it leaves the videos it did not relabel with their previous rows; a plain rerun
    then has nothing to do and exits 0."""
    assert start_run(job, ray_cluster).wait(timeout=600) == 0
    first = {r["video_id"]: r["run_id"] for r in job.committed()}
    never_ending = never_ending_manifest(job, stalling)
    # A short lease: the rerun waits out the killed holder's requests (on S3: half of this)
    lease = ["--set", "run.lock_stale_after_s=10"]
    extra = ["--force", *never_ending, *lease]
    relabel = start_run(job, ray_cluster, "never-ending.txt", extra=extra)
    reads = relabelled = 0
    while relabelled < kill_after:
        assert relabel.poll() is None, "the relabelling run ended"
        view = read_once(job)
        if view is not None:
            assert {r["video_id"] for r in view} == first.keys()
            relabelled = sum(r["run_id"] != first[r["video_id"]] for r in view)
            reads += 1
    relabel.send_signal(signal.SIGKILL)
    relabel.wait()
    before = {r["video_id"]: r for r in job.committed()}
    assert before.keys() == first.keys()
    assert len({r["run_id"] for r in before.values()} - set(first.values())) == 1
    assert reads > 1

    rerun = start_run(job, ray_cluster, extra=["--set", "output.rows_per_file=8"])
    assert rerun.wait(timeout=600) == 0
    after = {r["video_id"]: r for r in job.committed()}
    assert after == before


def read_once(job: Job) -> list[dict] | None:
    """One reader's look at the output (`committed` asserts that no id appears twice), or None
    if it could not read it through. Readers pause between looks: one that never paused would
    take a core (with the S3 server's share) from the run it watches."""
    time.sleep(0.1 if job.s3 is None else 0.3)
    try:
        return job.committed()
    except OSError:
        # A file replaced between the reader's listing and its read: s3fs refuses to read
        # on when the ETag changed. The reader retries; what it read is never wrong.
        return None


def newest_inference_actor_pids(api_address: str) -> list[int]:
    """Live inference actors of the newest job (actors of killed drivers may linger a while)."""
    from ray.util.state import list_actors

    actors = [
        a
        for a in list_actors(address=api_address, detail=True, limit=1000)
        if "InferenceStage" in a.class_name and a.state == "ALIVE"
    ]
    if not actors:
        return []
    newest = max(int.from_bytes(bytes.fromhex(a.job_id), "little") for a in actors)
    return [a.pid for a in actors if int.from_bytes(bytes.fromhex(a.job_id), "little") == newest]


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_killed_inference_actor_is_replaced_and_nothing_is_lost(ray_cluster, job):
    rows = write_long_manifest(job, copies=4)
    process = start_run(job, ray_cluster, "long.csv")
    deadline = time.time() + 300
    while not (pids := newest_inference_actor_pids(ray_cluster.dashboard_url)):
        assert process.poll() is None and time.time() < deadline, "no inference actor seen"
        time.sleep(0.1)
    wait_for_files(job, 1)  # it is labelling now
    os.kill(pids[0], signal.SIGKILL)
    assert process.poll() is None, "the run ended before the kill: give it more work"
    assert process.wait(timeout=600) == 0
    committed = job.committed()
    assert len(committed) == len(rows)
    assert {r["status"] for r in committed} == {"ok"}


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local", "s3"], indirect=True)
def test_a_frozen_run_that_lost_its_lock_commits_nothing_more(ray_cluster, job, stalling):
    """The holder is stopped (SIGSTOP) past its stale period, another run takes the output
    over, then the holder resumes mid-run: it stops without committing, the other completes."""
    never_ending = never_ending_manifest(job, stalling)  # still mid-run whenever it is stopped
    log = job.directory / "frozen.log"
    frozen = start_run(
        job,
        ray_cluster,
        "never-ending.txt",
        extra=["--set", "run.run_id=frozen", "--set", "run.lock_stale_after_s=4", *never_ending],
        log=log,
    )
    wait_for_files(job, 2)
    stop_outside_a_commit(frozen, job)
    taker = None
    try:
        assert job.lock_state() == "held"
        taker_extra = ["--set", "run.run_id=taker", "--set", "output.rows_per_file=8"]
        taker = start_run(job, ray_cluster, extra=taker_extra)
        deadline = time.time() + 300
        while job.lock_holder() != "taker":
            assert time.time() < deadline and taker.poll() is None, "no takeover"
            time.sleep(0.1)
        committed_by_frozen = {f for f in job.files() if "part-frozen-" in f}
        frozen.send_signal(signal.SIGCONT)
        # at once: it does not wait out its blocked video (decode.timeout_s, 300 s)
        assert frozen.wait(timeout=120) == 1
        assert taker.wait(timeout=600) == 0
    finally:  # a stopped driver would hold its actors' CPUs from the tests that follow
        for process in (frozen, taker):
            if process and process.poll() is None:
                process.kill()
    assert {f for f in job.files() if "part-frozen-" in f} == committed_by_frozen
    assert len(job.committed()) == VIDEOS  # one row per video (committed() checks)
    assert "run frozen lost the lock" in log.read_text()
    assert "constructor arguments" not in log.read_text()  # Ray's notice (`NATIVE_NOTICES`)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_run_stopped_by_sigterm_commits_what_it_labelled(job, stalling):
    """`timeout 1h vivit-batch run` with a Ray of the command's own (a cron job on one machine),
    whose time runs out once videos are labelled and none committed (no file filled, no commit
    due): `timeout` signals the command and then its whole process group. The run stops at once
    (it does not wait out its blocked video), commits the labelled rows it holds, says so,
    writes its run report marked so, releases the lock and exits with 143, with one error line
    and no traceback. Its Ray started in a process group apart, which the signal missed: when
    the raylet had it too, it exited at once and could take the command with it, nothing
    committed nor reported."""
    held = ["output.rows_per_file=100", "output.commit_every_s=3600", "run.progress_every_s=0.2"]
    extra = never_ending_manifest(job, stalling) + [a for s in held for a in ("--set", s)]
    log = job.directory / "stopped.log"
    run = start_under_timeout(run_arguments(job, "never-ending.txt", extra), log)
    try:
        deadline = time.time() + 300
        while not (labelled := videos_labelled(log.read_text())):
            assert time.time() < deadline and run.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert not job.files()
        [command] = children(run.pid)
        [raylet] = [pid for pid in descendants(command) if process_name(pid) == "raylet"]
        assert os.getpgid(command) == os.getpgid(run.pid) != os.getpgid(raylet)
        run.send_signal(signal.SIGTERM)  # as its time runs out
        assert run.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    committed = stopped_whole(job, log.read_text(), "SIGTERM")
    assert labelled <= len(committed) <= VIDEOS


def stopped_whole(job: Job, printed: str, by: str) -> list[dict]:
    """The rows of a run of `never_ending_manifest` that `by` stopped, once checked: the rows it
    held committed as one file and said so in one error line, its report marked, the lock
    released."""
    committed = job.committed()
    assert len(job.files()) == 1 and {row["status"] for row in committed} == {"ok"}
    assert f"stopped by {by} after committing {len(committed)} videos' rows in 1 files" in printed
    errors = [line for line in printed.splitlines() if " ERROR " in line]
    assert [line.split(" ERROR ")[1] for line in errors] == [f"run: stopped by {by}"]
    assert "Traceback" not in printed
    assert job.lock_state() == "released"
    [report] = Output(job.output).read_reports()
    assert report.stopped_by == by and report.videos_written == len(committed)
    assert len(report.files) == 1 and report.skipped_committed == 0
    left = VIDEOS + 1 - len(committed)  # the stalling source among them
    assert f"the other {left} videos to label were not labelled" in report.warnings[-1]
    return committed


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_run_past_its_time_limit_commits_what_it_labelled_and_exits_124(
    ray_cluster, job, stalling
):
    """`run.time_limit_s` stops a run that is still labelling (its stalled source would keep it
    going) as SIGTERM does, with no signal from outside: it commits the rows it holds, says so,
    writes its report marked so, releases the lock and exits with 124."""
    held = ["output.rows_per_file=100", "output.commit_every_s=3600", "run.progress_every_s=0.2"]
    held.append(f"run.time_limit_s={TIME_LIMIT_S}")
    extra = never_ending_manifest(job, stalling) + [a for s in held for a in ("--set", s)]
    log = job.directory / "limited.log"
    started = time.monotonic()
    run = start_run(job, ray_cluster, "never-ending.txt", extra, log)
    try:
        assert run.wait(timeout=300) == 124
    finally:
        if run.poll() is None:
            run.kill()
    assert time.monotonic() - started >= TIME_LIMIT_S
    printed = log.read_text()
    assert f"run.time_limit_s={TIME_LIMIT_S}s: the run stops at " in printed
    assert "ETA unknown (the time limit stops it in " in printed  # before the first video
    committed = stopped_whole(job, printed, "run.time_limit_s")
    labelled = videos_labelled(printed.split("stopped by run.time_limit_s")[0])
    assert 0 < labelled <= len(committed) <= VIDEOS


TIME_LIMIT_S = 30
"""Well past a run's start on the shared cluster and its first labelled videos: 14 s after the
run's start on a 2-core AMD EPYC"""


STOPPED_IN_RAY_INIT = r"""
import glob, os, signal, threading, time, traceback
import ray
from vivit_batch.errors import Interrupted
from vivit_batch.interrupts import signals_interrupting
from vivit_batch.job.cluster import connect

def started(name):
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            text = open(status).read()
        except OSError:
            continue
        if f"Name:\t{name}\n" in text and f"PPid:\t{os.getpid()}\n" in text:
            return True

def stop_once_ray_starts():
    while not started("gcs_server"):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=stop_once_ray_starts, daemon=True).start()
try:
    with signals_interrupting():
        connect(None)
except Interrupted as stop:
    frames = [frame.name for frame in traceback.extract_tb(stop.__traceback__)]
    print(frames[-1], ray.is_initialized(), flush=True)
"""


@pytest.mark.slow
def test_a_stop_while_ray_starts_is_raised_once_it_has_started():
    """A stop that cut `ray.init` short left a driver that could die of SIGSEGV as it exited
    (Ray's core worker torn down under its own thread): 4 runs in 28 stopped by their time
    limit about 6 s after their start. The stop now waits for Ray's start, then stops the
    command, which exits as it should."""
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-c", STOPPED_IN_RAY_INIT],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert (result.returncode, result.stdout) == (0, "deferred True\n"), result.stderr[-3000:]


def start_under_timeout(arguments: list[str], log: Path) -> subprocess.Popen:
    """`timeout --preserve-status 1h vivit-batch run ARGUMENTS`, with no RAY_ADDRESS: the command
    starts a Ray of its own. `timeout` leads the process group they start in, as it does
    wherever it runs."""
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "vivit_batch.cli", "run", *arguments]
    with open(log, "w") as output:
        return subprocess.Popen(
            ["timeout", "--preserve-status", "1h", *command],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def videos_labelled(log: str) -> int:
    """The videos labelled so far by the newest progress line in a run's `log` (0 if none)."""
    counts = re.findall(r"progress: (\d+)/\d+ videos labelled", log)
    return int(counts[-1]) if counts else 0


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting one needs root, as CI runs)."""
    point = tmp_path / "small"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_run_whose_output_disk_fills_says_what_it_committed(ray_cluster, job, small_disk):
    """The output's disk full mid-run: the run fails (exit 1), saying how many videos' rows it
    had committed, which stand, and in one line what failed, on which file, and what to do (no
    traceback). Ray Data's execution ends before Ray does: when it was left to the
    interpreter's exit, it logged "Ray is not initialized" tracebacks, started Ray again from a
    thread, and once (1 run of about 10) hung the command for good."""
    rows = write_long_manifest(job, copies=20)
    job = Job(job.directory, str(small_disk / "out"))
    log = job.directory / "full.log"
    run = start_run(job, ray_cluster, "long.csv", log=log)
    try:
        wait_for_files(job, 2)
        with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as fill:
            while True:  # until the disk is full (unbuffered: nothing left to write at close)
                fill.write(b"\0" * 65536)
        assert run.wait(timeout=300) == 1
    finally:
        if run.poll() is None:
            run.kill()
    printed = log.read_text()
    committed = f"committing {len(job.committed())} videos' rows in {len(job.files())} files"
    assert f"failed after {committed}: those stand" in printed
    [failed] = [line for line in printed.splitlines() if " ERROR " in line]
    assert f"run: failed: OSError: [Errno 28] No space left on device: '{small_disk}" in failed
    assert failed.endswith("Free space there, then run the same command again")
    assert "Traceback" not in printed and "Ray is not initialized" not in printed
    assert "killed by `ray.kill`" not in printed  # Ray Data ending its actors: a notice
    assert 2 <= len(job.committed()) < len(rows)


def descendants(pid: int) -> list[int]:
    """The processes that `pid` started, and theirs (from /proc)."""
    return [found for child in children(pid) for found in (child, *descendants(child))]


def children(pid: int) -> list[int]:
    """The processes that `pid` started (from /proc)."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:  # it ended meanwhile
        return ""


def stop_outside_a_commit(process: subprocess.Popen, job: Job) -> None:
    """SIGSTOP `process` where it holds no commit's guard. On local disk a commit holds the
    guard, and a run that would take the lock over waits for it one stale period, then gives up
    (exit 2: the test of that is the next one); S3 has no guard."""
    while True:
        process.send_signal(signal.SIGSTOP)
        while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)  # stopped: it can take the guard no more
        if job.s3 is not None or not guard_held(job):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)


def guard_held(job: Job) -> bool:
    """Whether a process holds the local output's guard (any way)."""
    descriptor = os.open(f"{job.output}/_lock.guard", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the flock the test took


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_run_behind_a_holder_frozen_inside_a_commit_exits_2_after_lock_wait_s(ray_cluster, job):
    """`vivit-batch run` while another run is stopped inside a commit, holding the lock's guard:
    it gives up once run.lock_wait_s has passed, with the locked exit code (2), touching
    nothing."""
    output = Output(job.output)
    log = job.directory / "next.log"
    with frozen_process(FROZEN_COMMITTER, output):
        started = time.monotonic()
        run = start_run(job, ray_cluster, extra=["--set", "run.lock_wait_s=3"], log=log)
        assert run.wait(timeout=120) == EXIT_USAGE
        assert time.monotonic() - started >= 3
        assert record_of(output)["run_id"] == "frozen"
    assert "is being written by run frozen" in log.read_text()
    assert "kept the lock's guard" in log.read_text()
    assert job.committed() == [] and not os.path.exists(output.path("_dataset.json"))


SEGMENT_FRAMES = 6
"""`sampling.segment_s=0.2` at the test videos' 30 fps"""


def segments_of(num_frames: int) -> int:
    """Segments of a video that long: whole ones, and a remainder of half a segment or more."""
    whole, left = divmod(num_frames, SEGMENT_FRAMES)
    return whole + (left * 2 >= SEGMENT_FRAMES)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["local"], indirect=True)
def test_a_segments_run_killed_midway_shows_only_whole_videos(ray_cluster, job, stalling):
    """Segments mode, each chunk of one segment labelled on its own: a reader looking all along
    sees each video with all of its segments or none; after SIGKILL the rerun completes it."""
    segments = ["--set", "sampling.temporal_views=segments", "--set", "sampling.segment_s=0.2"]
    segments += ["--set", "decode.segments_per_chunk=1"]
    expected = {f"v{i}.mp4": segments_of(20 + i) for i in range(VIDEOS)}
    never_ending = never_ending_manifest(job, stalling)
    run = start_run(job, ray_cluster, "never-ending.txt", extra=[*segments, *never_ending])
    looks = []
    while len(job.files()) < 3:
        looks.append(whole_videos_seen(job, expected))
    looks.append(whole_videos_seen(job, expected))  # one look at least after the third file
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert len(looks) > 1 and max(looks) >= 3
    assert start_run(job, ray_cluster, extra=segments).wait(timeout=600) == 0
    assert whole_videos_seen(job, expected) == VIDEOS


def whole_videos_seen(job: Job, expected: dict[str, int]) -> int:
    """How many videos a reader sees; fails unless each has exactly its segments, in order,
    covering it (each file holds whole videos)."""
    time.sleep(0.1)
    path = job.filesystem()[1]
    if not job.files():
        return 0
    table = ds.dataset(path, format="parquet").to_table()
    by_video: dict[str, list[dict]] = {}
    for row in (
        table.sort_by([("video_id", "ascending"), ("segment_index", "ascending")])
        .select(
            ["video_id", "uri", "segment_index", "segment_start_s", "segment_end_s", "num_frames"]
        )
        .to_pylist()
    ):
        by_video.setdefault(row["video_id"], []).append(row)
    for rows in by_video.values():
        name = Path(rows[0]["uri"]).name
        assert [r["segment_index"] for r in rows] == list(range(expected[name])), name
        ends = [r["segment_end_s"] for r in rows]
        assert [r["segment_start_s"] for r in rows] == [0.0, *ends[:-1]]
        assert ends[-1] == pytest.approx(rows[0]["num_frames"] / 30)
    return len(by_video)
