"""`python -m vivit_batch.manifest`: `scan_manifest` in a process of its own, so that the driver
keeps none of the scan's memory (a set of id hashes as long as the manifest). Reads (section,
reserved columns, storage options) pickled on stdin (`request`), from the driver that started it
(`COMMAND`); writes the `ManifestSummary` as JSON on stdout (`summary_from`). See
`vivit_batch.job.prepare.scan_apart`."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys

from vivit_batch.config import ManifestSection
from vivit_batch.errors import ConfigError
from vivit_batch.manifest.check import ManifestSummary, scan_manifest

COMMAND = [sys.executable, "-m", "vivit_batch.manifest"]


def request(section: ManifestSection, reserved: frozenset[str], options: dict | None) -> bytes:
    """What the scan process reads on stdin."""
    return pickle.dumps((section, sorted(reserved), options))


def summary_from(reply: bytes) -> ManifestSummary:
    """The summary the scan process wrote on stdout."""
    return ManifestSummary(**json.loads(reply))


def main() -> None:
    section, reserved, options = pickle.load(sys.stdin.buffer)
    reply, sys.stdout = sys.stdout, sys.stderr  # only the summary goes to the driver
    try:
        summary = scan_manifest(section, set(reserved), options)
    except ConfigError as error:
        summary = ManifestSummary(problems=[str(error)])
    except OSError as error:
        summary = ManifestSummary(problems=[unreadable(section, error)])
    reply.write(json.dumps(dataclasses.asdict(summary)))
    reply.flush()
    # Skip the interpreter's teardown: pyarrow's reader threads can abort it ("terminate called
    # without an active exception", SIGABRT) after the summary is out (seen once in CI).
    os._exit(0)


def unreadable(section: ManifestSection, error: OSError) -> str:
    uri = section.uri
    if isinstance(error, FileNotFoundError):
        return f"manifest {uri} does not exist: check --manifest (or manifest.uri)"
    if isinstance(error, PermissionError):
        return (
            f"manifest {uri}: permission denied ({error}): check the storage credentials "
            "(storage.*, AWS_* variables)"
        )
    return (
        f"manifest {uri} cannot be read ({type(error).__name__}: {error}): check the path and "
        "the storage settings (storage.*)"
    )


if __name__ == "__main__":
    main()
