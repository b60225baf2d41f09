"""Content digests of model files, remembered per (path, size, mtime) in the cache directory.

The digest keys the split cache and the resident registry (the same file in two containers
has one key). Hashing a large file costs about a second per GB, so ``digests.json`` keeps
the digest of a file that has not changed since it was last hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ModelNotFoundError


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(f"model file {str(path)!r} not found") from None
    if not path.is_file():
        raise ModelNotFoundError(f"model path {str(path)!r} is not a file")
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = cache_dir / "digests.json" if cache_dir else None
    memo: dict[str, str] = {}
    if memo_file and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except ValueError:
            memo = {}
        if stamp in memo:
            return memo[stamp]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    if memo_file:
        memo[stamp] = digest
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    return digest
