"""Atomic file writes, shared by the lab's checkpoints and the sweep's result files.

A write goes to a temporary file beside the target (``.tmp-<random>-<name>``, created with the
usual permissions), is flushed and ``fsync``-ed, then renamed over the target with one
``os.replace``, and the directory is ``fsync``-ed: at any instant the target holds either its
old or its new bytes, never a truncated mixture (Ctrl-C, a full disk, a killed process). A
write that fails removes its temporary file; one killed outright leaves it behind, under the
``.tmp-`` prefix its owner may clean up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["TMP_PREFIX", "atomic_write", "fsync_directory"]

#: Prefix of the temporary files :func:`atomic_write` creates.
TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike, write: bytes | Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically with ``write`` (bytes, or a function writing to a binary
    file object)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        # "xb", not tempfile.mkstemp: the file gets the usual permissions, not 0600 (which the
        # replace would keep)
        with open(tmp, "xb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
