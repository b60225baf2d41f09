"""The invoker's infrastructure errors, as one tree (the httpx shape), and what OpenWhisk
answers for each.

::

    InvokerError                                               answered as (activation_response_for)
    ├── MessageError (ValueError)  a message or document without     whisk error: action_incompatible
    │   │                          OpenWhisk's shape (invoker.messages)
    │   └── DocumentUnreadable     an action document we cannot run  whisk error: action_incompatible
    │                              (invoker.entities)
    ├── BrokerError                the Kafka side (invoker.messaging)    whisk error: abnormal_run
    │   ├── RecordTooLarge         refused for its size: resend it shrunk
    │   └── BrokerUnavailable      not delivered: the broker is away or kept failing
    ├── StoreError                 the document store                   whisk error: action_fetch_failed
    │   │                          (invoker.store.database)
    │   ├── DocumentNotFound       no such document, revision or     application error: action_not_found
    │   │                          attachment
    │   ├── DocumentConflict       a write lost against a newer revision
    │   ├── StoreUnavailable       unreachable, or kept failing
    │   ├── DocumentTypeMismatch   not an action, or its exec or code  whisk error: action_incompatible
    │   │                          unreadable (invoker.store.entities)
    │   └── UnsupportedAttachmentStore  code in an attachment store we cannot read
    ├── ContainerError             a backend could not create or drive  whisk error: resource_error
    │   │                          a container (invoker.containerpool.container)
    │   ├── ContainerStartError    it could not be provisioned
    │   ├── EngineUnreachable      the engine's API did not answer (invoker.containerpool.docker)
    │   └── NetworkError (RuntimeError)  the isolating network could not be made (.network)
    └── GpuError                   GPU sharing and admission            whisk error: resource_error
        ├── GpuRequestError (ValueError)  a bad ``gpu`` annotation   developer error: the request, quoted
        │                          or size (invoker.gpu.request)
        ├── InventoryError (ValueError)   the declared GPUs cannot be read (invoker.gpu.inventory)
        ├── AdmissionError (ValueError)   a charge that would overflow a GPU (invoker.gpu.ledger)
        └── MpsError (RuntimeError)       the MPS control daemon failed (invoker.gpu.mps)

Each class is defined here and re-exported by the module named beside it, so both import paths
work. The builtin bases in parentheses stay because callers catch them (``ValueError`` in
configuration parsing, for instance). An error not in the tree is answered as an invoker bug
(whisk error: abnormal_run). The texts are OpenWhisk's (``Messages`` in
``invoker.entities``, after ``Messages.scala``); the mapping follows
``InvokerReactive.scala`` (a failed action fetch) and ``ContainerProxy.scala`` (a failed
container start).

Low-level client errors are mapped to these classes at one seam each (``Producer.send`` for
kafka-python, ``CouchServer.request`` for HTTP), chained with ``from``. Action outcomes are
values (``ActivationResponse``), never exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from invoker.entities import ActivationResponse


class InvokerError(Exception):
    """Root of the invoker's own infrastructure errors."""


class MessageError(InvokerError, ValueError):
    """A message or document does not have the shape OpenWhisk defines."""


class DocumentUnreadable(MessageError):
    """The action document cannot be read (e.g. unknown kind)."""


class BrokerError(InvokerError):
    """The Kafka broker did not take a record."""


class RecordTooLarge(BrokerError):
    """The broker or the producer refused a record for its size."""


class BrokerUnavailable(BrokerError):
    """A record was not delivered: the broker is unreachable or kept failing."""


class StoreError(InvokerError):
    """Base class of every store failure."""


class DocumentNotFound(StoreError):
    """The document (or the requested revision, or the attachment) does not exist."""


class DocumentConflict(StoreError):
    """A write lost against an existing revision (HTTP 409)."""


class StoreUnavailable(StoreError):
    """The database could not be reached or kept failing after all retries."""


class DocumentTypeMismatch(StoreError):
    """The document is not an action (wrong ``entityType``) or its ``exec`` cannot be read."""


class UnsupportedAttachmentStore(StoreError):
    """The code lives in an external attachment store (``s3:``, ``az:``) this invoker cannot read."""


class ContainerError(InvokerError):
    """A backend could not create or drive a container."""


class ContainerStartError(ContainerError):
    """The container could not be provisioned."""


class EngineUnreachable(ContainerError):
    """The engine's API did not answer (socket gone, connection refused or cut)."""


class NetworkError(ContainerError, RuntimeError):
    """The isolating network could not be created."""


class GpuError(InvokerError):
    """GPU sharing or admission failed."""


class GpuRequestError(GpuError, ValueError):
    """The ``gpu`` annotation or a GPU size cannot be read."""


class InventoryError(GpuError, ValueError):
    """The declared inventory cannot be read."""


class AdmissionError(GpuError, ValueError):
    """A charge that would overflow a GPU (a bug in the caller: check ``free_mb`` first)."""


class MpsError(GpuError, RuntimeError):
    """The MPS control daemon could not be started, reached or stopped."""


def activation_response_for(error: BaseException) -> ActivationResponse:
    """The activation response OpenWhisk gives for ``error``: the entry of its nearest class
    in the table below (the tree above, right column); anything else is an invoker bug."""
    # Imported here, not above: entities imports this module (a cycle at import time).
    from invoker.entities import ActivationResponse, Messages

    answers: dict[type[BaseException], Callable[[BaseException], ActivationResponse]] = {
        # InvokerReactive.scala: NoDocumentException, DocumentTypeMismatchException and
        # DocumentUnreadable, then any other fetch failure.
        DocumentNotFound: lambda _: ActivationResponse.application_error(Messages.action_not_found),
        DocumentTypeMismatch: lambda _: ActivationResponse.whisk_error(Messages.action_incompatible),
        MessageError: lambda _: ActivationResponse.whisk_error(Messages.action_incompatible),
        StoreError: lambda _: ActivationResponse.whisk_error(Messages.action_fetch_failed),
        # ContainerProxy.scala: a container that could not be created or started.
        ContainerError: lambda _: ActivationResponse.whisk_error(Messages.resource_error),
        # The action asked for what no GPU can give: the developer's to fix.
        GpuRequestError: lambda e: ActivationResponse.developer_error(f"The action's GPU request is invalid: {e}."),
        GpuError: lambda _: ActivationResponse.whisk_error(Messages.resource_error),
    }
    for cls in type(error).__mro__:
        answer = answers.get(cls)
        if answer is not None:
            return answer(error)
    return ActivationResponse.whisk_error(Messages.abnormal_run)
