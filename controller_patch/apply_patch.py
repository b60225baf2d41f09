#!/usr/bin/env python3
"""Apply the GPU routing patch to an Apache OpenWhisk checkout.

    python3 controller_patch/apply_patch.py ~/src/openwhisk            # check, then apply
    python3 controller_patch/apply_patch.py ~/src/openwhisk --check    # only check

The patch was made against the upstream commit in ``PINNED_COMMIT`` (also named in the patch
header). The script runs ``git apply --check`` first and applies nothing unless the whole patch
applies; a checkout at another commit is tried too (with a warning), since the balancer changes
rarely. A checkout that already has the patch is left alone (exit 0). Exit status: 0 applied,
applies or already applied; 1 does not apply; 2 not an OpenWhisk git checkout or git missing.

Standard library and the ``git`` command only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PINNED_COMMIT = "1fae641a2b30bccb7ddc69d2d215866d899a8510"
PATCH = Path(__file__).resolve().parent / "openwhisk-gpu-routing.patch"
BALANCER = (
    "core/controller/src/main/scala/org/apache/openwhisk/core/loadBalancer/"
    "ShardingContainerPoolBalancer.scala"
)


class ApplyError(RuntimeError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _git(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ApplyError("git is not installed", 2) from None


def head_commit(checkout: Path) -> str:
    if not (checkout / BALANCER).is_file():
        raise ApplyError(f"{checkout} is not an OpenWhisk checkout (no {BALANCER})", 2)
    proc = _git(checkout, "rev-parse", "HEAD")
    if proc.returncode != 0:
        raise ApplyError(f"{checkout} is not a git checkout: {proc.stderr.strip()}", 2)
    return proc.stdout.strip()


def apply(checkout: Path, patch: Path = PATCH, check_only: bool = False) -> str:
    """Check and apply ``patch``; return what happened. Raises ApplyError."""
    if not patch.is_file():
        raise ApplyError(f"patch {patch} not found", 2)
    head = head_commit(checkout)
    notes = []
    if head != PINNED_COMMIT:
        notes.append(f"warning: checkout is at {head[:12]}, the patch was made against {PINNED_COMMIT[:12]}")
    if _git(checkout, "apply", "--check", "--reverse", str(patch)).returncode == 0:
        return "\n".join([*notes, "already applied: nothing to do"])
    checked = _git(checkout, "apply", "--check", "--verbose", str(patch))
    if checked.returncode != 0:
        raise ApplyError(
            "\n".join(
                [
                    *notes,
                    f"the patch does not apply to {checkout} at {head[:12]}; nothing was changed.",
                    f"It applies to apache/openwhisk {PINNED_COMMIT}: `git checkout {PINNED_COMMIT[:12]}`",
                    "or port the hunks by hand. git said:",
                    checked.stderr.strip(),
                ]
            ),
            1,
        )
    if check_only:
        return "\n".join([*notes, "the patch applies cleanly", checked.stderr.strip()])
    applied = _git(checkout, "apply", "--verbose", str(patch))
    if applied.returncode != 0:
        raise ApplyError(f"git apply failed after a clean check: {applied.stderr.strip()}", 1)
    stat = _git(checkout, "apply", "--stat", str(patch)).stdout.strip()
    return "\n".join([*notes, "applied:", stat])


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the GPU routing patch to an OpenWhisk checkout.")
    parser.add_argument("checkout", type=Path, help="the OpenWhisk git checkout")
    parser.add_argument("--patch", type=Path, default=PATCH, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="only check that it applies")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        print(apply(args.checkout, args.patch, check_only=args.check))
    except ApplyError as e:
        print(f"apply_patch: error: {e}", file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
