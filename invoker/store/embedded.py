"""An in-process, thread-safe stand-in for CouchDB: what runs when no CouchDB is configured.

It keeps CouchDB's observable behaviour where the invoker depends on it: revisions
``N-<md5 hex>``, conflicts on a stale or missing ``_rev``, attachments listed as
``_attachments`` stubs, ``_bulk_docs`` per-document results, ``_all_docs`` in id order,
and operations on a database that was never created failing as not found.

Data lives in memory; with a directory, each database is also written to one JSON file
(atomically, before the call returns) so a standalone invoker keeps it across restarts. A
write the file cannot take (a full disk) is undone in memory too and raises
``StoreUnavailable``: memory and disk always hold the same documents.

A database may have a ``Retention`` (standalone mode gives one to the activations database):
documents beyond a count, or older than an age, are purged, oldest write first, as OpenWhisk's
activation stores expire records by TTL.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from invoker.store.database import (
    BulkResult,
    DocumentConflict,
    DocumentNotFound,
    StoreError,
    StoreUnavailable,
)

_FORMAT = 1
# CouchDB keeps old revision bodies until compaction; a few are enough to read the
# revision an in-flight activation names after its action was updated.
KEEP_REVISIONS = 10
_RESERVED_PREFIXES = ("_design/", "_local/")


@dataclass(frozen=True)
class Retention:
    """How many documents a database keeps, and for how long (``None``: no bound)."""

    max_docs: int | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"a retention keeps at least one document, not {self.max_docs}")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError(f"a retention age must be positive, not {self.max_age_s}")

    def describe(self) -> str:
        kept = [f"newest {self.max_docs} kept" if self.max_docs is not None else "",
                f"for {_duration(self.max_age_s)}" if self.max_age_s is not None else ""]
        return ", ".join(k for k in kept if k) or "all kept"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class _Attachment:
    content_type: str
    data: bytes
    digest: str  # "md5-<base64>", as CouchDB writes it
    revpos: int

    def stub(self) -> dict:
        return {"content_type": self.content_type, "revpos": self.revpos, "digest": self.digest,
                "length": len(self.data), "stub": True}


@dataclass(frozen=True)
class _Revision:
    rev: str
    body: dict  # without any "_" member; never handed out, only copies of it
    deleted: bool = False
    attachments: dict[str, _Attachment] = field(default_factory=dict)

    @property
    def generation(self) -> int:
        return int(self.rev.split("-", 1)[0])


def _md5_digest(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _json_copy(value: Any) -> Any:
    """A deep copy that also rejects what JSON cannot hold, as CouchDB would."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise StoreError(f"document is not JSON: {error}") from None


