"""The document-database seam: CouchDB over HTTP, or the embedded in-process store.

Everything above this module (action fetching, activation writing) talks to a
``Database``; the two implementations are ``couchdb.CouchDatabase`` and
``embedded.EmbeddedDatabase``. Documents are plain JSON dicts, as CouchDB keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The store's errors belong to the invoker's one tree (invoker.errors); importable from here too.
from invoker.errors import DocumentConflict as DocumentConflict
from invoker.errors import DocumentNotFound as DocumentNotFound
from invoker.errors import StoreError as StoreError
from invoker.errors import StoreUnavailable as StoreUnavailable


@dataclass(frozen=True)
class BulkResult:
    """Outcome of one document of a bulk write."""

    id: str
    ok: bool
    rev: str | None = None
    conflict: bool = False
    error: str | None = None


class Database(Protocol):
    """One CouchDB database (or its embedded stand-in)."""

    name: str

    def ensure_exists(self) -> None:
        """Create the database if it is missing."""

    def get(self, docid: str, rev: str | None = None) -> dict:
        """The document, at ``rev`` when given. Raises DocumentNotFound."""

    def exists(self, docid: str) -> bool:
        """Whether a document with this id exists (any revision)."""

    def get_attachment(self, docid: str, name: str, rev: str | None = None) -> bytes:
        """Raw bytes of an attachment. Raises DocumentNotFound."""

    def put(self, doc: dict) -> str:
        """Create or update (``_rev`` in doc) a document; returns the new revision.
        Raises DocumentConflict."""

    def put_attachment(
        self, docid: str, rev: str, name: str, data: bytes, content_type: str
    ) -> str:
        """Attach bytes to a document revision; returns the new revision."""

    def delete(self, docid: str, rev: str) -> None:
        """Delete a document revision."""

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        """Write several documents in one request (CouchDB ``_bulk_docs``)."""

    def all_docs(self, include_docs: bool = False, limit: int | None = None,
                 descending: bool = False, startkey: str | None = None,
                 endkey: str | None = None) -> list[dict]:
        """Rows of ``_all_docs``: ``{"id", "key", "value": {"rev"}, "doc"?}``."""
