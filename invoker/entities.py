"""Entity documents the invoker reads (``WhiskAction``) and writes (``WhiskActivation``).

Their shapes are OpenWhisk's ``WhiskAction.scala`` and ``WhiskActivation.scala``
(``common/scala/src/main/scala/org/apache/openwhisk/core/entity/``). Parsing is strict where the Scala reader is strict
(``timeout``/``memory`` limits, ``entityType``) and lenient where it is lenient.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from invoker.errors import DocumentUnreadable
from invoker.messages import ActivationMessage, JsonObject

# Limits defaults, OpenWhisk's (``LogLimit.scala``, ``ConcurrencyLimit.scala``).
DEFAULT_LOGS_MB = 10
DEFAULT_CONCURRENCY = 1


@dataclass(frozen=True)
class ActionLimits:
    timeout_ms: int
    memory_mb: int
    logs_mb: int = DEFAULT_LOGS_MB
    concurrency: int = DEFAULT_CONCURRENCY
    instances: int | None = None

    @classmethod
    def from_json(cls, value: Any) -> ActionLimits:
        if not isinstance(value, dict):
            raise DocumentUnreadable("action limits must be an object")
        try:
            return cls(
                timeout_ms=int(value["timeout"]),
                memory_mb=int(value["memory"]),
                logs_mb=int(value.get("logs", DEFAULT_LOGS_MB)),
                concurrency=int(value.get("concurrency", DEFAULT_CONCURRENCY)),
                instances=int(value["instances"]) if value.get("instances") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DocumentUnreadable(f"bad action limits: {error}") from error

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "timeout": self.timeout_ms,
            "memory": self.memory_mb,
            "logs": self.logs_mb,
            "concurrency": self.concurrency,
        }
        if self.instances is not None:
            out["instances"] = self.instances
        return out


@dataclass(frozen=True)
class LimitBounds:
    """What an action's limits and code may be on this invoker: OpenWhisk's ``whisk.memory``,
    ``whisk.timeLimit``, ``whisk.logLimit``, ``whisk.concurrencyLimit`` (min, max) and
    ``whisk.exec-size-limit``. The controller checks them when an action is written; the invoker
    checks them again before it runs one, so that a document written around the controller
    (``memory: 0``, a negative memory) can never become an unlimited container or add capacity.
    ``memory_max_mb`` None: no bound here (an action larger than the pool is refused anyway)."""

    memory_min_mb: int = 128
    memory_max_mb: int | None = None
    timeout_min_ms: int = 100
    timeout_max_ms: int = 300_000
    logs_min_mb: int = 0
    logs_max_mb: int = 10
    concurrency_min: int = 1
    concurrency_max: int = 500
    exec_size_bytes: int = 48 * 1024 * 1024

    def violation(self, limits: ActionLimits, code: str | None) -> str | None:
        """OpenWhisk's refusal text (``MemoryLimit``, ``TimeLimit``, ``LogLimit``,
        ``ConcurrencyLimit`` requirements; ``Messages.entityTooBig`` for the code), or None."""
        checks = (
            ("memory", limits.memory_mb, " MB", self.memory_min_mb, self.memory_max_mb),
            ("duration", limits.timeout_ms, " milliseconds", self.timeout_min_ms, self.timeout_max_ms),
            ("log size", limits.logs_mb, " MB", self.logs_min_mb, self.logs_max_mb),
            ("concurrency", limits.concurrency, "", self.concurrency_min, self.concurrency_max),
        )
        for what, value, unit, low, high in checks:
            if value < low:
                return f"requirement failed: {what} {value}{unit} below allowed threshold of {low}{unit}"
            if high is not None and value > high:
                return f"requirement failed: {what} {value}{unit} exceeds allowed threshold of {high}{unit}"
        if code is not None:
            size = len(code) if code.isascii() else len(code.encode("utf-8"))  # isascii is O(1)
            if size > self.exec_size_bytes:
                return f"exec larger than allowed: {size} > {self.exec_size_bytes} bytes."
        return None


@dataclass(frozen=True)
class Parameter:
    key: str
    value: Any
    init: bool = False
    encryption: str | None = None


def parse_key_values(value: Any) -> tuple[Parameter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DocumentUnreadable("parameters/annotations must be an array")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise DocumentUnreadable(f"bad parameter {item!r}")
        out.append(
            Parameter(item["key"], item.get("value"), bool(item.get("init", False)), item.get("encryption"))
        )
    return tuple(out)


_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def is_binary_code(code: str) -> bool:
    """Exec.isBinaryCode: trimmed, non-empty, a multiple of 4 and base64 alphabet."""
    trimmed = code.strip()
    if not trimmed or len(trimmed) % 4 != 0 or not _BASE64.match(trimmed):
        return False
    try:
        base64.b64decode(trimmed, validate=True)
    except binascii.Error:
        return False
    return True


@dataclass(frozen=True)
class WhiskAction:
    """An executable action: the document fields the invoker needs, plus its code."""

    namespace: str  # EntityPath: ns or ns/pkg
    name: str
    kind: str
    code: str | None
    binary: bool
    main: str | None
    image: str | None
    limits: ActionLimits
    version: str
    rev: str | None
    parameters: tuple[Parameter, ...] = ()
    annotations: tuple[Parameter, ...] = ()

    @classmethod
    def from_document(cls, doc: JsonObject, code: str | None) -> WhiskAction:
        if doc.get("entityType", "action") != "action":
            raise DocumentUnreadable(f"document is a {doc.get('entityType')!r}, not an action")
        exec_ = doc.get("exec")
        if not isinstance(exec_, dict) or not isinstance(exec_.get("kind"), str):
            raise DocumentUnreadable("action has no exec kind")
        kind = exec_["kind"].strip().lower()
        if "limits" not in doc:
            raise DocumentUnreadable("action has no limits")
        binary = exec_.get("binary")
        if not isinstance(binary, bool):
            binary = is_binary_code(code) if code else False
        return cls(
            namespace=str(doc["namespace"]),
            name=str(doc["name"]),
            kind=kind,
            code=code,
            binary=binary,
            main=exec_.get("main") or None,
            image=exec_.get("image"),
            limits=ActionLimits.from_json(doc["limits"]),
            version=str(doc.get("version", "0.0.1")),
            rev=doc.get("_rev"),
            parameters=parse_key_values(doc.get("parameters")),
            annotations=parse_key_values(doc.get("annotations")),
        )

    @property
    def path(self) -> str:
        """``namespace/name``, the ``path`` annotation of an activation."""
        return f"{self.namespace}/{self.name}"

    @property
    def fully_qualified_name(self) -> str:
        return f"/{self.path}"

    def annotation(self, key: str, default: Any = None) -> Any:
        for item in self.annotations:
            if item.key == key:
                return item.value
        return default

    @property
    def provide_api_key(self) -> bool:
        """``provide-api-key``: absent means yes; only a falsy value withholds the key."""
        value = self.annotation("provide-api-key", True)
        return value not in (False, None, 0, "", "false")

    @property
    def is_sequence(self) -> bool:
        return self.kind == "sequence"

    @property
    def identity_key(self) -> tuple:
        """What makes two actions 'the same' for warm reuse: content, not only name."""
        return (self.path, self.rev, self.kind, self.version, self.limits, self.main)


# --------------------------------------------------------------------------- activations

SUCCESS = 0
APPLICATION_ERROR = 1
DEVELOPER_ERROR = 2
WHISK_ERROR = 3


class Messages:
    """OpenWhisk's own error texts (``Messages.scala``), word for word."""

    @staticmethod
    def timed_out(timeout_ms: int, init: bool) -> str:
        suffix = " during initialization." if init else "."
        return f"The action exceeded its time limits of {timeout_ms} milliseconds{suffix}"

    @staticmethod
    def truncated(length: int, limit: int, prefix: str) -> str:
        return (
            f"The action produced a response that exceeded the allowed length: {length} > {limit} bytes. "
            f"The truncated response was: {prefix}"
        )

    @staticmethod
    def invalid_run_response(body: str) -> str:
        if body:
            return f"The action did not produce a valid JSON or JSON Array response: {body}"
        return "The action did not produce a valid JSON or JSON Array response."

    @staticmethod
    def invalid_init_response(body: str) -> str:
        if body:
            return f"The action failed during initialization: {body}"
        return "The action failed during initialization."

    memory_exhausted = "The action exhausted its memory and was aborted."
    abnormal_run = "The action did not produce a valid response and exited unexpectedly."
    abnormal_init = "The action did not initialize and exited unexpectedly."
    resource_error = "Failed to provision resources to run the action."
    action_not_found = "Action could not be found or may have been deleted."
    action_incompatible = "Action version is not compatible and cannot be invoked."
    action_fetch_failed = "Action could not be fetched."
    blacklisted = "The action was not invoked due to a blacklisted namespace."


