"""Writing files so that a killed run never leaves half of one: write to a temporary file in
the same folder, fsync, rename over the target, fsync the folder. The file gets the mode a
plain ``open(path, "w")`` would give it (0666 less the user's umask), not the 0600 of the
temporary file."""

from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write", "fsync_dir", "user_file_mode"]


def fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def user_file_mode() -> int:
    """0666 less the process's umask. Linux reports the umask in /proc (reading it with
    os.umask would change it for a moment under every other thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, data: bytes) -> None:
    """Write, fsync, rename over ``path``, fsync the directory. An error names ``path`` as the
    caller gave it, never the temporary file beside it."""
    try:
        _atomic_write(path, data)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, path) from None


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), user_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
