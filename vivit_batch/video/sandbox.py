"""The decoding workers' sandbox: Landlock and seccomp-bpf, through ctypes and the kernel's ABI.

A worker enters it right after it is forked and before it reads its first request, so FFmpeg
never parses a byte of video outside it:

* `PR_SET_NO_NEW_PRIVS`, which both need without privileges;
* **Landlock** (the best ABI the kernel has): no write, create, remove, rename or truncate
  anywhere; reads only beneath what the process already uses (the Python installation, the
  directories of its imported modules and of its loaded libraries, `/etc/ld.so.cache`); no
  execve; from ABI 4 no TCP connect or bind; from ABI 6 no signal to, and no abstract UNIX
  socket of, a process outside the sandbox.
* **seccomp-bpf**: `socket()` of every family fails (the worker needs none: its pipes are
  inherited; UNIX sockets reach Ray's raylet and Docker's socket, which Landlock's ABI 7 does
  not govern), as do `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`, `io_uring_setup`
  (its requests would bypass this filter), `bpf`, `perf_event_open`, `userfaultfd` and the
  kernel keyrings. Any other system call ABI than the process's own fails wholesale (i386
  `int 0x80` on x86_64, x32).

No PyPI package does both: the Landlock bindings there are young or pre-release, and libseccomp's
bindings need the C library on every node. The ABI is small and documented
(Documentation/userspace-api/landlock.rst, include/uapi/linux/landlock.h, seccomp_filter.rst).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import pwd
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from vivit_batch.errors import ConfigError

WITHOUT_LANDLOCK = "VIVIT_BATCH_TEST_KERNEL_WITHOUT_LANDLOCK"
"""Test builds only: set (to anything) in the environment of the process that probes, and of
the decoding processes, `probe` reports a kernel without Landlock. It can only turn the
sandbox off, which `decode.sandbox=off` does too."""

# Landlock (include/uapi/linux/landlock.h); its system call numbers are the same everywhere.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_READ_FILE, _FS_READ_DIR = 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute, write, read, read_dir, remove, make_* (13 rights)
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# prctl and seccomp (include/uapi/linux/prctl.h, seccomp.h, filter.h, audit.h)
_PR_GET_SECCOMP, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 21, 22, 38
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LOAD_WORD, _JUMP_EQUAL, _JUMP_AT_LEAST, _RETURN = 0x20, 0x15, 0x35, 0x06
_DATA_NR, _DATA_ARCH = 0, 4  # offsets in struct seccomp_data
_X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class _Architecture:
    audit_arch: int
    refused: dict[str, int]
    """the system calls the filter refuses, by name: their numbers here"""
    x32: bool = False


_ARCHITECTURES = {
    "x86_64": _Architecture(
        0xC000003E,
        {
            "socket": 41,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "pidfd_getfd": 438,
            "io_uring_setup": 425,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
        },
        x32=True,
    ),
    "aarch64": _Architecture(
        0xC00000B7,
        {
            "socket": 198,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "pidfd_getfd": 438,
            "io_uring_setup": 425,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
        },
    ),
}


class SandboxUnavailable(OSError):
    """The kernel (or this architecture) lacks what the sandbox needs; the message names it."""


@dataclass(frozen=True)
class Support:
    """What this machine's kernel offers the sandbox."""

    landlock_abi: int
    """0: no Landlock"""
    seccomp: bool
    architecture: str

    @property
    def missing(self) -> str | None:
        """The kernel feature the sandbox lacks here, in words; None when it has them all."""
        return self.lacks(landlock=True)

    def lacks(self, landlock: bool) -> str | None:
        """`missing`, for a sandbox with Landlock or (False) with seccomp alone."""
        if landlock and not self.landlock_abi:
            return (
                "Landlock (Linux 5.13 or later with the landlock LSM enabled, e.g. lsm=...,"
                "landlock on the kernel command line)"
            )
        if not self.seccomp:
            return "seccomp filters (CONFIG_SECCOMP_FILTER)"
        if self.architecture not in _ARCHITECTURES:
            return f"a seccomp filter for {self.architecture} (x86_64 and aarch64 have one)"
        return None

    def describe(self, landlock: bool = True) -> str:
        """`none`, or the Landlock ABI and what the sandbox enforces with it (`landlock`
        False: what seccomp alone enforces)."""
        if self.lacks(landlock):
            return "none"
        seccomp = (
            "seccomp (no socket() of any family, no ptrace, process_vm_*, pidfd_getfd, "
            "io_uring, bpf, perf_event_open, userfaultfd, keyrings)"
        )
        if not landlock:
            return f"{seccomp}; no landlock (the GPU's device files and driver)"
        abi = self.landlock_abi
        rules = "no writes, reads only under the Python installation and its libraries"
        rules += ", no TCP connect or bind" if abi >= 4 else " (no TCP rules before ABI 4)"
        if abi >= 6:
            rules += ", signals and abstract UNIX sockets scoped"
        return f"landlock ABI {abi} ({rules}); {seccomp}"


def probe() -> Support:
    """What the kernel offers, asked without changing anything."""
    abi = 0
    if WITHOUT_LANDLOCK not in os.environ:
        abi = max(0, _syscall(_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))
    seccomp = _prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) >= 0
    return Support(abi, seccomp, platform.machine())