@dataclass(frozen=True)
class ActivationResponse:
    status_code: int
    result: Any = None
    size: int | None = None
    has_result: bool = True

    @classmethod
    def success(cls, result: Any, size: int | None = None) -> ActivationResponse:
        return cls(SUCCESS, result, size)

    @classmethod
    def application_error(cls, error: Any, size: int | None = None) -> ActivationResponse:
        return cls(APPLICATION_ERROR, {"error": error}, size)

    @classmethod
    def developer_error(cls, error: Any, size: int | None = None) -> ActivationResponse:
        return cls(DEVELOPER_ERROR, {"error": error}, size)

    @classmethod
    def whisk_error(cls, error: Any) -> ActivationResponse:
        return cls(WHISK_ERROR, {"error": error})

    @property
    def is_whisk_error(self) -> bool:
        return self.status_code == WHISK_ERROR

    def to_json(self) -> JsonObject:
        out: JsonObject = {"statusCode": self.status_code}
        if self.has_result:
            out["result"] = self.result
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass
class WhiskActivation:
    """The activation record (``WhiskActivation.scala``)."""

    namespace: str
    name: str
    subject: str
    activation_id: str
    start_ms: int
    end_ms: int
    response: ActivationResponse
    version: str
    annotations: list[tuple[str, Any]]
    logs: list[str] = field(default_factory=list)
    cause: str | None = None
    duration_ms: int | None = None

    def annotation(self, key: str, default: Any = None) -> Any:
        for k, v in self.annotations:
            if k == key:
                return v
        return default

    def to_json(self) -> JsonObject:
        """The 13 fields that go in an ack's ``response``."""
        out: JsonObject = {
            "namespace": self.namespace,
            "name": self.name,
            "subject": self.subject,
            "activationId": self.activation_id,
            "start": self.start_ms,
            "end": self.end_ms,
        }
        if self.cause is not None:
            out["cause"] = self.cause
        out["response"] = self.response.to_json()
        out["logs"] = list(self.logs)
        out["version"] = self.version
        out["publish"] = False
        out["annotations"] = [{"key": k, "value": v} for k, v in self.annotations]
        if self.duration_ms is not None:
            out["duration"] = self.duration_ms
        return out

    def to_document(self, updated_ms: int) -> JsonObject:
        """The CouchDB document: ``_id = {namespace}/{activationId}``."""
        doc: JsonObject = {
            "_id": f"{self.namespace}/{self.activation_id}",
            "name": self.name,
            "updated": updated_ms,
            "entityType": "activation",
        }
        doc.update(self.to_json())
        return doc

    @classmethod
    def from_document(cls, doc: JsonObject) -> WhiskActivation:
        response = doc.get("response", {})
        return cls(
            namespace=doc["namespace"],
            name=doc["name"],
            subject=doc["subject"],
            activation_id=doc["activationId"],
            start_ms=int(doc["start"]),
            end_ms=int(doc["end"]),
            response=ActivationResponse(
                int(response.get("statusCode", WHISK_ERROR)),
                response.get("result"),
                response.get("size"),
                "result" in response,
            ),
            version=doc.get("version", "0.0.1"),
            annotations=[(a["key"], a.get("value")) for a in doc.get("annotations", [])],
            logs=list(doc.get("logs", [])),
            cause=doc.get("cause"),
            duration_ms=doc.get("duration"),
        )


