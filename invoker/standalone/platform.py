"""The controller's work behind the REST API, on the real path: actions through the
``EntityStore``, activations published to ``invoker{N}`` and answered from
``completed{C}`` by ``EmbeddedController``, records read from the activation store."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from invoker.embedded.controller import EmbeddedController
from invoker.manifest import RuntimesManifest
from invoker.messages import ActivationMessage, FullyQualifiedEntityName, Identity, TransactionId
from invoker.standalone.entities import (
    SEQUENCE,
    ActionPut,
    action_json,
    action_summary,
    activation_json,
    activation_summary,
    new_action_document,
    sequence_document,
    updated_action_document,
)
from invoker.standalone.errors import ALREADY_EXISTS, CONFLICT, ApiError, runtime_deprecated
from invoker.store.database import Database, DocumentConflict, DocumentNotFound, StoreError
from invoker.store.entities import EntityStore

log = logging.getLogger(__name__)

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
        if old is not None and old.get("entityType") != "action":
            raise ApiError(409, "Resource by this name exists but is not in this collection.")
        old_kind = (old or {}).get("exec", {}).get("kind")
        if old is None:
            doc, code = new_action_document(self.namespace, name, put), put.code
        else:
            doc = updated_action_document(old, put)
            if old_kind == SEQUENCE and put.kind not in (None, SEQUENCE) and put.parameters is None:
                doc["parameters"] = []  # a sequence's _actions must not leak into a code action
            code = put.code if put.code is not None or put.kind == SEQUENCE else self.entities.get_action(docid).code
        try:
            # The revision read above guards the write: a concurrent writer makes it conflict.
            if doc["exec"]["kind"] == SEQUENCE:
                components = self._checked_components(name, put.components, old)
                doc = sequence_document(doc, components)
                rev, code = self.whisks.put(doc), None
            else:
                rev = self.entities.put_action(doc, code or "", bool(doc["exec"]["binary"]), overwrite=False)
        except DocumentConflict:
            raise ApiError(409, CONFLICT if old is not None else ALREADY_EXISTS) from None
        doc["_rev"] = rev
        return action_json(doc, code)

    def _checked_components(self, name: str, given: tuple[str, ...] | None, old: dict | None) -> list[str]:
        """Fully qualified ``/guest/name`` components that exist and are not sequences."""
        if given is None:  # an update that keeps the sequence's exec
            return list((old or {})["exec"]["components"])
        resolved = []
        for component in given:
            parts = component.strip("/").split("/")
            if len(parts) == 1:
                parts = ["_", *parts]
            if len(parts) != 2 or parts[0] not in ("_", self.namespace):
                raise ApiError(400, "Sequence component does not exist.")
            if parts[1] == name:
                raise ApiError(400, "Sequence may not refer to itself.")
            try:
                target = self.whisks.get(self._docid(parts[1]))
            except DocumentNotFound:
                raise ApiError(400, "Sequence component does not exist.") from None
            if target.get("entityType") != "action":
                raise ApiError(400, "Sequence component does not exist.")
            if (target.get("exec") or {}).get("kind") == SEQUENCE:
                raise ApiError(400, "A sequence inside a sequence is not supported in standalone mode.")
            resolved.append(f"/{self.namespace}/{parts[1]}")
        return resolved

    def get_action(self, name: str, with_code: bool = True) -> dict:
        doc = self._document(name)
        return action_json(doc, self._code(doc) if with_code else None)

    def _code(self, doc: dict) -> str | None:
        if doc["exec"].get("kind") == SEQUENCE:
            return None
        return self.entities.get_action(doc["_id"], doc["_rev"]).code

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
        answer = action_json(doc, self._code(doc))
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
        if doc["exec"].get("kind") == SEQUENCE:
            return self._invoke_sequence(doc, payload or {}, blocking, wait_ms, transid)
        msg = self._publish(doc, payload, blocking, transid)
        if not blocking:
            return Invocation(msg.activation_id)
        record = self.controller.wait_for_result(msg.activation_id, wait_ms / 1000)
        if record is None:
            return Invocation(msg.activation_id)  # still running: 202, the record comes later
        return Invocation(msg.activation_id, activation_json(record.result))

    def _publish(self, doc: dict, payload: dict[str, Any] | None, blocking: bool, transid: TransactionId,
                 cause: str | None = None) -> ActivationMessage:
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
            user=self.identity, transid=transid, init_args=init_args, cause=cause,
        )
        self.controller.publish(self.invoker_instance, msg)
        return msg

    # ------------------------------------------------------------------ sequences

    def _invoke_sequence(self, doc: dict, payload: dict[str, Any], blocking: bool, wait_ms: int,
                         transid: TransactionId) -> Invocation:
        """Like the controller's SequenceActions: each component gets the previous result,
        the sequence's own record lists the component activations as its logs."""
        activation_id = uuid.uuid4().hex
        done: Future[dict] = Future()

        def run() -> None:
            try:
                done.set_result(self._run_sequence(doc, payload, activation_id, transid))
            except Exception as error:  # never lose the caller's wait to a bug
                log.exception("sequence %s failed", doc["_id"])
                done.set_exception(error)

        # A daemon thread: a sequence still waiting on components must not hold up shutdown.
        threading.Thread(target=run, name=f"sequence-{activation_id[:8]}", daemon=True).start()
        if not blocking:
            return Invocation(activation_id)
        try:
            return Invocation(activation_id, activation_json(done.result(timeout=wait_ms / 1000)))
        except FutureTimeout:
            return Invocation(activation_id)

    def _run_sequence(self, doc: dict, payload: dict[str, Any], activation_id: str,
                      transid: TransactionId) -> dict:
        start = int(time.time() * 1000)
        value: dict[str, Any] = payload
        response: dict[str, Any] = {"statusCode": 0, "result": payload}
        component_ids: list[str] = []
        duration = 0
        for component in doc["exec"]["components"]:
            try:
                component_doc = self._document(component.rsplit("/", 1)[1])
            except ApiError:
                response = {"statusCode": 1, "result": {"error": "Sequence component does not exist."}}
                break
            msg = self._publish(component_doc, value, True, transid, cause=activation_id)
            component_ids.append(msg.activation_id)
            wait_s = (component_doc.get("limits") or {}).get("timeout", 60_000) / 1000 + 60
            acks = self.controller.wait_for_result(msg.activation_id, wait_s)
            if acks is None:
                error = f"Timeout reached when retrieving activation {msg.activation_id} for sequence component."
                response = {"statusCode": 3, "result": {"error": error}}
                break
            activation = acks.result
            duration += int(activation.get("duration", activation["end"] - activation["start"]))
            response = {k: v for k, v in activation["response"].items() if k in ("statusCode", "result")}
            if response.get("statusCode") != 0:
                break
            result = response.get("result")
            value = result if isinstance(result, dict) else {}
        end = int(time.time() * 1000)
        record = {
            "_id": f"{self.namespace}/{activation_id}", "entityType": "activation",
            "namespace": self.namespace, "name": doc["name"], "subject": self.identity.subject,
            "activationId": activation_id, "start": start, "end": end, "duration": duration,
            "response": response, "logs": component_ids, "version": doc.get("version", "0.0.1"),
            "publish": False, "updated": end,
            "annotations": [{"key": "topmost", "value": True}, {"key": "path", "value": doc["_id"]},
                            {"key": "kind", "value": SEQUENCE}, {"key": "limits", "value": doc.get("limits") or {}}],
        }
        try:
            self.activations.put(record)
        except StoreError as error:
            log.error("sequence activation %s not recorded: %s", activation_id, error)
        return record

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