class EmbeddedDatabase:
    """One database of an ``EmbeddedServer``; implements ``database.Database``."""

    def __init__(self, name: str, path: Path | None, retention: Retention | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._path = path
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        self._created = False
        self._docs: dict[str, list[_Revision]] = {}  # oldest first; the last one is current
        self._written: dict[str, float] = {}  # each document's last write (epoch s), oldest first
        if path is not None and path.exists():
            self._load(path)

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "in memory"
        return f"EmbeddedDatabase({self.name!r}, {where})"

    # ------------------------------------------------------------------ Database

    def ensure_exists(self) -> None:
        with self._lock:
            if not self._created:
                with self._durable():
                    self._created = True

    def get(self, docid: str, rev: str | None = None) -> dict:
        with self._lock:
            self._expire()
            revision = self._revision(docid, rev)
            if revision.deleted:
                # CouchDB answers a request for a tombstone revision with the tombstone.
                return {"_id": docid, "_rev": revision.rev, "_deleted": True}
            return self._render(docid, revision)

    def exists(self, docid: str) -> bool:
        with self._lock:
            self._check_created()
            self._expire()
            current = self._current(docid)
            return current is not None and not current.deleted

    def get_attachment(self, docid: str, name: str, rev: str | None = None) -> bytes:
        with self._lock:
            self._expire()
            revision = self._revision(docid, rev)
            attachment = revision.attachments.get(name)
            if revision.deleted or attachment is None:
                raise DocumentNotFound(f"{self.name}/{docid}: no attachment {name!r}")
            return attachment.data

    def put(self, doc: dict) -> str:
        with self._lock:
            self._check_created()
            with self._durable():
                return self._write(doc)

    def put_attachment(self, docid: str, rev: str, name: str, data: bytes, content_type: str) -> str:
        with self._lock:
            self._check_created()
            current = self._current(docid)
            if current is None or current.deleted or current.rev != rev:
                raise DocumentConflict(f"{self.name}/{docid}: {rev} is not the current revision")
            generation = current.generation + 1
            attachments = dict(current.attachments)
            attachments[name] = _Attachment(content_type, bytes(data), _md5_digest(data), generation)
            new = _Revision(self._next_rev(current, current.body, False, attachments), current.body,
                            False, attachments)
            with self._durable():
                self._append(docid, new)
            return new.rev

    def delete(self, docid: str, rev: str) -> None:
        with self._lock:
            self._check_created()
            if self._current(docid) is None:
                raise DocumentNotFound(f"{self.name}/{docid}: missing")
            # On a deleted document CouchDB answers 409: the tombstone is the current revision.
            with self._durable():
                self._write({"_id": docid, "_rev": rev, "_deleted": True})

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        """Per-document results, as ``_bulk_docs``; a batch the disk cannot take is undone whole
        (StoreUnavailable), as the one file write it is."""
        with self._lock:
            self._check_created()
            with self._durable():
                return self._bulk_write(docs)

    def _bulk_write(self, docs: list[dict]) -> list[BulkResult]:
        results: list[BulkResult] = []
        for doc in docs:
            docid = doc.get("_id") or uuid.uuid4().hex
            try:
                rev = self._write({**doc, "_id": docid})
            except DocumentConflict:
                results.append(BulkResult(id=docid, ok=False, conflict=True,
                                          error="conflict: Document update conflict"))
            except StoreError as error:
                results.append(BulkResult(id=docid, ok=False, error=str(error)))
            else:
                results.append(BulkResult(id=docid, ok=True, rev=rev))
        return results

    def all_docs(self, include_docs: bool = False, limit: int | None = None,
                 descending: bool = False, startkey: str | None = None,
                 endkey: str | None = None) -> list[dict]:
        with self._lock:
            self._check_created()
            self._expire()
            # _all_docs collates doc ids by code point (CouchDB's raw collation).
            ids = sorted((i for i, revs in self._docs.items() if not revs[-1].deleted),
                         reverse=descending)
            rows: list[dict] = []
            for docid in ids:
                # With descending, CouchDB expects startkey to be the larger key.
                if startkey is not None and (docid > startkey if descending else docid < startkey):
                    continue
                if endkey is not None and (docid < endkey if descending else docid > endkey):
                    continue
                if limit is not None and len(rows) >= limit:
                    break
                current = self._docs[docid][-1]
                row: dict = {"id": docid, "key": docid, "value": {"rev": current.rev}}
                if include_docs:
                    row["doc"] = self._render(docid, current)
                rows.append(row)
            return rows

    # ------------------------------------------------------------------ internals

    def _check_created(self) -> None:
        if not self._created:
            raise DocumentNotFound(f"database {self.name!r} does not exist")

    def _current(self, docid: str) -> _Revision | None:
        revisions = self._docs.get(docid)
        return revisions[-1] if revisions else None

    def _revision(self, docid: str, rev: str | None) -> _Revision:
        self._check_created()
        revisions = self._docs.get(docid)
        if not revisions:
            raise DocumentNotFound(f"{self.name}/{docid}: missing")
        if rev is None:
            if revisions[-1].deleted:
                raise DocumentNotFound(f"{self.name}/{docid}: deleted")
            return revisions[-1]
        for revision in revisions:
            if revision.rev == rev:
                return revision
        raise DocumentNotFound(f"{self.name}/{docid}: no revision {rev}")

    def _render(self, docid: str, revision: _Revision) -> dict:
        doc: dict = {"_id": docid, "_rev": revision.rev}
        doc.update(_json_copy(revision.body))
        if revision.attachments:
            doc["_attachments"] = {name: a.stub() for name, a in revision.attachments.items()}
        return doc

    def _next_rev(self, previous: _Revision | None, body: dict, deleted: bool,
                  attachments: dict[str, _Attachment]) -> str:
        # Deterministic in the content and its parent, as CouchDB's revision ids are.
        generation = previous.generation + 1 if previous is not None else 1
        digest = hashlib.md5()
        digest.update((previous.rev if previous is not None else "").encode())
        digest.update(b"\0" + (b"1" if deleted else b"0"))
        digest.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
        for name in sorted(attachments):
            digest.update(f"\0{name}\0{attachments[name].digest}".encode())
        return f"{generation}-{digest.hexdigest()}"

    def _write(self, doc: dict) -> str:
        """Validate and apply one document write; the caller holds the lock and saves."""
        docid = doc.get("_id")
        if docid is None:
            docid = uuid.uuid4().hex
        if not isinstance(docid, str) or not docid:
            raise StoreError("bad_request: document id must be a non-empty string")
        if docid.startswith("_") and not docid.startswith(_RESERVED_PREFIXES):
            raise StoreError("bad_request: only reserved document ids may start with underscore")
        current = self._current(docid)
        given = doc.get("_rev")
        if current is None:
            stale = given is not None
        elif current.deleted:
            # A deleted document may be recreated without a revision, continuing its history.
            stale = given is not None and given != current.rev
        else:
            stale = given != current.rev
        if stale:
            raise DocumentConflict(f"{self.name}/{docid}: document update conflict")
        deleted = bool(doc.get("_deleted", False))
        body = {} if deleted else _json_copy({k: v for k, v in doc.items() if not k.startswith("_")})
        live = current if current is not None and not current.deleted else None
        attachments = {} if deleted else self._attachments(doc.get("_attachments"), live,
                                                           (current.generation if current else 0) + 1)
        revision = _Revision(self._next_rev(current, body, deleted, attachments), body, deleted,
                             attachments)
        self._append(docid, revision)
        return revision.rev

    def _attachments(self, given: Any, current: _Revision | None, generation: int) -> dict[str, _Attachment]:
        """CouchDB semantics: stubs keep existing attachments, inline ``data`` adds new
        ones, and attachments the new revision does not mention are dropped."""
        if not given:
            return {}
        if not isinstance(given, dict):
            raise StoreError("bad_request: _attachments must be an object")
        result: dict[str, _Attachment] = {}
        for name, spec in given.items():
            if not isinstance(spec, dict):
                raise StoreError(f"bad_request: attachment {name!r} must be an object")
            if spec.get("stub"):
                existing = current.attachments.get(name) if current is not None else None
                if existing is None:
                    raise StoreError(f"missing_stub: attachment {name!r} does not exist")
                result[name] = existing
            elif "data" in spec:
                try:
                    data = base64.b64decode(spec["data"], validate=True)
                except (TypeError, ValueError):
                    raise StoreError(f"bad_request: attachment {name!r} data is not base64") from None
                content_type = str(spec.get("content_type", "application/octet-stream"))
                result[name] = _Attachment(content_type, data, _md5_digest(data), generation)
            else:
                raise StoreError(f"bad_request: attachment {name!r} has neither stub nor data")
        return result

    def _append(self, docid: str, revision: _Revision) -> None:
        revisions = self._docs.setdefault(docid, [])
        revisions.append(revision)
        del revisions[:-KEEP_REVISIONS]
        self._written.pop(docid, None)
        self._written[docid] = self._clock()

    # ------------------------------------------------------------------ retention

    def _expire(self) -> None:
        """Purge what the retention no longer keeps, oldest write first. On a read the purge
        is not saved (the next write saves it): a restart reads the same write times and
        purges the same documents again."""
        if self.retention is None:
            return
        max_docs, max_age_s = self.retention.max_docs, self.retention.max_age_s
        oldest_kept = self._clock() - max_age_s if max_age_s is not None else None
        while self._written:
            docid, written = next(iter(self._written.items()))
            too_many = max_docs is not None and len(self._written) > max_docs
            too_old = oldest_kept is not None and written < oldest_kept
            if not (too_many or too_old):
                break
            del self._written[docid]
            del self._docs[docid]

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """Apply a change in memory, then on disk; if the disk refuses it (full, read-only),
        undo it in memory too, so both keep holding the same documents."""
        if self._path is None:
            yield
            self._expire()
            return
        # Revisions are immutable: copying the lists is enough to restore them.
        docs = {docid: list(revisions) for docid, revisions in self._docs.items()}
        written, created = dict(self._written), self._created
        yield
        self._expire()
        try:
            self._save()
        except OSError as error:
            self._docs, self._written, self._created = docs, written, created
            raise StoreUnavailable(f"{self.name}: cannot write {self._path}: {error}") from error

    # ------------------------------------------------------------------ persistence

    def _save(self) -> None:
        """Write the whole database to its file: a temp file then ``os.replace``, so a
        crash leaves either the old or the new state, never half of one."""
        if self._path is None:
            return
        blobs: dict[str, str] = {}  # attachment bytes once per digest, however many revisions share them
        docs: dict[str, list[dict]] = {}
        for docid, revisions in self._docs.items():
            out = []
            for r in revisions:
                atts = {}
                for name, a in r.attachments.items():
                    blobs.setdefault(a.digest, base64.b64encode(a.data).decode("ascii"))
                    atts[name] = {"content_type": a.content_type, "digest": a.digest, "revpos": a.revpos}
                out.append({"rev": r.rev, "deleted": r.deleted, "body": r.body, "attachments": atts})
            docs[docid] = out
        state = {"format": _FORMAT, "name": self.name, "docs": docs, "blobs": blobs, "written": self._written}
        directory = self._path.parent
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out_file:
                json.dump(state, out_file, separators=(",", ":"))
                out_file.flush()
                os.fsync(out_file.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as in_file:
            state = json.load(in_file)
        if state.get("format") != _FORMAT:
            raise StoreError(f"{path}: unknown embedded store format {state.get('format')!r}")
        blobs = {digest: base64.b64decode(data) for digest, data in state.get("blobs", {}).items()}
        for docid, revisions in state.get("docs", {}).items():
            self._docs[docid] = [
                _Revision(
                    r["rev"], r["body"], bool(r["deleted"]),
                    {name: _Attachment(a["content_type"], blobs[a["digest"]], a["digest"], a["revpos"])
                     for name, a in r["attachments"].items()},
                )
                for r in revisions
            ]
        # Files written before retention existed have no write times: count them as new now.
        now = self._clock()
        written = state.get("written", {})
        self._written = {docid: float(written.get(docid, now)) for docid in self._docs}
        self._written = dict(sorted(self._written.items(), key=lambda item: item[1]))
        self._created = True

    def _drop(self) -> None:
        with self._lock:
            self._docs.clear()
            self._written.clear()
            self._created = False
            if self._path is not None:
                self._path.unlink(missing_ok=True)


class EmbeddedServer:
    """A set of embedded databases, in memory or persisted under ``directory``.

    ``database(name)`` returns the same object for the same name, so every component
    of one process sees the same data.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 retention: dict[str, Retention] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._retention = dict(retention or {})  # by database name
        self._clock = clock
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._databases: dict[str, EmbeddedDatabase] = {}

    def __repr__(self) -> str:
        return f"EmbeddedServer({str(self.directory) if self.directory else 'in memory'})"

    def _file(self, name: str) -> Path | None:
        # Database names may contain "/"; one flat file per database keeps loading simple.
        return self.directory / f"{quote(name, safe='')}.json" if self.directory is not None else None

    def database(self, name: str) -> EmbeddedDatabase:
        with self._lock:
            db = self._databases.get(name)
            if db is None:
                db = self._databases[name] = EmbeddedDatabase(name, self._file(name), self._retention.get(name),
                                                              self._clock)
            return db

    def delete_database(self, name: str) -> None:
        self.database(name)._drop()

    def close(self) -> None:
        """Nothing to release: every change is already on disk. Kept for symmetry with CouchServer."""
