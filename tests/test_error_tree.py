"""The one error tree (``invoker.errors``): its shape, the old import paths, the builtin bases
callers still catch, and the OpenWhisk answer each error becomes."""

from __future__ import annotations

import importlib

import pytest

from invoker import errors
from invoker.entities import APPLICATION_ERROR, DEVELOPER_ERROR, WHISK_ERROR, Messages

# (class, its parent in the tree, a builtin base callers catch, the modules that export it)
TREE = [
    ("MessageError", "InvokerError", ValueError, ["invoker.messages"]),
    ("DocumentUnreadable", "MessageError", ValueError, ["invoker.entities"]),
    ("BrokerError", "InvokerError", None, []),
    ("RecordTooLarge", "BrokerError", None, []),
    ("BrokerUnavailable", "BrokerError", None, []),
    ("StoreError", "InvokerError", None, ["invoker.store.database"]),
    ("DocumentNotFound", "StoreError", None, ["invoker.store.database"]),
    ("DocumentConflict", "StoreError", None, ["invoker.store.database"]),
    ("StoreUnavailable", "StoreError", None, ["invoker.store.database"]),
    ("DocumentTypeMismatch", "StoreError", None, ["invoker.store.entities"]),
    ("UnsupportedAttachmentStore", "StoreError", None, ["invoker.store.entities"]),
    ("ContainerError", "InvokerError", None, ["invoker.containerpool.container", "invoker.containerpool.docker"]),
    ("ContainerStartError", "ContainerError", None,
     ["invoker.containerpool.container", "invoker.containerpool.docker", "invoker.containerpool.process"]),
    ("EngineUnreachable", "ContainerError", None, ["invoker.containerpool.docker"]),
    ("NetworkError", "ContainerError", RuntimeError, ["invoker.containerpool.network"]),
    ("GpuError", "InvokerError", None, []),
    ("GpuRequestError", "GpuError", ValueError, ["invoker.gpu.request", "invoker.gpu.inventory"]),
    ("InventoryError", "GpuError", ValueError, ["invoker.gpu.inventory"]),
    ("AdmissionError", "GpuError", ValueError, ["invoker.gpu.ledger"]),
    ("MpsError", "GpuError", RuntimeError, ["invoker.gpu.mps"]),
]


@pytest.mark.parametrize(("name", "parent", "builtin", "modules"), TREE, ids=[row[0] for row in TREE])
def test_each_error_has_its_place_in_the_tree(name, parent, builtin, modules):
    cls = getattr(errors, name)
    assert cls.__bases__[0] is getattr(errors, parent)
    assert issubclass(cls, errors.InvokerError)
    if builtin is not None:
        assert issubclass(cls, builtin)  # e.g. configuration parsing catches ValueError
    for module in modules:
        assert getattr(importlib.import_module(module), name) is cls  # the old import path


def test_the_docstring_draws_every_class():
    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.InvokerError)}
    assert classes == {row[0] for row in TREE} | {"InvokerError"}
    for name in classes:
        assert f" {name} " in errors.__doc__ or f" {name}\n" in errors.__doc__, name


def answer(error: BaseException) -> tuple[int, object]:
    response = errors.activation_response_for(error)
    return response.status_code, response.result


@pytest.mark.parametrize(("error", "expected"), [
    # InvokerReactive.scala's fetch failures
    (errors.DocumentNotFound("guest/a"), (APPLICATION_ERROR, Messages.action_not_found)),
    (errors.DocumentTypeMismatch("trigger"), (WHISK_ERROR, Messages.action_incompatible)),
    (errors.DocumentUnreadable("unknown kind"), (WHISK_ERROR, Messages.action_incompatible)),
    (errors.MessageError("no exec"), (WHISK_ERROR, Messages.action_incompatible)),
    (errors.StoreUnavailable("down"), (WHISK_ERROR, Messages.action_fetch_failed)),
    (errors.UnsupportedAttachmentStore("s3:"), (WHISK_ERROR, Messages.action_fetch_failed)),
    (errors.DocumentConflict("409"), (WHISK_ERROR, Messages.action_fetch_failed)),
    # containers that could not be provisioned (ContainerProxy.scala)
    (errors.ContainerStartError("docker run failed"), (WHISK_ERROR, Messages.resource_error)),
    (errors.EngineUnreachable("socket gone"), (WHISK_ERROR, Messages.resource_error)),
    (errors.NetworkError("no network"), (WHISK_ERROR, Messages.resource_error)),
    (errors.ContainerError("pause failed"), (WHISK_ERROR, Messages.resource_error)),
    # GPUs
    (errors.MpsError("daemon gone"), (WHISK_ERROR, Messages.resource_error)),
    (errors.AdmissionError("full"), (WHISK_ERROR, Messages.resource_error)),
    (errors.InventoryError("0:x"), (WHISK_ERROR, Messages.resource_error)),
    (errors.GpuRequestError("not a size: 'x'"),
     (DEVELOPER_ERROR, "The action's GPU request is invalid: not a size: 'x'.")),
    # anything else is an invoker bug
    (errors.BrokerUnavailable("away"), (WHISK_ERROR, Messages.abnormal_run)),
    (KeyError("x"), (WHISK_ERROR, Messages.abnormal_run)),
    (ValueError("not ours"), (WHISK_ERROR, Messages.abnormal_run)),
])
def test_each_error_becomes_openwhisks_answer(error, expected):
    status, text = expected
    assert answer(error) == (status, {"error": text})


def test_the_texts_are_openwhisks_words():
    assert answer(errors.DocumentNotFound("x"))[1] == {
        "error": "Action could not be found or may have been deleted."}
    assert answer(errors.ContainerStartError("x"))[1] == {
        "error": "Failed to provision resources to run the action."}


def test_a_subclass_outside_the_tree_module_takes_its_nearest_answer():
    class ImageMissing(errors.ContainerStartError):
        pass

    assert answer(ImageMissing("x")) == (WHISK_ERROR, {"error": Messages.resource_error})
