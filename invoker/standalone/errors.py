"""OpenWhisk's error answers: ``{"error": message, "code": transid}`` with its status codes
and its message texts (``org.apache.openwhisk.http.Messages`` and akka-http's rejections)."""

from __future__ import annotations

RESOURCE_DOES_NOT_EXIST = "The requested resource does not exist."
AUTH_INVALID = "The supplied authentication is invalid"
AUTH_MISSING = "The resource requires authentication, which was not supplied with the request"
NOT_AUTHORIZED = "The supplied authentication is not authorized to access this resource."
ALREADY_EXISTS = "resource already exists"
CONFLICT = "Concurrent modification to resource detected."
ENTITY_NAME_ILLEGAL = "The name of the entity contains illegal characters."
ACTIVATION_ID_ILLEGAL = "The activation id is not valid."
METHOD_NOT_ALLOWED = "HTTP method not allowed, supported methods: {}"
MALFORMED = "The request content was malformed:\n{}"


def not_supported(collection: str) -> str:
    return (f"{collection.capitalize()} are not supported by this standalone mode: only actions (and sequences "
            "of them) in the namespace itself.")


def store_unavailable(error: Exception) -> str:
    return f"The entity and activation store is unavailable; try again later: {error}"


def entity_too_big(field: str, size: int, allowed: int) -> str:
    return f"{field} larger than allowed: {size} > {allowed} bytes."


def runtime_deprecated(kind: str) -> str:
    return (f"The '{kind}' runtime is no longer supported. You may read and delete but not update "
            "or invoke this action.")


def invalid_timeout(max_ms: int) -> str:
    return f"Timeout must be number of milliseconds up to {max_ms}."


def list_limit_out_of_range(collection: str, value: int, maximum: int) -> str:
    return f"The value '{value}' is not in the range of 0 to {maximum} for {collection}."


def list_skip_out_of_range(collection: str, value: int) -> str:
    return f"The value '{value}' is not greater than or equal to 0 for {collection}."


def not_an_integer(collection: str, value: str) -> str:
    return f"The value '{value}' is not an integer for {collection}."


class ApiError(Exception):
    """Ends a request with ``status`` and OpenWhisk's error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @classmethod
    def malformed(cls, detail: str) -> ApiError:
        return cls(400, MALFORMED.format(detail))

    @classmethod
    def not_found(cls) -> ApiError:
        return cls(404, RESOURCE_DOES_NOT_EXIST)
