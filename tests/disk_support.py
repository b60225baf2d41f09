"""A real full disk for the store tests: a small tmpfs mounted for one test (mounting needs
root, as CI has; elsewhere the test is skipped with that reason)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(parent: Path, size_kib: int) -> Iterator[Path]:
    mount_point = parent / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip()}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, kib: int) -> Path:
    """A file of ``kib`` KiB (or as much as fits) on ``disk``; unlink it to free the room."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        with contextlib.suppress(OSError):
            out.write(os.urandom(kib * 1024))
    return filler
