"""Which filesystem holds a local output, read from the mount table, and whether the output's
lock may rely on `flock` there.

On network and FUSE filesystems `flock` can be local to one host (another machine's run does
not see it: NFS before Linux 2.6.12, CIFS without `nobrl`, most FUSE filesystems), emulated
with byte-range locks that a server restart or a lost lease silently drops (NFS), or not
implemented at all. The lock's guard (`records.LocalRecord`) would then stop nothing, so such
outputs are refused for locking; none of these is proven safe by a test here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vivit_batch.errors import ConfigError

MOUNT_TABLE = "/proc/self/mountinfo"

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "virtiofs",
        "vboxsf",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "orangefs",
        "afs",
        "coda",
        "gfs2",
        "ocfs2",
        "davfs",
    }
)
"""Filesystem types (the mount table's names) refused for locking, besides every FUSE type."""


@dataclass(frozen=True)
class Mount:
    point: str
    type: str
    source: str

    @property
    def unsafe_for_locking(self) -> bool:
        """A network filesystem, or FUSE (`fuse`, `fuseblk`, `fuse.sshfs`, `fuse.s3fs`, ...)."""
        return self.type in NETWORK_FILESYSTEMS or self.type.split(".")[0] in ("fuse", "fuseblk")


def mount_of(path: str, table: str = MOUNT_TABLE) -> Mount | None:
    """The mount that holds `path`: of the mount points that are `path`'s real path or a folder
    above it, the longest; of equal ones, the last mounted (it hides the others). None when
    there is no mount table to read (not Linux)."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as stream:
            mounts = [parse_mount(line) for line in stream if line.strip()]
    except OSError:
        return None
    real = os.path.realpath(path)
    holding = [m for m in mounts if m.point == "/" or (real + "/").startswith(m.point + "/")]
    return max(reversed(holding), key=lambda m: len(m.point), default=None)


def parse_mount(line: str) -> Mount:
    """One line of `/proc/<pid>/mountinfo` (proc(5)): ID, parent ID, major:minor, root, mount
    point, options, optional fields, "-", type, source, super options."""
    fields = line.split()
    after = fields.index("-", 6)
    return Mount(point=_unescape(fields[4]), type=fields[after + 1], source=fields[after + 2])


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), field)


def require_lockable_filesystem(path: str, uri: str, table: str = MOUNT_TABLE) -> None:
    """`ConfigError` (exit 2) when the output at `path` is on a filesystem whose `flock` the
    output's lock cannot rely on."""
    mount = mount_of(path, table)
    if mount is None or not mount.unsafe_for_locking:
        return
    raise ConfigError(
        f"output {uri} is on {mount.type} ({mount.source} mounted at {mount.point}), a network "
        "or FUSE filesystem, where the lock's flock can be local to one host or silently lost, "
        "so it cannot keep two runs apart (run.locking=conditional). Put the output on a local "
        "disk or on S3; or, if "
        "something else (a scheduler that never starts a run while the last one is going) "
        "guarantees one run at a time, set run.locking=none"
    )