def planned(mode: str, isolation: str) -> tuple[str, str | None]:
    """The sandbox a run's decoding processes enter on this machine, in words (`none`, `off`, or
    what it enforces: `Support.describe`), and the warning to give when there is none though
    one was asked for. `ConfigError` (exit 2) for `decode.sandbox=required` without it."""
    if isolation != "process":
        return "none (decode.isolation=none)", None
    if mode == "off":
        return "off", None
    support = probe()
    missing = support.missing
    if missing and mode == "required":
        raise ConfigError(
            f"decode.sandbox=required, but this kernel has no {missing}: run on a kernel with "
            "it, or set decode.sandbox=auto to decode without the sandbox"
        )
    if missing:
        return "none", (
            f"the decoding processes run without a sandbox: this kernel has no {missing}; a "
            "video that exploits the decoder could read this user's files and reach the network "
            "(decode.sandbox=required refuses to run so)"
        )
    return support.describe(), None


class Sandbox:
    """A sandbox prepared once (in the zygote, after its imports): a Landlock ruleset and a
    seccomp program, which each forked worker then `enter`s in a few system calls.

    Without `landlock` (the GPU's decoding processes, which open the driver's device files and
    libraries, and which no ruleset was tried with yet) only the seccomp program."""

    def __init__(self, support: Support, readable: Iterable[str], landlock: bool = True):
        missing = support.lacks(landlock)
        if missing:
            raise SandboxUnavailable(f"this kernel has no {missing}")
        self.support = support
        self._ruleset_fd = _landlock_ruleset(support.landlock_abi, readable) if landlock else None
        self._filter = _seccomp_filter(_ARCHITECTURES[support.architecture])

    def enter(self) -> None:
        """Confine the calling process (and the threads and processes it starts) for good.
        Only the calling thread is confined: call it before starting any other."""
        _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self._ruleset_fd is not None:
            _check(_syscall(_RESTRICT_SELF, self._ruleset_fd, 0), "landlock_restrict_self")
            os.close(self._ruleset_fd)
        program = _SockFprog(len(self._filter) // 8, ctypes.addressof(self._filter))
        _check(
            _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0),
            "prctl(PR_SET_SECCOMP)",
        )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


LIBRARIES_READ_LAZILY = ("/etc/ld.so.cache", "/proc/cpuinfo", "/sys/devices/system/cpu")
"""Read on first use, after the sandbox is entered: the dynamic loader's cache (a library that
loads another), and the CPU's features and count (torch's cpuinfo, which picks its kernels by
them)."""


def readable_roots() -> list[str]:
    """What a worker may read: the Python installation, its import path, the directories of
    the modules and libraries this process has loaded, and `LIBRARIES_READ_LAZILY`. Never `/`,
    the home directory or a directory above it (a current directory on `sys.path`)."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates |= {p for p in sys.path if os.path.isabs(p)}
    candidates |= {
        os.path.dirname(path)
        for module in list(sys.modules.values())
        if isinstance(path := getattr(module, "__file__", None), str) and os.path.isabs(path)
    }
    candidates |= set(_mapped_directories())
    candidates |= set(LIBRARIES_READ_LAZILY)
    home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    kept: list[str] = []
    for path in sorted({os.path.realpath(c) for c in candidates if os.path.exists(c)}):
        if path == "/" or home == path or home.startswith(path.rstrip("/") + "/"):
            continue
        if kept and path.startswith(kept[-1].rstrip("/") + "/"):
            continue  # beneath one already kept (sorted: a parent comes first)
        kept.append(path)
    return kept


def _mapped_directories() -> Iterable[str]:
    """The directories of the files mapped into this process (shared libraries, locales)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                yield os.path.dirname(fields[5].rstrip("\n").removesuffix(" (deleted)"))


def _landlock_ruleset(abi: int, readable: Iterable[str]) -> int:
    """A ruleset that handles every access right `abi` knows (so all are denied) but reading
    beneath `readable`; its file descriptor."""
    fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI
    attributes = ctypes.create_string_buffer(struct.pack("<QQQ", fs, net, scoped)[:size], size)
    ruleset = _check(_syscall(_CREATE_RULESET, attributes, size, 0), "landlock ruleset")
    try:
        for path in readable:
            _allow_reading(ruleset, path)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def _allow_reading(ruleset: int, path: str) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rights = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
        rule = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd), 12)  # packed struct
        _check(_syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0), f"rule {path}")
    finally:
        os.close(fd)


def _seccomp_filter(architecture: _Architecture) -> ctypes.Array:
    """The BPF program: another ABI's call or a refused one fails with EPERM, the rest run."""
    refuse = _RET_ERRNO | errno.EPERM
    checks = [(_JUMP_EQUAL, number) for number in architecture.refused.values()]
    if architecture.x32:
        checks.insert(0, (_JUMP_AT_LEAST, _X32_SYSCALL_BIT))
    program = [
        (_LOAD_WORD, 0, 0, _DATA_ARCH),
        (_JUMP_EQUAL, 1, 0, architecture.audit_arch),
        (_RETURN, 0, 0, refuse),
        (_LOAD_WORD, 0, 0, _DATA_NR),
    ]
    for index, (jump, value) in enumerate(checks):
        to_refusal = len(checks) - index  # past the later checks and the allow
        program.append((jump, to_refusal, 0, value))
    program += [(_RETURN, 0, 0, _RET_ALLOW), (_RETURN, 0, 0, refuse)]
    code = b"".join(struct.pack("<HBBI", *instruction) for instruction in program)
    return ctypes.create_string_buffer(code, len(code))


_LIBC: ctypes.CDLL | None = None


def _syscall(*arguments: object) -> int:
    """`syscall(2)`, each integer passed as a C long (its arguments are variadic)."""
    return _libc().syscall(*(_long(a) for a in arguments))


def _prctl(*arguments: object) -> int:
    return _libc().prctl(*(_long(a) for a in arguments))


def _long(argument: object) -> object:
    return ctypes.c_long(argument) if isinstance(argument, int) else argument


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise SandboxUnavailable(code, f"{what}: {os.strerror(code)}")
    return result
