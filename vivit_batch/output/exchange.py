"""Two folders on local disk swapped in one atomic step: Linux `renameat2(..., RENAME_EXCHANGE)`.

After `exchange(a, b)` the path `a` names what `b` named and `b` what `a` named; every other
process sees one arrangement or the other, never neither. Called through ctypes: glibc's
`renameat2` (2.28+), else the raw system call. A kernel without it (before 3.15, or not Linux),
a filesystem that cannot exchange (some FUSE and network ones), or two paths on different
filesystems raise `ExchangeUnsupported`, saying which.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable

AT_FDCWD = -100
RENAME_EXCHANGE = 2
SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}
"""`renameat2`'s number where glibc does not wrap it."""


class ExchangeUnsupported(OSError):
    """This kernel or filesystem cannot swap the two folders atomically."""


def exchange(first: str, second: str) -> None:
    """Swap the folders (or files) at `first` and `second` atomically."""
    call = _renameat2()
    if call is None:
        raise ExchangeUnsupported(
            errno.ENOSYS, f"no renameat2 on {platform.system()} {platform.machine()}"
        )
    if call(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return
    code = ctypes.get_errno()
    why = UNSUPPORTED.get(code)
    if why is not None:
        raise ExchangeUnsupported(code, why)
    raise OSError(code, os.strerror(code), first, None, second)


UNSUPPORTED = {
    errno.ENOSYS: "the kernel has no renameat2 (Linux 3.15 or later has it)",
    errno.EINVAL: "the filesystem cannot exchange two folders atomically (RENAME_EXCHANGE)",
    errno.EXDEV: "the two folders are on different filesystems",
}


ARGUMENTS = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _renameat2() -> Callable[..., int] | None:
    """glibc's `renameat2`, else the system call; None where neither is."""
    if platform.system() != "Linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return system_call(libc)
    function.argtypes = ARGUMENTS
    function.restype = ctypes.c_int
    return function


def system_call(libc: ctypes.CDLL) -> Callable[..., int] | None:
    """`renameat2` as the raw system call (a libc older than glibc 2.28, or musl before 1.2.5);
    None on a machine whose number for it is not known here."""
    number = SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def call(*arguments) -> int:
        typed = (kind(value) for kind, value in zip(ARGUMENTS, arguments, strict=True))
        return syscall(ctypes.c_long(number), *typed)

    return call
