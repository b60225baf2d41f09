"""GPU work under FPC with no controller patch: the GPU invoker registers with the tag ``gpu``
(what an action's ``invoker-resources: ["gpu"]`` asks FPC's ContainerManager for), its GPU
creations are admitted by GPU memory, and its published free memory is 0 while no GPU can
take the smallest GPU container, so the scheduler stops choosing it."""

from __future__ import annotations

import pytest
from fpc_deployment import FpcDeployment, wait_until
from fpc_driver import deletion

from invoker.fpc.messages import ContainerCreationError, InvokerResourceMessage, InvokerStatus


@pytest.fixture
def gpu_fpc(fpc_factory, tmp_path) -> FpcDeployment:
    # No --tags: the tag comes from the GPU layer (a declared 2 GiB GPU, time-slicing).
    return fpc_factory("--user-memory", "4096 m", "--gpus", "0:2GiB", "--gpu-mps", "off",
                       "--gpu-mps-dir", str(tmp_path / "mps"), "--gpu-reserved-memory", "0 MB",
                       "--gpu-stem-cells", "")


def registration(fpc: FpcDeployment) -> InvokerResourceMessage:
    return InvokerResourceMessage.parse(fpc.etcd.get(fpc.names.invoker_health(fpc.invoker.settings.instance)))


def test_a_gpu_invoker_registers_with_the_gpu_tag(gpu_fpc: FpcDeployment):
    resources = wait_until(lambda: gpu_fpc.etcd.get(gpu_fpc.names.invoker_health(gpu_fpc.invoker.settings.instance)),
                           what="the registration")
    tags = InvokerResourceMessage.parse(resources).tags
    assert "gpu" in tags and "gpu-time-slicing" in tags  # FPC's tag, and the sharing mode's


def test_a_cpu_invoker_has_no_gpu_tag(fpc_factory):
    fpc = fpc_factory()
    wait_until(lambda: fpc.etcd.get(fpc.names.invoker_health(fpc.invoker.settings.instance)), what="registration")
    assert registration(fpc).tags == ()  # untagged: FPC's managed invokers


def test_gpu_actions_run_on_the_gpu_and_free_memory_is_0_once_the_gpus_are_full(gpu_fpc: FpcDeployment):
    fpc = gpu_fpc
    wait_until(lambda: fpc.etcd.get(fpc.names.invoker_health(fpc.invoker.settings.instance)), what="registration")
    assert registration(fpc).free_memory_mb == 4096
    fqn, rev, doc = fpc.deploy("infer", kind="python:3-gpu", resources=("gpu",), memory=1024)
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    (first,) = fpc.invoker.pool.members
    assert first.gpu is not None and first.gpu.gpu == "0"
    msg = fpc.controller.message(fqn, rev, {"on": "gpu"})
    fpc.scheduler.service.enqueue("guest", msg)
    assert fpc.controller.wait_for(msg.activation_id, 30).acks[0].response["response"]["result"] == {
        "echo": {"on": "gpu"}}
    # Half the GPU left: host memory is what the scheduler sees.
    wait_until(lambda: registration(fpc).free_memory_mb == 3072, what="free memory 3072")
    assert fpc.create(fqn, rev, doc)[1].succeeded  # the GPU is full now
    full = wait_until(lambda: (r := registration(fpc)).free_memory_mb == 0 and r, what="free memory 0")
    assert full.status is InvokerStatus.UP and full.busy_memory_mb == 2048  # busy is still host memory
    _, ack = fpc.create(fqn, rev, doc)  # the scheduler's view was stale: refused, and rescheduled
    assert ack.error is ContainerCreationError.ResourceNotEnoughError
    # Untagged CPU work that spills here while the GPU is full is still taken (host memory).
    cpu, cpu_rev, cpu_doc = fpc.deploy("plain")
    fpc.scheduler.service.add_queue("guest", cpu, cpu_rev)
    assert fpc.create(cpu, cpu_rev, cpu_doc)[1].succeeded
    assert [m.gpu is None for m in fpc.invoker.pool.members].count(True) == 1
    fpc.send(deletion(fqn, rev, doc))
    wait_until(lambda: registration(fpc).free_memory_mb == 4096 - 256, 30, "the GPU's room published again")
