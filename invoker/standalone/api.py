"""The REST API v1 subset, on the standard library's ``ThreadingHTTPServer`` (as the
invoker's admin endpoint and the action runtime use): a request per thread suits
blocking invokes that wait up to a minute, and no web framework is needed for a
dozen routes.

Routes (``{ns}`` is ``_`` or the guest namespace)::

    GET    /api/v1                                       info (no auth)
    GET    /api/v1/namespaces                            ["guest"]
    GET    /api/v1/namespaces/{ns}/actions               list (skip, limit, count)
    PUT    /api/v1/namespaces/{ns}/actions/{name}        create, or update with ?overwrite=true
                                                         (a code action, or a sequence of them)
    GET    /api/v1/namespaces/{ns}/actions/{name}        get (?code=false: without the code)
    DELETE /api/v1/namespaces/{ns}/actions/{name}        delete
    POST   /api/v1/namespaces/{ns}/actions/{name}        invoke (blocking, result, timeout)
    GET    /api/v1/namespaces/{ns}/activations           list (skip, limit, name, since, upto, docs)
    GET    /api/v1/namespaces/{ns}/activations/{id}      get; .../result; .../logs
    GET    /api/v1/namespaces/{ns}/{packages,triggers,rules}   [] (none here); a PUT is refused (501)
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from invoker.messages import TransactionId
from invoker.standalone import errors
from invoker.standalone.auth import GuestKey
from invoker.standalone.entities import (
    ACTIVATION_ENTITY_LIMIT,
    EXEC_SIZE_LIMIT,
    activation_json,
    parse_action_put,
    response_json,
    valid_entity_name,
)
from invoker.standalone.errors import ApiError
from invoker.standalone.platform import MAX_BLOCKING_WAIT_MS, Platform, new_transid
from invoker.store.database import StoreUnavailable

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 30
# Largest body read at all: the code limit plus room for the JSON around it.
MAX_BODY = EXEC_SIZE_LIMIT + 2 * 1024 * 1024
ACTIVATION_ID_HEADER = "x-openwhisk-activation-id"
_ACTIVATION_ID_LENGTH = 32


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    segments: list[str]
    query: dict[str, str]
    body: bytes
    transid: TransactionId

    def flag(self, name: str, default: bool = False) -> bool:
        if name not in self.query:
            return default
        value = self.query[name].lower()
        if value not in ("true", "false"):
            raise ApiError(400, f"The query parameter '{name}' was malformed:\n"
                                f"'{self.query[name]}' is not a valid Boolean value")
        return value == "true"

    def integer(self, name: str, collection: str) -> int | None:
        if name not in self.query:
            return None
        try:
            return int(self.query[name])
        except ValueError:
            raise ApiError(400, errors.not_an_integer(collection, self.query[name])) from None

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise ApiError.malformed(str(error)) from None


class RestApi:
    """Routes requests to the platform after checking the guest key."""

    def __init__(self, platform: Platform, key: GuestKey) -> None:
        self.platform = platform
        self.key = key

    def handle(self, request: Request, authorization: str | None) -> Reply:
        segments = request.segments
        if segments[:2] != ["api", "v1"]:
            raise ApiError.not_found()
        rest = segments[2:]
        if not rest:
            return Reply(200, {"description": "OpenWhisk API", "api_version": "1.0.0", "api_version_path": "v1",
                               "build": "standalone", "buildno": "owgpu"})
        if authorization is None:
            raise ApiError(401, errors.AUTH_MISSING, {"WWW-Authenticate": 'Basic realm="whisk rest service"'})
        if not self.key.accepts(authorization):
            raise ApiError(401, errors.AUTH_INVALID, {"WWW-Authenticate": 'Basic realm="whisk rest service"'})
        if rest[0] != "namespaces":
            raise ApiError.not_found()
        if len(rest) == 1:
            return Reply(200, [self.platform.namespace])
        if rest[1] not in ("_", self.platform.namespace):
            raise ApiError(403, errors.NOT_AUTHORIZED)
        collection, tail = (rest[2], rest[3:]) if len(rest) > 2 else (None, [])
        if collection == "actions":
            return self._actions(request, tail)
        if collection == "activations":
            return self._activations(request, tail)
        if collection in ("packages", "triggers", "rules") and not tail and request.method == "GET":
            return Reply(200, [])  # this standalone mode has none of these
        if collection in ("packages", "triggers", "rules") and request.method == "PUT":
            raise ApiError(501, errors.not_supported(collection))
        raise ApiError.not_found()

    # ------------------------------------------------------------------ actions

    def _actions(self, request: Request, tail: list[str]) -> Reply:
        if not tail:
            if request.method != "GET":
                raise ApiError(405, errors.METHOD_NOT_ALLOWED.format("GET"))
            skip, limit = self._paging(request, "actions")
            if request.flag("count"):
                return Reply(200, {"actions": self.platform.count_actions()})
            return Reply(200, self.platform.list_actions(skip, limit))
        if len(tail) > 1:  # an action in a package: there are no packages here
            if request.method == "PUT":
                raise ApiError(501, errors.not_supported("packages"))
            raise ApiError.not_found()
        name = tail[0]
        if not valid_entity_name(name):
            raise ApiError(400, errors.ENTITY_NAME_ILLEGAL)
        method = request.method
        if method == "GET":
            return Reply(200, self.platform.get_action(name, with_code=request.flag("code", True)))
        if method == "PUT":
            put = parse_action_put(request.json(), self.platform.manifest)
            return Reply(200, self.platform.put_action(name, put, overwrite=request.flag("overwrite")))
        if method == "DELETE":
            return Reply(200, self.platform.delete_action(name))
        if method == "POST":
            return self._invoke(request, name)
        raise ApiError(405, errors.METHOD_NOT_ALLOWED.format("GET, PUT, DELETE, POST"))

    def _invoke(self, request: Request, name: str) -> Reply:
        if len(request.body) > ACTIVATION_ENTITY_LIMIT:
            raise ApiError(413, errors.entity_too_big("Request", len(request.body), ACTIVATION_ENTITY_LIMIT))
        blocking, result = request.flag("blocking"), request.flag("result")
        wait_ms = request.integer("timeout", "actions")
        if wait_ms is None:
            wait_ms = MAX_BLOCKING_WAIT_MS
        elif not 0 < wait_ms <= MAX_BLOCKING_WAIT_MS:
            raise ApiError(400, errors.invalid_timeout(MAX_BLOCKING_WAIT_MS))
        payload = request.json()
        if payload is not None and not isinstance(payload, dict):
            raise ApiError.malformed("the payload of an invoke must be a JSON object")
        invocation = self.platform.invoke(name, payload, blocking, wait_ms, request.transid)
        headers = {ACTIVATION_ID_HEADER: invocation.activation_id}
        if invocation.activation is None:
            return Reply(202, {"activationId": invocation.activation_id}, headers)
        response = invocation.activation["response"]
        body = response.get("result", {}) if result else invocation.activation
        status = {0: 200, 1: 502, 2: 502}.get(response["statusCode"], 500)
        return Reply(status, body, headers)

    # ------------------------------------------------------------------ activations

    def _activations(self, request: Request, tail: list[str]) -> Reply:
        if request.method != "GET":
            raise ApiError(405, errors.METHOD_NOT_ALLOWED.format("GET"))
        if not tail:
            skip, limit = self._paging(request, "activations")
            name = request.query.get("name") or None
            since = request.integer("since", "activations")
            upto = request.integer("upto", "activations")
            return Reply(200, self.platform.list_activations(skip, limit, name, since, upto, request.flag("docs")))
        activation_id = tail[0]
        if len(activation_id) != _ACTIVATION_ID_LENGTH:
            raise ApiError(400, f"Activation id length is {len(activation_id)} but must be {_ACTIVATION_ID_LENGTH}.")
        if any(c not in "0123456789abcdef" for c in activation_id):
            raise ApiError(400, errors.ACTIVATION_ID_ILLEGAL)
        record = self.platform.get_activation(activation_id)
        if len(tail) == 1:
            return Reply(200, activation_json(record))
        if tail[1:] == ["result"]:
            return Reply(200, response_json(record.get("response") or {}))
        if tail[1:] == ["logs"]:
            return Reply(200, {"logs": record.get("logs") or []})
        raise ApiError.not_found()

    @staticmethod
    def _paging(request: Request, collection: str) -> tuple[int, int]:
        skip = request.integer("skip", collection)
        limit = request.integer("limit", collection)
        skip = 0 if skip is None else skip
        if skip < 0:
            raise ApiError(400, errors.list_skip_out_of_range(collection, skip))
        if limit is None:
            limit = DEFAULT_LIST_LIMIT
        elif limit == 0:
            limit = MAX_LIST_LIMIT
        elif not 0 < limit <= MAX_LIST_LIMIT:
            raise ApiError(400, errors.list_limit_out_of_range(collection, limit, MAX_LIST_LIMIT))
        return skip, limit


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # Method, path and status only: never headers (they hold the key).
        log.debug("%s %s", self.address_string(), format % args)

    def _serve(self) -> None:
        transid = new_transid()
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            segments = [unquote(s) for s in url.path.split("/") if s]
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            request = Request(self.command, segments, query, body, transid)
            if segments == ["ping"]:
                reply = Reply(200, "pong")
            elif self.server.api is None:
                reply = Reply(503, {"error": "The server is starting; try again shortly.", "code": transid.id})
            else:
                reply = self.server.api.handle(request, self.headers.get("Authorization"))
        except ApiError as error:
            reply = Reply(error.status, {"error": error.message, "code": transid.id}, error.headers)
        except StoreUnavailable as error:  # e.g. the embedded store's disk is full
            log.error("request %s %s: %s", self.command, urlsplit(self.path).path, error)
            reply = Reply(503, {"error": errors.store_unavailable(error), "code": transid.id})
        except Exception:
            log.exception("request %s %s failed", self.command, urlsplit(self.path).path)
            reply = Reply(500, {"error": "There was an internal server error.", "code": transid.id})
        self._send(reply, transid.id)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, errors.entity_too_big("Request", length, MAX_BODY))
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply, transid: str) -> None:
        data = json.dumps(reply.body, separators=(",", ":")).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-ID", transid)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _serve


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: RestApi | None = None) -> None:
        super().__init__(address, _Handler)
        self.api = api  # set once everything behind it runs

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="rest-api", daemon=True)
        thread.start()
        return thread
