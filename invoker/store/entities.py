"""Reading (and, for tests and the standalone mode, writing) action documents.

Follows OpenWhisk's ``InvokerReactive.scala`` and ``WhiskAction.scala``: fetch by id and revision, check the entity
type, and resolve the code wherever the controller put it (inline string, ``mem:``
URI, CouchDB attachment, or a legacy attachment name).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import logging
import re
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

from invoker.errors import DocumentTypeMismatch, UnsupportedAttachmentStore
from invoker.store.database import Database, DocumentConflict, DocumentNotFound, StoreError

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = "text/plain; charset=UTF-8"
BINARY_CONTENT_TYPE = "application/octet-stream"
# whisk.db.max-inline-size: code below this many bytes is inlined in the document as a mem: URI.
DEFAULT_INLINE_LIMIT = 16 * 1024

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class ActionDocument:
    """An action document and its resolved code.

    ``code`` is text: the source, or standard base64 when ``exec.binary`` is true; None
    when the action has no code (sequences, blackbox without a zip). ``doc`` is shared
    with the cache: treat it as read-only.
    """

    doc: dict
    code: str | None


class EntityStore:
    """Actions from the whisks database, cached by (docid, rev).

    An action is immutable per revision, so cached entries never need invalidating;
    a fetch without a revision always goes to the database.
    """

    def __init__(self, db: Database, cache_size: int = 1024,
                 cache_max_bytes: int = 256 * 1024 * 1024) -> None:
        self.db = db
        self.cache_size = cache_size
        self.cache_max_bytes = cache_max_bytes
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], ActionDocument] = OrderedDict()
        self._cache_bytes = 0
        # Concurrent first fetches of one revision wait for a single database read.
        self._inflight: dict[tuple[str, str], Future[ActionDocument]] = {}

    # ------------------------------------------------------------------ read

    def get_action(self, docid: str, rev: str | None = None) -> ActionDocument:
        if rev is None:
            return self._fetch(docid, None)
        key = (docid, rev)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            pending = self._inflight.get(key)
            owner = pending is None
            if pending is None:
                pending = self._inflight[key] = Future()
        if not owner:
            return pending.result()
        try:
            action = self._fetch(docid, rev)
        except BaseException as error:
            with self._lock:
                del self._inflight[key]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._inflight[key]
            # Only under the revision it really has: a fallback to latest must not be
            # served later for the revision that was asked for.
            if action.doc.get("_rev") == rev:
                self._remember(key, action)
        pending.set_result(action)
        return action

    def _remember(self, key: tuple[str, str], action: ActionDocument) -> None:
        size = len(action.code or "")
        if size > self.cache_max_bytes or self.cache_size <= 0:
            return
        self._cache[key] = action
        self._cache_bytes += size
        while len(self._cache) > self.cache_size or self._cache_bytes > self.cache_max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted.code or "")

    def _fetch(self, docid: str, rev: str | None) -> ActionDocument:
        doc = self._get_document(docid, rev)
        if doc.get("entityType") != "action":
            raise DocumentTypeMismatch(
                f"{docid} is a {doc.get('entityType')!r} document, not an action"
            )
        return ActionDocument(doc, self._code(doc))

    def _get_document(self, docid: str, rev: str | None) -> dict:
        if rev is None:
            return self.db.get(docid)
        try:
            doc = self.db.get(docid, rev)
        except DocumentNotFound:
            # The revision may have been compacted away after an update; the action
            # itself may still exist, and the Scala invoker would run the latest.
            doc = None
        if doc is not None and doc.get("_rev") == rev:
            return doc
        log.info("action %s: revision %s not served; retrying with the latest", docid, rev)
        return self.db.get(docid)

    def _code(self, doc: dict) -> str | None:
        exec_ = doc.get("exec")
        if not isinstance(exec_, dict):
            return None  # the action reader reports the missing exec
        # Old Java actions keep the jar under "jar" instead of "code".
        field = exec_["code"] if exec_.get("code") is not None else exec_.get("jar")
        if field is None or isinstance(field, str):
            return field
        if not isinstance(field, dict) or not isinstance(field.get("attachmentName"), str):
            raise DocumentTypeMismatch(f"{doc.get('_id')}: exec.code is neither a string nor an attachment")
        content_type = str(field.get("attachmentType") or "")
        binary = exec_.get("binary")
        if not isinstance(binary, bool):
            binary = not content_type.startswith("text/")
        data = self._attachment_bytes(doc, field["attachmentName"])
        if binary:
            # /init takes text: binary code travels as standard base64.
            return base64.b64encode(data).decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DocumentTypeMismatch(f"{doc.get('_id')}: text code is not UTF-8") from None

    def _attachment_bytes(self, doc: dict, name: str) -> bytes:
        docid = str(doc.get("_id"))
        match = _SCHEME.match(name)
        scheme = match.group(1).lower() if match else None
        if scheme == "mem":
            encoded = name[len("mem:"):]
            try:
                # URL-safe base64; tolerate a writer that dropped the padding.
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                raise DocumentTypeMismatch(f"{docid}: mem: attachment is not base64") from None
        if scheme == "couch":
            attachment = name[len("couch:"):]
        elif scheme is None:
            attachment = name  # legacy: a plain attachment name such as "jarfile"
        else:
            raise UnsupportedAttachmentStore(
                f"{docid}: code is in the {scheme!r} attachment store, which this invoker does not read"
            )
        stubs = doc.get("_attachments")
        if not isinstance(stubs, dict) or attachment not in stubs:
            # Like the CouchDB read itself failing with 404: the code is not there.
            raise DocumentNotFound(f"{docid}: attachment {attachment!r} is missing")
        return self.db.get_attachment(docid, attachment, doc.get("_rev"))

    # ------------------------------------------------------------------ write

    def put_action(self, doc: dict, code: str, binary: bool,
                   inline_limit: int = DEFAULT_INLINE_LIMIT, overwrite: bool = True) -> str:
        """Store an action the way the controller does; returns the new revision.

        ``code`` is the source, or base64 when ``binary``. Binary code is stored as
        its decoded bytes. Code under ``inline_limit`` bytes goes into the document as
        a ``mem:`` URI; larger code becomes a ``couch:<uuid>`` attachment, written
        after the document (two revisions, as the controller writes them).

        With ``overwrite`` and no ``_rev`` in ``doc``, an existing action of that id is
        replaced (``wsk action update``); without it, that raises DocumentConflict.
        """
        docid = doc.get("_id")
        if not isinstance(docid, str):
            raise ValueError("an action document needs its _id (namespace/name)")
        if binary:
            try:
                data = base64.b64decode(code.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("binary code must be base64") from None
        else:
            data = code.encode("utf-8")
        content_type = BINARY_CONTENT_TYPE if binary else TEXT_CONTENT_TYPE
        new = copy.deepcopy(doc)
        # A new revision lists no attachment, so CouchDB drops the previous code attachment.
        new.pop("_attachments", None)
        new.setdefault("entityType", "action")
        exec_ = dict(new.get("exec") or {})
        exec_["binary"] = binary
        exec_.pop("jar", None)
        attachment: str | None = None
        if len(data) < inline_limit:
            exec_["code"] = {
                "attachmentName": "mem:" + base64.urlsafe_b64encode(data).decode("ascii"),
                "attachmentType": content_type,
                "length": len(data),
                "digest": "sha256-" + hashlib.sha256(data).hexdigest(),
            }
        else:
            attachment = str(uuid.uuid4())
            exec_["code"] = {"attachmentName": f"couch:{attachment}", "attachmentType": content_type}
        new["exec"] = exec_

        attempts = 3 if overwrite and "_rev" not in doc else 1
        for attempt in range(attempts):
            if overwrite and "_rev" not in doc:
                current = self._current_rev(docid)
                if current is None:
                    new.pop("_rev", None)
                else:
                    new["_rev"] = current
            try:
                rev = self.db.put(new)
                break
            except DocumentConflict:
                # Someone wrote the action in between: take their revision and replace it.
                if attempt == attempts - 1:
                    raise
        if attachment is not None:
            try:
                rev = self.db.put_attachment(docid, rev, attachment, data, content_type)
            except StoreError:
                if "_rev" not in new:  # a new action: take back its code-less document
                    self._undo_create(docid, rev)
                raise
        return rev

    def _undo_create(self, docid: str, rev: str) -> None:
        try:
            self.db.delete(docid, rev)
        except StoreError as error:
            log.error("action %s is stored without its code (%s); delete it and create it again", docid, error)

    def delete_action(self, docid: str, rev: str | None = None) -> None:
        """Delete an action (its latest revision unless ``rev`` is given)."""
        if rev is None:
            rev = str(self.db.get(docid)["_rev"])
        self.db.delete(docid, rev)
        with self._lock:
            for key in [k for k in self._cache if k[0] == docid]:
                self._cache_bytes -= len(self._cache.pop(key).code or "")

    def _current_rev(self, docid: str) -> str | None:
        try:
            return str(self.db.get(docid)["_rev"])
        except DocumentNotFound:
            return None
