"""Opening a file below a directory, decided on what was actually opened.

Checking a path (realpath) and then opening it is a race: whoever can write
the storage tree (telephony writers, NFS clients) can swap a directory of
the path for a symlink in between, and the open follows it out of the root.
Here the kernel resolves the path below the root's descriptor with
`openat2(RESOLVE_BENEATH)` (Linux 5.6+), which never leaves it; where that
refuses an allowed case (an absolute symlink that lands inside the root) or
is missing, the file is opened and the descriptor's own path
(`/proc/self/fd`) must lie below the root. Either way the answer is about
the open file, never about a path looked at earlier.
"""

from __future__ import annotations

import ctypes
import errno
import os

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc/Linux: the descriptor check alone
    _syscall = None


class Escaped(OSError):
    """What was opened lies outside the root (through a symlink, or one swapped in meanwhile)."""


class Beneath:
    """A root directory, held open; `open()` gives descriptors of files below it only."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self._prefix = self.root.rstrip("/") + "/"
        self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._openat2 = _syscall is not None

    def open(self, relative: str, flags: int) -> int:
        """A descriptor of `relative` (confined, no leading slash); Escaped, or the OSError of the open."""
        if self._openat2:
            how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
            fd = _syscall(_SYS_OPENAT2, self._fd, relative.encode("utf-8", "surrogateescape"), how, ctypes.sizeof(how))
            if fd >= 0:
                return fd
            code = ctypes.get_errno()
            if code in (errno.ENOSYS, errno.EPERM):  # an old kernel, or a seccomp filter that does not know it
                self._openat2 = False
            elif code != errno.EXDEV:  # EXDEV: it would leave the root, or an absolute symlink; look closer
                raise OSError(code, os.strerror(code))
        fd = os.open(self._prefix + relative, flags)
        try:
            self.real_relative(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def real_relative(self, fd: int) -> str:
        """Where the open file `fd` really is, relative to the root; Escaped when it is not below it."""
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not real.startswith(self._prefix):
            raise Escaped(errno.EXDEV, "the file opened lies outside the storage root")
        return real[len(self._prefix) :]

    def close(self) -> None:
        os.close(self._fd)