def stringify_env_value(value: Any) -> str:
    """How ``containerInitializer`` turns parameter values into env strings."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))


def instant_activation(msg: ActivationMessage, response: ActivationResponse, action: WhiskAction | None,
                       now: int) -> WhiskActivation:
    """An activation that took no time: the action never ran (no such action, a container that
    could not start) or the invoker answered it itself. Without ``action`` it is the Scala
    invoker's ``generateFallbackActivation`` (kind ``unknown``); with it, the record carries the
    action's own annotations, as a run would."""
    if action is None:
        annotations: list[tuple[str, Any]] = [("path", msg.action.docid), ("kind", "unknown")]
        if msg.cause is not None:
            annotations.append(("causedBy", "sequence"))
        name, version = msg.action.name, msg.action.version or "0.0.1"
    else:
        annotations = [("limits", action.limits.to_json()), ("path", action.path), ("kind", action.kind),
                       ("timeout", False)]
        if msg.cause is not None:
            annotations.append(("causedBy", "sequence"))
        annotations.append(("waitTime", max(0, now - msg.transid.start_ms)))
        name, version = action.name, action.version
    return WhiskActivation(
        namespace=msg.user.namespace_name, name=name, subject=msg.user.subject,
        activation_id=msg.activation_id, start_ms=now, end_ms=now, response=response, version=version,
        annotations=annotations, cause=msg.cause, duration_ms=0,
    )


DEFAULT_LIMITS = {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}


def action_document(namespace: str, name: str, kind: str, main: str | None = None, binary: bool = False, *,
                    parameters: list[dict] | None = None, limits: dict | None = None, version: str = "0.0.1",
                    publish: bool = False, annotations: list[dict] | None = None) -> dict:
    """An action document as the controller writes it to the entity store, without its code
    (``WhiskAction.scala``). Default annotations are the ones ``wsk action create`` leaves."""
    exec_: dict[str, Any] = {"kind": kind, "binary": binary}
    if main:
        exec_["main"] = main
    if annotations is None:
        annotations = [{"key": "exec", "value": kind}, {"key": "provide-api-key", "value": False}]
    return {
        "_id": f"{namespace}/{name}",
        "entityType": "action",
        "namespace": namespace,
        "name": name,
        "exec": exec_,
        "parameters": list(parameters or []),
        "limits": dict(limits or DEFAULT_LIMITS),
        "version": version,
        "publish": publish,
        "annotations": annotations,
        "updated": int(time.time() * 1000),
    }
