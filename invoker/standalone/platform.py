"""The controller's work behind the REST API, on the real path: actions through the
``EntityStore``, activations published to ``invoker{N}`` and answered from
``completed{C}`` by ``EmbeddedController``, records read from the activation store."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from invoker.embedded.controller import EmbeddedController
from invoker.manifest import RuntimesManifest
from invoker.messages import FullyQualifiedEntityName, Identity, TransactionId
from invoker.standalone.entities import (
    ActionPut,
    action_json,
    action_summary,
    activation_json,
    activation_summary,
    new_action_document,
    updated_action_document,
)
from invoker.standalone.errors import ALREADY_EXISTS, CONFLICT, ApiError, runtime_deprecated
from invoker.store.database import Database, DocumentConflict, DocumentNotFound
from invoker.store.entities import EntityStore

MAX_BLOCKING_WAIT_MS = 60_000  # WhiskActionsApi.maxWaitForBlockingActivation


@dataclass(frozen=True)
class Invocation:
    """What an invoke answers: the activation (blocking, in time) or only its id."""

    activation_id: str
    activation: dict | None = None


def new_transid() -> TransactionId:
    return TransactionId.new(secrets.token_hex(16), int(time.time() * 1000))


class Platform:
    """One namespace's actions and activations. Thread-safe: the store and the
    controller are, and nothing here keeps state between requests."""

    def __init__(self, identity: Identity, whisks: Database, activations: Database, manifest: RuntimesManifest,
                 controller: EmbeddedController, invoker_instance: int = 0) -> None:
        self.identity = identity
        self.namespace = identity.namespace_name
        self.whisks = whisks
        self.entities = EntityStore(whisks)
        self.activations = activations
        self.manifest = manifest
        self.controller = controller
        self.invoker_instance = invoker_instance

    # ------------------------------------------------------------------ actions

    def _docid(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def _document(self, name: str) -> dict:
        try:
            doc = self.whisks.get(self._docid(name))
        except DocumentNotFound:
            raise ApiError.not_found() from None
        if doc.get("entityType") != "action":
            raise ApiError(409, "Resource by this name exists but is not in this collection.")
        return doc

    def put_action(self, name: str, put: ActionPut, overwrite: bool) -> dict:
        docid = self._docid(name)
        try:
            old = self.whisks.get(docid)
        except DocumentNotFound:
            old = None
        if old is not None and not overwrite:
            raise ApiError(409, ALREADY_EXISTS)
        if old is None:
            doc, code = new_action_document(self.namespace, name, put), put.code
        else:
            if old.get("entityType") != "action":
                raise ApiError(409, "Resource by this name exists but is not in this collection.")
            doc = updated_action_document(old, put)
            code = put.code if put.code is not None else self.entities.get_action(docid).code
        binary = bool(doc["exec"]["binary"])
        try:
            # The revision read above guards the write: a concurrent writer makes it conflict.
            rev = self.entities.put_action(doc, code or "", binary, overwrite=False)
        except DocumentConflict:
            raise ApiError(409, CONFLICT if old is not None else ALREADY_EXISTS) from None
        doc["_rev"] = rev
        return action_json(doc, code)

    def get_action(self, name: str, with_code: bool = True) -> dict:
        doc = self._document(name)
        code = self.entities.get_action(doc["_id"], doc["_rev"]).code if with_code else None
        return action_json(doc, code)

    def list_actions(self, skip: int, limit: int) -> list[dict]:
        docs = [d for d in self._namespace_docs(self.whisks)
                if d.get("entityType") == "action" and d.get("namespace") == self.namespace]
        docs.sort(key=lambda d: d.get("updated") or 0, reverse=True)
        return [action_summary(d) for d in docs[skip:skip + limit]]

    def count_actions(self) -> int:
        return sum(1 for d in self._namespace_docs(self.whisks)
                   if d.get("entityType") == "action" and d.get("namespace") == self.namespace)

    def delete_action(self, name: str) -> dict:
        doc = self._document(name)
        answer = action_json(doc, self.entities.get_action(doc["_id"], doc["_rev"]).code)
        try:
            self.entities.delete_action(doc["_id"], doc["_rev"])
        except DocumentConflict:
            raise ApiError(409, CONFLICT) from None
        except DocumentNotFound:
            raise ApiError.not_found() from None
        return answer

    def _namespace_docs(self, db: Database) -> list[dict]:
        prefix = f"{self.namespace}/"
        rows = db.all_docs(include_docs=True, startkey=prefix, endkey=prefix + "\ufff0")
        return [row["doc"] for row in rows if row.get("doc")]

    # ------------------------------------------------------------------ invoke

    def invoke(self, name: str, payload: dict[str, Any] | None, blocking: bool, wait_ms: int,
               transid: TransactionId) -> Invocation:
        doc = self._document(name)
        runtime = self.manifest.resolve(doc["exec"]["kind"])
        if runtime is not None and runtime.deprecated:
            raise ApiError(400, runtime_deprecated(runtime.kind))
        # The action's parameters, then the payload over them (PrimitiveActions.invokeSimpleAction).
        parameters = doc.get("parameters") or []
        content = {p["key"]: p["value"] for p in parameters}
        content.update(payload or {})
        init_args = tuple(p["key"] for p in parameters if p.get("init"))
        msg = self.controller.message(
            FullyQualifiedEntityName(self.namespace, doc["name"], doc.get("version", "0.0.1")),
            doc["_rev"], content, blocking=blocking, activation_id=uuid.uuid4().hex,
            user=self.identity, transid=transid, init_args=init_args,
        )
        self.controller.publish(self.invoker_instance, msg)
        if not blocking:
            return Invocation(msg.activation_id)
        record = self.controller.wait_for_result(msg.activation_id, wait_ms / 1000)
        if record is None:
            return Invocation(msg.activation_id)  # still running: 202, the record comes later
        return Invocation(msg.activation_id, activation_json(record.result))

    # ------------------------------------------------------------------ activations

    def get_activation(self, activation_id: str) -> dict:
        try:
            return self.activations.get(f"{self.namespace}/{activation_id}")
        except DocumentNotFound:
            raise ApiError.not_found() from None

    def list_activations(self, skip: int, limit: int, name: str | None, since: int | None, upto: int | None,
                         docs: bool) -> list[dict]:
        records = [r for r in self._namespace_docs(self.activations) if r.get("entityType") == "activation"]
        if name is not None:
            records = [r for r in records if r.get("name") == name
                       or _annotation(r, "path") == f"{self.namespace}/{name}"]
        if since is not None:
            records = [r for r in records if r.get("start", 0) >= since]
        if upto is not None:
            records = [r for r in records if r.get("start", 0) <= upto]
        records.sort(key=lambda r: r.get("start", 0), reverse=True)
        chosen = records[skip:skip + limit]
        return [activation_json(r) if docs else activation_summary(r) for r in chosen]


def _annotation(record: dict, key: str) -> Any:
    for item in record.get("annotations") or []:
        if item.get("key") == key:
            return item.get("value")
    return None
