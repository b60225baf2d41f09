"""What the REST API reads and writes: action PUT bodies checked the way the controller
checks ``WhiskActionPut``, and the JSON views of actions and activations that ``wsk``
and the ``openwhisk`` npm client expect (``WhiskAction.serdes``, ``summaryAsJson``,
``WhiskActivation.toExtendedJson``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from invoker.entities import action_document, is_binary_code
from invoker.manifest import RuntimesManifest
from invoker.standalone.errors import ApiError, entity_too_big, runtime_deprecated

# OpenWhisk's defaults (common/scala/src/main/resources/application.conf).
TIMEOUT_MS = (100, 300_000, 60_000)  # min, max, default
MEMORY_MB = (128, 512, 256)
LOGS_MB = (0, 10, 10)
CONCURRENCY = (1, 1, 1)
EXEC_SIZE_LIMIT = 48 * 1024 * 1024
PARAMETERS_SIZE_LIMIT = 1024 * 1024
ACTIVATION_ENTITY_LIMIT = 1024 * 1024  # an invoke's request body
SEQUENCE_LIMIT = 50  # whisk.actionSequence.maxLimit
SEQUENCE = "sequence"

_ENTITY_NAME = re.compile(r"^([\w]|[\w][\w@ .-]*[\w@.-]+)$")
ENTITY_NAME_MAX = 256
STATUS_NAMES = {0: "success", 1: "application error", 2: "action developer error", 3: "whisk internal error"}


def valid_entity_name(name: str) -> bool:
    return len(name) <= ENTITY_NAME_MAX and bool(_ENTITY_NAME.match(name))


@dataclass(frozen=True)
class ActionPut:
    """A checked PUT body; ``None`` fields were not given (an update keeps the old value)."""

    kind: str | None = None
    code: str | None = None
    binary: bool = False
    main: str | None = None
    parameters: list[dict] | None = None
    annotations: list[dict] | None = None
    limits: dict[str, int] | None = None
    version: str | None = None
    publish: bool | None = None
    components: tuple[str, ...] | None = None  # a sequence's actions, as given


def _components(exec_: dict) -> tuple[str, ...]:
    components = exec_.get("components")
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise ApiError.malformed("'components' must be an array of action names")
    if not components:
        raise ApiError(400, "No component specified for the sequence.")
    if len(components) > SEQUENCE_LIMIT:
        raise ApiError(400, "Too many actions in the sequence.")
    return tuple(components)


def _key_values(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise ApiError.malformed(f"'{field}' must be an array of key/value objects")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or "value" not in item:
            raise ApiError.malformed(f"'{field}' must be an array of key/value objects")
        entry = {"key": item["key"], "value": item["value"]}
        if item.get("init") is True:
            entry["init"] = True
        out.append(entry)
    return out


def _size(params: list[dict]) -> int:
    return sum(len(p["key"]) + len(json.dumps(p["value"], separators=(",", ":"))) for p in params)


def _limit(given: dict, key: str, bounds: tuple[int, int, int], unit: str, what: str) -> int | None:
    if key not in given or given[key] is None:
        return None
    value = given[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError.malformed(f"{what} must be an integer")
    low, high, _ = bounds
    if value < low:
        raise ApiError.malformed(f"requirement failed: {what} {value} {unit} below allowed threshold of {low} {unit}")
    if value > high:
        raise ApiError.malformed(f"requirement failed: {what} {value} {unit} exceeds allowed threshold of {high} {unit}")
    return value


def parse_action_put(body: Any, manifest: RuntimesManifest) -> ActionPut:
    """Raises ApiError 400 (malformed, unknown kind) or 413 (code or parameters too large)."""
    if not isinstance(body, dict):
        raise ApiError.malformed("the action must be a JSON object")
    kind = code = main = None
    binary = False
    exec_ = body.get("exec")
    if exec_ is not None:
        if not isinstance(exec_, dict):
            raise ApiError.malformed("'exec' must be an object")
        raw_kind = exec_.get("kind")
        if not isinstance(raw_kind, str):
            raise ApiError.malformed("'kind' must be a string defined in 'exec'")
        if raw_kind.strip().lower() == SEQUENCE:
            return _sequence_put(body, _components(exec_))
        runtime = manifest.resolve(raw_kind)
        if runtime is None:
            known = ", ".join(sorted([*manifest.kinds, "blackbox", "sequence"]))
            raise ApiError.malformed(f"kind '{raw_kind.strip().lower()}' not in Set({known})")
        if runtime.deprecated:
            raise ApiError(400, runtime_deprecated(runtime.kind))
        kind = runtime.kind
        if not isinstance(exec_.get("code"), str):
            raise ApiError.malformed(f"'code' must be a string or attachment object defined in 'exec' for '{kind}' actions")
        code = exec_["code"]
        if "main" in exec_ and exec_["main"] is not None:
            if not isinstance(exec_["main"], str):
                raise ApiError.malformed(f"if defined, 'main' be a string in 'exec' for '{kind}' actions")
            main = exec_["main"]
        elif runtime.require_main:
            raise ApiError.malformed(f"'main' must be a string defined in 'exec' for '{kind}' actions")
        # As the controller decides it: code that reads as base64 is binary (a zip).
        binary = is_binary_code(code)
        if len(code.encode()) > EXEC_SIZE_LIMIT:
            raise ApiError(413, entity_too_big("exec", len(code.encode()), EXEC_SIZE_LIMIT))
    parameters = annotations = None
    if body.get("parameters") is not None:
        parameters = _key_values(body["parameters"], "parameters")
        if _size(parameters) > PARAMETERS_SIZE_LIMIT:
            raise ApiError(413, entity_too_big("parameters", _size(parameters), PARAMETERS_SIZE_LIMIT))
    if body.get("annotations") is not None:
        annotations = _key_values(body["annotations"], "annotations")
        if _size(annotations) > PARAMETERS_SIZE_LIMIT:
            raise ApiError(413, entity_too_big("annotations", _size(annotations), PARAMETERS_SIZE_LIMIT))
    limits = None
    if body.get("limits") is not None:
        given = body["limits"]
        if not isinstance(given, dict):
            raise ApiError.malformed("'limits' must be an object")
        checked = {
            "timeout": _limit(given, "timeout", TIMEOUT_MS, "milliseconds", "duration"),
            "memory": _limit(given, "memory", MEMORY_MB, "MB", "memory"),
            "logs": _limit(given, "logs", LOGS_MB, "MB", "log size"),
            "concurrency": _limit(given, "concurrency", CONCURRENCY, "", "concurrency"),
        }
        limits = {k: v for k, v in checked.items() if v is not None}
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version)):
        raise ApiError.malformed("'version' must be a semantic version such as 0.0.1")
    publish = body.get("publish")
    if publish is not None and not isinstance(publish, bool):
        raise ApiError.malformed("'publish' must be a boolean")
    return ActionPut(kind, code, binary, main, parameters, annotations, limits, version, publish)


def _sequence_put(body: dict, components: tuple[str, ...]) -> ActionPut:
    # A sequence's parameters are its component list (makeWhiskAction): given ones are dropped.
    plain = parse_action_put({k: v for k, v in body.items() if k not in ("exec", "parameters")},
                             RuntimesManifest([], []))
    return ActionPut(SEQUENCE, None, False, None, None, plain.annotations, plain.limits, plain.version,
                     plain.publish, components)


def up_patch(version: str) -> str:
    major, minor, patch = (int(p) for p in version.split("."))
    return f"{major}.{minor}.{patch + 1}"


def _with_exec_annotation(annotations: list[dict], kind: str) -> list[dict]:
    return [a for a in annotations if a["key"] != "exec"] + [{"key": "exec", "value": kind}]


def new_action_document(namespace: str, name: str, put: ActionPut) -> dict:
    """The document the controller writes for a new action (without its code)."""
    if put.kind is None or (put.code is None and put.kind != SEQUENCE):
        raise ApiError(400, "exec undefined")
    limits = {"timeout": TIMEOUT_MS[2], "memory": MEMORY_MB[2], "logs": LOGS_MB[2], "concurrency": CONCURRENCY[2]}
    limits.update(put.limits or {})
    annotations = list(put.annotations or [])
    if not any(a["key"] == "provide-api-key" for a in annotations):
        annotations.append({"key": "provide-api-key", "value": False})
    return action_document(namespace, name, put.kind, put.main, put.binary, parameters=put.parameters or [],
                           limits=limits, version=put.version or "0.0.1", publish=bool(put.publish),
                           annotations=_with_exec_annotation(annotations, put.kind))


def updated_action_document(old: dict, put: ActionPut) -> dict:
    """``updateWhiskAction``: what the PUT gives replaces, the rest is kept; the version moves on."""
    old_exec = old.get("exec") or {}
    kind = put.kind or old_exec["kind"]
    main = put.main if put.kind is not None else old_exec.get("main")
    binary = put.binary if put.kind is not None else bool(old_exec.get("binary"))
    limits = dict(old.get("limits") or {})
    limits.update(put.limits or {})
    annotations = put.annotations if put.annotations is not None else list(old.get("annotations") or [])
    doc = action_document(
        old["namespace"], old["name"], kind, main, binary,
        parameters=put.parameters if put.parameters is not None else list(old.get("parameters") or []),
        limits=limits, version=put.version or up_patch(old.get("version", "0.0.1")),
        publish=put.publish if put.publish is not None else bool(old.get("publish")),
        annotations=_with_exec_annotation(annotations, kind),
    )
    doc["_rev"] = old["_rev"]
    return doc


def sequence_document(doc: dict, components: list[str]) -> dict:
    """A sequence's exec and parameters: the fully qualified components, as the controller keeps them."""
    out = dict(doc)
    out["exec"] = {"kind": SEQUENCE, "components": components, "binary": False}
    out["parameters"] = [{"key": "_actions", "value": components}]
    return out


