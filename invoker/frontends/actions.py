"""What every front end does with an action: fetch its document (``WhiskAction.get``) and build
the ``Job`` the pool runs from an ``ActivationMessage``."""

from __future__ import annotations

import logging

from invoker.containerpool.activation import ActivationSink, Job
from invoker.entities import DocumentUnreadable, WhiskAction, stringify_env_value
from invoker.errors import InvokerError
from invoker.manifest import RuntimesManifest
from invoker.messages import ActivationMessage
from invoker.store.entities import EntityStore

log = logging.getLogger(__name__)


class NotExecutable(InvokerError):
    """The document is an action the invoker cannot run by itself (a sequence)."""


def load_action(entities: EntityStore, manifest: RuntimesManifest, docid: str, revision: str | None) -> WhiskAction:
    """The action at ``docid``/``revision`` with its code. Raises the store's errors
    (``DocumentNotFound`` among them), ``DocumentUnreadable`` (a ``MessageError``) for a document
    that is no runnable action, ``NotExecutable`` for a sequence."""
    document = entities.get_action(docid, revision)
    action = WhiskAction.from_document(document.doc, document.code)
    if manifest.resolve(action.kind) is None and action.kind != "blackbox":
        raise DocumentUnreadable(f"unknown kind {action.kind!r}")
    if action.is_sequence:
        raise NotExecutable(f"{action.path} is a sequence")
    return action


def build_job(msg: ActivationMessage, action: WhiskAction, sink: ActivationSink) -> Job:
    """The message's content split into run arguments and ``initArgs`` (env of ``/init``)."""
    content = msg.content if msg.content is not None else {}
    init_env: dict[str, str] = {}
    if isinstance(content, dict):
        content = dict(content)
        for name in msg.init_args:
            if name in content:
                init_env[name] = stringify_env_value(content.pop(name))
        if msg.locked_args:
            log.warning(
                "activation %s has encrypted parameters %s and no parameter-storage key is "
                "configured: they are passed as stored", msg.activation_id, sorted(msg.locked_args)
            )
    return Job(msg=msg, action=action, arguments=content, init_env=init_env, sink=sink)
