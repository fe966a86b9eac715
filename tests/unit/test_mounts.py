"""The filesystem under a local output, from the mount table: network and FUSE filesystems are
refused for locking, naming run.locking. The tables are files the tests write (as the kernel
writes /proc/self/mountinfo), plus one real read of this machine's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vivit_batch.errors import ConfigError
from vivit_batch.output import Output
from vivit_batch.output.mounts import MOUNT_TABLE, mount_of, require_lockable_filesystem

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
23 22 0:40 / /mnt/nfs rw,relatime shared:7 - nfs4 filer:/export/labels rw,vers=4.2
24 22 0:41 / /mnt/sshfs rw,nosuid,nodev - fuse.sshfs me@host:/data rw,user_id=0
25 24 8:17 / /mnt/sshfs/local rw,relatime - xfs /dev/sdb1 rw
26 22 0:42 / /mnt/team\\040share rw - cifs //server/team rw,vers=3.1.1
27 22 8:33 / /mnt/nfsx rw,relatime - ext4 /dev/sdc1 rw
28 22 0:43 / /mnt/scratch rw - tmpfs tmpfs rw
29 22 0:44 / /mnt/scratch rw master:3 - glusterfs gluster:/vol rw
30 22 0:45 / /mnt/ntfs rw - fuseblk /dev/sdd1 rw
"""


@pytest.fixture()
def table(tmp_path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


@pytest.mark.parametrize(
    "path, point, kind",
    [
        ("/srv/labels", "/", "ext4"),
        ("/mnt/nfs", "/mnt/nfs", "nfs4"),
        ("/mnt/nfs/labels/run", "/mnt/nfs", "nfs4"),
        ("/mnt/nfsx/labels", "/mnt/nfsx", "ext4"),  # a longer name, not a folder of /mnt/nfs
        ("/mnt/sshfs/labels", "/mnt/sshfs", "fuse.sshfs"),
        ("/mnt/sshfs/local/labels", "/mnt/sshfs/local", "xfs"),  # the longest mount point
        ("/mnt/team share/labels", "/mnt/team share", "cifs"),  # "\040" in the table
        ("/mnt/scratch/labels", "/mnt/scratch", "glusterfs"),  # mounted last, on top
    ],
)
def test_the_mount_holding_a_path(table, path, point, kind):
    mount = mount_of(path, table)
    assert mount is not None and (mount.point, mount.type) == (point, kind)


@pytest.mark.parametrize(
    "path, named",
    [
        ("/mnt/nfs/labels", "on nfs4 (filer:/export/labels mounted at /mnt/nfs)"),
        ("/mnt/sshfs/labels", "on fuse.sshfs ("),
        ("/mnt/team share/labels", "on cifs ("),
        ("/mnt/scratch/labels", "on glusterfs ("),
        ("/mnt/ntfs/labels", "on fuseblk ("),
    ],
)
def test_network_and_fuse_filesystems_are_refused_for_locking(table, path, named):
    with pytest.raises(ConfigError) as refused:
        require_lockable_filesystem(path, path, table)
    message = str(refused.value)
    assert named in message
    assert "run.locking=none" in message and "local disk or on S3" in message


@pytest.mark.parametrize("path", ["/srv/labels", "/mnt/nfsx/labels", "/mnt/sshfs/local/labels"])
def test_local_filesystems_are_accepted(table, path):
    require_lockable_filesystem(path, path, table)


def test_without_a_mount_table_nothing_is_refused(tmp_path):
    assert mount_of("/mnt/nfs/labels", str(tmp_path / "absent")) is None
    require_lockable_filesystem("/mnt/nfs/labels", "/mnt/nfs/labels", str(tmp_path / "absent"))


def test_this_machines_mount_table_for_a_local_output(tmp_path):
    """The real table: the mount found is the one util-linux's findmnt names, and a run can
    lock an output in the test's folder."""
    mount = mount_of(str(tmp_path), MOUNT_TABLE)
    assert mount is not None and not mount.unsafe_for_locking
    if shutil.which("findmnt"):
        found = subprocess.run(
            ["findmnt", "-n", "-o", "TARGET,FSTYPE", "--target", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert found == [mount.point, mount.type]
    with Output(str(tmp_path / "out")).lock("run", 60.0) as lock:
        assert lock.generation == 1
    assert Path(tmp_path / "out" / "_lock.json").exists()
