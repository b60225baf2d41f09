"""Why a container could not be created for an action before any activation (FPC's
``ContainerCreationMessage``). The front end answers each with one of OpenWhisk's
``ContainerCreationError`` names; the pool knows nothing of those names."""

from __future__ import annotations

from invoker.entities import ActivationResponse
from invoker.errors import InvokerError


class CreationError(InvokerError):
    """A member was not created; nothing of it is left in the pool."""


class LimitsRefused(CreationError):
    """The action's limits (or its GPU request) are outside what this invoker allows."""


class NoRoom(CreationError):
    """Host memory or GPU memory does not fit it now (or ever, on this invoker)."""


class InitFailed(CreationError):
    """The container started but ``/init`` failed: ``response`` is the developer error."""

    def __init__(self, response: ActivationResponse) -> None:
        super().__init__(str(response.result))
        self.response = response


class MemberGone(InvokerError):
    """The member can take no activation (removed, or its container died): nothing ran."""
