"""The invoker's infrastructure errors, as one tree (the httpx shape).

::

    InvokerError
    ├── MessageError            a message or document without OpenWhisk's shape (invoker.messages)
    │   └── DocumentUnreadable  an action document we cannot run (invoker.entities)
    └── BrokerError             the Kafka side
        ├── RecordTooLarge      refused for its size: resend it shrunk
        └── BrokerUnavailable   not delivered: the broker is away or kept failing

Store errors (``invoker.store.database.StoreError``) and container errors keep their own
modules. Low-level client errors are mapped to these classes at one seam each
(``Producer.send`` for kafka-python), chained with ``from``. Action outcomes are values
(``ActivationResponse``), never exceptions.
"""

from __future__ import annotations


class InvokerError(Exception):
    """Root of the invoker's own infrastructure errors."""


class BrokerError(InvokerError):
    """The Kafka broker did not take a record."""


class RecordTooLarge(BrokerError):
    """The broker or the producer refused a record for its size."""


class BrokerUnavailable(BrokerError):
    """A record was not delivered: the broker is unreachable or kept failing."""