def action_json(doc: dict, code: str | None) -> dict:
    """``WhiskAction`` as the API answers it; ``code`` None: without the code (``?code=false``)."""
    stored = doc.get("exec") or {}
    exec_: dict[str, Any] = {"kind": stored.get("kind")}
    if stored.get("kind") == SEQUENCE:
        exec_["components"] = stored.get("components") or []
    elif code is not None:
        exec_["code"] = code
    if stored.get("kind") != SEQUENCE:
        exec_["binary"] = bool(stored.get("binary"))
    if stored.get("main"):
        exec_["main"] = stored["main"]
    return {
        "namespace": doc["namespace"],
        "name": doc["name"],
        "version": doc.get("version", "0.0.1"),
        "publish": bool(doc.get("publish")),
        "exec": exec_,
        "annotations": doc.get("annotations") or [],
        "parameters": doc.get("parameters") or [],
        "limits": doc.get("limits") or {},
        "updated": doc.get("updated"),
    }


def action_summary(doc: dict) -> dict:
    """One entry of an action list (``WhiskAction.summaryAsJson``)."""
    return {
        "namespace": doc["namespace"],
        "name": doc["name"],
        "version": doc.get("version", "0.0.1"),
        "publish": bool(doc.get("publish")),
        "annotations": doc.get("annotations") or [],
        "limits": doc.get("limits") or {},
        "exec": {"binary": bool((doc.get("exec") or {}).get("binary"))},
        "updated": doc.get("updated"),
    }


