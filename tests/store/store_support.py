"""Helpers shared by the store tests (imported as ``store_support``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoker.store.database import BulkResult, Database

MESSAGES = Path(__file__).resolve().parents[1] / "fixtures" / "messages"


def load_message(name: str) -> dict:
    return json.loads((MESSAGES / name).read_text(encoding="utf-8"))


def new_db_name() -> str:
    # CouchDB database names must start with a lowercase letter.
    return f"t_{uuid.uuid4().hex[:12]}"


class CountingDatabase:
    """A ``Database`` that counts (and can delay or intercept) the calls made to another."""

    def __init__(self, inner: Database) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self.before: dict[str, Callable[..., object]] = {}

    def _count(self, method: str, *args: Any) -> None:
        with self._lock:
            self.calls[method] += 1
            self.log.append((method, args))
        hook = self.before.get(method)
        if hook is not None:
            hook(*args)

    def ensure_exists(self) -> None:
        self._count("ensure_exists")
        self.inner.ensure_exists()

    def get(self, docid: str, rev: str | None = None) -> dict:
        self._count("get", docid, rev)
        return self.inner.get(docid, rev)

    def exists(self, docid: str) -> bool:
        self._count("exists", docid)
        return self.inner.exists(docid)

    def get_attachment(self, docid: str, name: str, rev: str | None = None) -> bytes:
        self._count("get_attachment", docid, name, rev)
        return self.inner.get_attachment(docid, name, rev)

    def put(self, doc: dict) -> str:
        self._count("put", doc.get("_id"))
        return self.inner.put(doc)

    def put_attachment(self, docid: str, rev: str, name: str, data: bytes, content_type: str) -> str:
        self._count("put_attachment", docid, name)
        return self.inner.put_attachment(docid, rev, name, data, content_type)

    def delete(self, docid: str, rev: str) -> None:
        self._count("delete", docid, rev)
        self.inner.delete(docid, rev)

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        self._count("bulk_put", len(docs))
        return self.inner.bulk_put(docs)

    def all_docs(self, include_docs: bool = False, limit: int | None = None,
                 descending: bool = False, startkey: str | None = None,
                 endkey: str | None = None) -> list[dict]:
        self._count("all_docs")
        return self.inner.all_docs(include_docs, limit, descending, startkey, endkey)
