"""The package's shape: imports that run one way, leaves that import nothing heavy, commands that
only read an output importing neither torch nor PyAV, and each list of choices equal to what
honours it."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from vivit_batch import config
from vivit_batch.logs import setup_logging
from vivit_batch.manifest import read as manifest_read
from vivit_batch.output import schema
from vivit_batch.testing.outputs import Generated, write_generated_output

PACKAGE = Path(__file__).resolve().parents[2] / "vivit_batch"
HEAVY = ("torch", "av")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def imported(name: str) -> set[str]:
    """The package's modules that `name` imports anywhere: at the top, in functions, and under
    `TYPE_CHECKING` (a deferred import that avoids a cycle still is one)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
    return (found & MODULES.keys()) - {name}


GRAPH = {name: imported(name) for name in MODULES}


def cycle_from(start: str) -> list[str] | None:
    """A path of imports from `start` back to itself, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for target in GRAPH[name]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_the_package_has_no_import_cycle():
    cycles = {name: cycle for name in GRAPH if (cycle := cycle_from(name))}
    assert not cycles, " -> ".join(next(iter(cycles.values())))


def test_the_errors_and_the_configuration_are_leaves():
    assert GRAPH["vivit_batch.errors"] == set()
    assert GRAPH["vivit_batch.settings"] == {"vivit_batch.errors"}
    assert GRAPH["vivit_batch.config"] == {"vivit_batch.errors", "vivit_batch.settings"}


@pytest.mark.parametrize(
    "module",
    ["vivit_batch.output.dataset", "vivit_batch.report.stats", "vivit_batch.job.resources"],
)
def test_modules_that_need_no_torch_do_not_import_the_device_check(module):
    assert "vivit_batch.device" not in GRAPH[module]


def test_the_functions_of_light_tasks_import_neither_torch_nor_pyav():
    """A Ray worker imports the module of each function it runs: torch would cost it about 2 CPU
    seconds and 250 MB, for tasks that only move Arrow tables (the manifest's ids, the version
    lookups, the committed join's reads and decisions, the rows to label)."""
    from vivit_batch.job import committed_join, pipeline

    functions = [
        pipeline.with_ids,
        pipeline.with_versions,
        pipeline.to_label,
        committed_join.read_committed,
        committed_join.decide,
        committed_join.relabelled_holders,
        committed_join.action_counts,
    ]
    imports = "; ".join(f"import {name}" for name in {f.__module__ for f in functions})
    code = f"import sys; {imports}; print(sorted(set(sys.modules) & {set(HEAVY)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", (imports, result.stderr[-2000:])


def test_the_video_layer_takes_its_sections_from_the_configuration():
    assert "vivit_batch.config" in GRAPH["vivit_batch.video.decode"]
    assert not any(name.startswith("vivit_batch.video") for name in GRAPH["vivit_batch.config"])


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("architecture") / "out")
    write_generated_output(uri, Generated(("a", "b"), videos=6, hidden=8, weights_sha256="ab" * 32))
    return uri


def heavy_imports(*arguments: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Which of `HEAVY` `vivit-batch ARGUMENTS` imports, read from `-X importtime`."""
    command = "import sys; from vivit_batch.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", command, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "vivit_batch.cli" in modules, result.stderr[-2000:]
    return modules & set(HEAVY), result


@pytest.mark.parametrize(
    "arguments",
    [
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["report", "OUT"],
        ["lock", "OUT"],
        ["compact", "OUT", "--dry-run"],
        ["compact", "OUT"],
    ],
)
def test_commands_that_only_read_import_neither_torch_nor_pyav(arguments, output):
    heavy, result = heavy_imports(*[output if a == "OUT" else a for a in arguments])
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == set(), f"vivit-batch {' '.join(arguments)} imports {sorted(heavy)}"


def choices_of(key: str) -> tuple:
    item, _ = config.all_keys()[key]
    return item.metadata["rule"].choices


def test_manifest_formats_are_the_formats_the_reader_has():
    readers = set(manifest_read.FORMATS) | {"auto", "videos"}  # by extension; a listing
    assert set(choices_of("manifest.format")) == readers
    assert set(manifest_read.FORMATS_BY_EXTENSION.values()) <= set(manifest_read.FORMATS)


def test_precisions_are_the_dtypes_the_model_runs():
    from vivit_batch.model import DTYPES

    assert set(choices_of("model.precision")) == set(DTYPES)


def test_partitions_are_the_partition_columns_the_output_reserves():
    assert set(choices_of("output.partition_by")) == set(schema.PARTITION_COLUMNS)


def test_the_manifest_accepts_the_schemes_storage_reads():
    from vivit_batch import storage

    assert set(manifest_read.SCHEMES) == {*storage.LOCAL_PROTOCOLS, *storage.S3_PROTOCOLS}
    assert set(manifest_read.HTTP_SCHEMES) == set(storage.HTTP_PROTOCOLS)


@pytest.mark.parametrize("verbose", [False, True])
def test_rays_notice_about_its_own_defaults_is_logged_only_with_verbose(verbose, capsys):
    ray_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    setup_logging(verbose=verbose)
    try:
        ray_logger.warning("Token authentication is enabled for this Ray cluster. Set ...")
        ray_logger.warning("a warning of Ray's that a run can act on")
    finally:
        setup_logging()
    logged = capsys.readouterr().err
    assert ("Token authentication is enabled" in logged) == verbose
    assert "a warning of Ray's that a run can act on" in logged


NATIVE_WRITER = """
import os, sys, time
from vivit_batch.logs import NATIVE_NOTICES, filter_native_stderr, setup_logging

setup_logging()
filter_native_stderr()
os.write(2, b"[core_worker.cc:2465] Actor X " + NATIVE_NOTICES[0].encode() + b". See\\n")
os.write(2, b"[core_worker.cc:99] a C++ error a run can act on\\n")
import logging
logging.getLogger("vivit_batch").error("the run's own last line")
sys.stderr.flush()
os.kill(os.getpid(), 9)  # dies at once: what it wrote still arrives
"""


def test_rays_native_notice_is_dropped_and_every_other_line_arrives_even_if_the_run_dies():
    done = subprocess.run(
        [sys.executable, "-c", NATIVE_WRITER], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9
    assert "constructor arguments" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "[core_worker.cc:99] a C++ error a run can act on"
    assert lines[1].endswith("ERROR the run's own last line")


EXITING_WRITER = """
import logging
from vivit_batch.logs import filter_native_stderr, setup_logging

setup_logging()
filter_native_stderr()
for line in range(20_000):
    logging.getLogger("vivit_batch").info("line %d of the run's last lines", line)
"""


def test_when_the_run_exits_its_last_lines_are_in_its_log_file(tmp_path):
    """A log file (`vivit-batch run > log`) holds every line once the run has exited: the
    forwarder is waited for at exit."""
    log = tmp_path / "run.log"
    with log.open("w") as output:
        subprocess.run([sys.executable, "-c", EXITING_WRITER], stderr=output, timeout=60)
    assert log.read_text().splitlines()[-1].endswith("line 19999 of the run's last lines")
