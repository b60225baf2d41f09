"""CouchDB over its HTTP API, with retries, implementing ``database.Database``.

We use ``requests`` rather than the ``couchdb`` PyPI package because that package has
been unmaintained since 2018.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from invoker.store.database import (
    BulkResult,
    DocumentConflict,
    DocumentNotFound,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# Doc-id prefixes CouchDB routes as two path segments; the rest of the id is one segment.
_RESERVED_PREFIXES = ("_design/", "_local/")


def _segment(value: str) -> str:
    """One URL path segment: ``/`` must become ``%2F`` or CouchDB reads two segments."""
    return quote(value, safe="")


def _doc_path(docid: str) -> str:
    for prefix in _RESERVED_PREFIXES:
        if docid.startswith(prefix):
            return prefix + _segment(docid[len(prefix):])
    return _segment(docid)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _retry_after_s(response: requests.Response) -> float | None:
    header = response.headers.get("Retry-After")
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_of(response: requests.Response) -> tuple[str, str]:
    """CouchDB's ``{"error", "reason"}`` body, tolerating non-JSON answers from proxies."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return "http_" + str(response.status_code), response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error", "")), str(body.get("reason", ""))
    return "http_" + str(response.status_code), ""


class CouchServer:
    """One CouchDB server: a pooled HTTP session shared by all its databases.

    ``deadline_s`` bounds each operation, retries included; after it the call raises
    ``StoreUnavailable``. Credentials travel only in ``session.auth`` (never in the URL),
    so they cannot leak into reprs, logs or exception messages.
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        deadline_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        pool_maxsize: int = 32,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("CouchDB URL must be http(s)://host[:port][/prefix]")
        # Credentials embedded in the URL move to session.auth and out of the URL.
        if parts.username is not None and username is None:
            username = unquote(parts.username)
            password = unquote(parts.password) if parts.password is not None else password
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.username = username
        self.deadline_s = deadline_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._random = random.Random()
        self._session = requests.Session()
        # Our own retry loop decides; urllib3 must not retry behind our back.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json"})
        if username is not None:
            self._session.auth = (username, password or "")

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username is not None else ""
        return f"CouchServer({self.url!r}{user})"

    def __enter__(self) -> CouchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def database(self, name: str) -> CouchDatabase:
        return CouchDatabase(self, name)

    def delete_database(self, name: str) -> None:
        """Drop a database (tests, tooling). A missing database is not an error."""
        response = self.request("DELETE", _segment(name), what=f"DELETE {name}")
        if response.status_code not in (200, 202, 404):
            raise _failure(response, f"DELETE {name}")

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> requests.Response:
        """One HTTP call, retried on connection errors, timeouts, 5xx and 429 until the
        deadline. Every other status (404, 409, ...) is returned for the caller to map.

        A write retried after a lost response may answer 409 although the first try
        landed; callers that write fresh documents treat that conflict as success.
        """
        url = f"{self.url}/{path}"
        headers = {"Content-Type": content_type} if content_type else None
        started = time.monotonic()
        deadline = started + self.deadline_s
        attempt = 0
        answered: str | None = None  # the server's last error answer: the deadline may cut the last try short
        while True:
            remaining = max(deadline - time.monotonic(), 0.001)
            timeout = (min(self.connect_timeout_s, remaining), min(self.read_timeout_s, remaining))
            retry_after: float | None = None
            try:
                response = self._session.request(
                    method, url, params=params, data=data, headers=headers, timeout=timeout
                )
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as error:
                # The class name is enough; urllib3's messages are long and repeat the URL.
                problem = type(error).__name__
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                problem = answered = f"HTTP {response.status_code}"
                retry_after = _retry_after_s(response)
                response.close()
            attempt += 1
            # Exponential backoff with jitter, so many threads do not hammer a recovering server in step.
            ceiling = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
            delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max_s))
            if time.monotonic() + delay >= deadline:
                if answered is not None and answered != problem:
                    problem = f"{problem} (the server's last answer: {answered})"
                raise StoreUnavailable(
                    f"{what}: {problem}; gave up after {attempt} attempts in "
                    f"{time.monotonic() - started:.1f} s"
                )
            if attempt == 1:
                log.warning("%s: %s; retrying for up to %.0f s", what, problem, self.deadline_s)
            else:
                log.debug("%s: %s (attempt %d)", what, problem, attempt)
            time.sleep(delay)


def _failure(response: requests.Response, what: str) -> StoreError:
    """The exception for a non-success answer that retrying will not fix."""
    error, reason = _error_of(response)
    detail = f"{what}: HTTP {response.status_code} {error}" + (f" ({reason})" if reason else "")
    if response.status_code == 404:
        return DocumentNotFound(detail)
    if response.status_code == 409:
        return DocumentConflict(detail)
    return StoreError(detail)


class CouchDatabase:
    """One database on a ``CouchServer``; implements ``database.Database``."""

    def __init__(self, server: CouchServer, name: str) -> None:
        self.server = server
        self.name = name
        self._path = _segment(name)

    def __repr__(self) -> str:
        return f"CouchDatabase({self.server.url!r}, {self.name!r})"

    def _call(self, method: str, path: str, ok: tuple[int, ...], *, what: str,
              params: dict[str, str] | None = None, data: bytes | None = None,
              content_type: str | None = None) -> requests.Response:
        response = self.server.request(method, path, what=what, params=params, data=data,
                                       content_type=content_type)
        if response.status_code not in ok:
            raise _failure(response, what)
        return response

    def ensure_exists(self) -> None:
        # HEAD first: a non-admin user may read an existing database but not PUT one.
        what = f"HEAD {self.name}"
        response = self.server.request("HEAD", self._path, what=what)
        if response.status_code == 200:
            return
        if response.status_code != 404:
            raise _failure(response, what)
        what = f"PUT {self.name}"
        response = self.server.request("PUT", self._path, what=what)
        # 412: someone else created it in between.
        if response.status_code not in (201, 202, 412):
            raise _failure(response, what)

    def get(self, docid: str, rev: str | None = None) -> dict:
        params = {"rev": rev} if rev is not None else None
        response = self._call("GET", f"{self._path}/{_doc_path(docid)}", (200,),
                              what=f"GET {self.name}/{docid}", params=params)
        doc = json.loads(response.content)
        if not isinstance(doc, dict):
            raise StoreError(f"GET {self.name}/{docid}: not a JSON object")
        return doc

    def exists(self, docid: str) -> bool:
        what = f"HEAD {self.name}/{docid}"
        response = self.server.request("HEAD", f"{self._path}/{_doc_path(docid)}", what=what)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise _failure(response, what)

    def get_attachment(self, docid: str, name: str, rev: str | None = None) -> bytes:
        params = {"rev": rev} if rev is not None else None
        response = self._call("GET", f"{self._path}/{_doc_path(docid)}/{_segment(name)}", (200,),
                              what=f"GET {self.name}/{docid}/{name}", params=params)
        return response.content

    def put(self, doc: dict) -> str:
        docid = doc.get("_id")
        if docid is None:
            response = self._call("POST", self._path, (201, 202), what=f"POST {self.name}",
                                  data=_json_bytes(doc), content_type="application/json")
        else:
            response = self._call("PUT", f"{self._path}/{_doc_path(docid)}", (201, 202),
                                  what=f"PUT {self.name}/{docid}", data=_json_bytes(doc),
                                  content_type="application/json")
        return str(json.loads(response.content)["rev"])

    def put_attachment(self, docid: str, rev: str, name: str, data: bytes, content_type: str) -> str:
        response = self._call("PUT", f"{self._path}/{_doc_path(docid)}/{_segment(name)}", (201, 202),
                              what=f"PUT {self.name}/{docid}/{name}", params={"rev": rev},
                              data=data, content_type=content_type)
        return str(json.loads(response.content)["rev"])

    def delete(self, docid: str, rev: str) -> None:
        self._call("DELETE", f"{self._path}/{_doc_path(docid)}", (200, 202),
                   what=f"DELETE {self.name}/{docid}", params={"rev": rev})

    def bulk_put(self, docs: list[dict]) -> list[BulkResult]:
        if not docs:
            return []
        response = self._call("POST", f"{self._path}/_bulk_docs", (201, 202),
                              what=f"POST {self.name}/_bulk_docs ({len(docs)} docs)",
                              data=_json_bytes({"docs": docs}), content_type="application/json")
        rows = json.loads(response.content)
        if not isinstance(rows, list) or len(rows) != len(docs):
            raise StoreError(f"POST {self.name}/_bulk_docs: unexpected answer for {len(docs)} docs")
        results: list[BulkResult] = []
        # CouchDB answers in request order; ids are taken from the answer (it fills in generated ones).
        for doc, row in zip(docs, rows, strict=True):
            docid = str(row.get("id", doc.get("_id", "")))
            error = row.get("error")
            if error is None:
                results.append(BulkResult(id=docid, ok=True, rev=row.get("rev")))
            else:
                reason = row.get("reason")
                results.append(BulkResult(
                    id=docid, ok=False, conflict=error == "conflict",
                    error=f"{error}: {reason}" if reason else str(error),
                ))
        return results

    def all_docs(self, include_docs: bool = False, limit: int | None = None,
                 descending: bool = False, startkey: str | None = None,
                 endkey: str | None = None) -> list[dict]:
        params: dict[str, str] = {}
        if include_docs:
            params["include_docs"] = "true"
        if limit is not None:
            params["limit"] = str(limit)
        if descending:
            params["descending"] = "true"
        # Keys are JSON values on the wire: a string key must be quoted.
        if startkey is not None:
            params["startkey"] = json.dumps(startkey)
        if endkey is not None:
            params["endkey"] = json.dumps(endkey)
        response = self._call("GET", f"{self._path}/_all_docs", (200,),
                              what=f"GET {self.name}/_all_docs", params=params)
        return list(json.loads(response.content).get("rows", []))
