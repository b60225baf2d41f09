"""The committed activation_pb2*.py are what grpcio-tools makes of activation.proto now."""

from __future__ import annotations

from pathlib import Path

import pytest

from invoker.fpc import activation_pb2 as pb
from invoker.fpc import protogen


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) is not installed")
    for generated in protogen.generate(tmp_path):
        committed = protogen.ROOT / generated.relative_to(tmp_path)
        assert generated.read_text() == committed.read_text(), (
            f"{committed.relative_to(protogen.ROOT)} is stale: run `python -m invoker.fpc.protogen`")


def test_the_service_and_field_numbers_are_openwhisks() -> None:
    service = pb.DESCRIPTOR.services_by_name["ActivationService"]
    assert service.full_name == "activation.ActivationService"
    assert [m.name for m in service.methods] == ["FetchActivation", "RescheduleActivation"]
    fields = {f.name: f.number for f in pb.FetchRequest.DESCRIPTOR.fields}
    assert fields == {"transactionId": 1, "invocationNamespace": 2, "fqn": 3, "rev": 4, "containerId": 5,
                      "warmed": 6, "lastDuration": 7, "alive": 8}
    assert pb.FetchRequest.DESCRIPTOR.fields_by_name["lastDuration"].message_type.full_name == (
        "google.protobuf.Int64Value")
    assert {f.name: f.number for f in pb.RescheduleRequest.DESCRIPTOR.fields} == {
        "invocationNamespace": 1, "fqn": 2, "rev": 3, "activationMessage": 4}
    assert pb.FetchResponse.DESCRIPTOR.fields_by_name["activationMessage"].number == 1
    assert pb.RescheduleResponse.DESCRIPTOR.fields_by_name["isRescheduled"].number == 1