def response_json(response: dict) -> dict:
    """``ActivationResponse.toExtendedJson``: the status in words, and ``success``."""
    code = int(response.get("statusCode", 3))
    out = {"status": STATUS_NAMES.get(code, "whisk internal error"), "statusCode": code, "success": code == 0}
    if "result" in response:
        out["result"] = response["result"]
    if "size" in response:
        out["size"] = response["size"]
    return out


def activation_json(record: dict) -> dict:
    """``WhiskActivation.toExtendedJson`` from a stored record or an ack's activation."""
    out = {k: v for k, v in record.items() if not k.startswith("_") and k not in ("entityType", "updated")}
    out["response"] = response_json(record.get("response") or {})
    if record.get("end"):
        out["duration"] = record.get("duration", record["end"] - record["start"])
    return out


def activation_summary(record: dict) -> dict:
    """One entry of an activation list without ``docs`` (the activations view's value)."""
    out = {
        "namespace": record["namespace"],
        "name": record["name"],
        "version": record.get("version", "0.0.1"),
        "subject": record.get("subject"),
        "publish": bool(record.get("publish")),
        "annotations": record.get("annotations") or [],
        "activationId": record["activationId"],
        "start": record["start"],
    }
    if record.get("cause"):
        out["cause"] = record["cause"]
    if record.get("end"):
        out["end"] = record["end"]
        out["duration"] = record.get("duration", record["end"] - record["start"])
        out["statusCode"] = (record.get("response") or {}).get("statusCode")
    return out
