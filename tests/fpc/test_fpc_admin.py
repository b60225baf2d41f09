"""The admin API under FPC, as OpenWhisk's FPCInvokerServer serves it (basic auth): /disable
takes the invoker out of the scheduler's choice (status down in etcd) and drains its containers,
/enable brings it back, /isEnabled says which, /pool/count counts the containers."""

from __future__ import annotations

import requests
from fpc_deployment import FpcDeployment, wait_until

from invoker.fpc.messages import ContainerCreationError, InvokerResourceMessage, InvokerStatus

AUTH = ("invoker.user", "invoker.pass")


def url(fpc: FpcDeployment, path: str) -> str:
    host, port = fpc.invoker._http.server_address[:2]
    return f"http://{host}:{port}{path}"


def status(fpc: FpcDeployment) -> InvokerStatus:
    value = fpc.etcd.get(fpc.names.invoker_health(fpc.invoker.settings.instance))
    return InvokerResourceMessage.parse(value).status if value else None


def test_disable_takes_it_out_and_drains_its_containers_enable_brings_it_back(fpc: FpcDeployment):
    fqn, rev, doc = fpc.deploy("admin")
    fpc.scheduler.service.add_queue("guest", fqn, rev)
    assert fpc.create(fqn, rev, doc)[1].succeeded
    assert requests.get(url(fpc, "/pool/count"), timeout=5).status_code == 401
    assert requests.get(url(fpc, "/pool/count"), auth=AUTH, timeout=5).json() == 1
    assert requests.get(url(fpc, "/isEnabled"), auth=AUTH, timeout=5).json() == {"enabled": True}
    assert requests.post(url(fpc, "/disable"), auth=("invoker.user", "wrong"), timeout=5).status_code == 401

    assert requests.post(url(fpc, "/disable"), auth=AUTH, timeout=5).ok
    wait_until(lambda: status(fpc) is InvokerStatus.DOWN, what="status down in etcd")
    assert requests.get(url(fpc, "/isEnabled"), auth=AUTH, timeout=5).json() == {"enabled": False}
    wait_until(lambda: not fpc.invoker.pool.members, 20, "its containers drained")
    wait_until(lambda: not fpc.container_keys(fqn, rev), what="their keys removed")
    assert any(not r.alive for r in fpc.scheduler.service.requests)  # each said goodbye
    _, ack = fpc.create(fqn, rev, doc)  # a creation sent before the scheduler saw it: elsewhere
    assert ack.error is ContainerCreationError.ResourceNotEnoughError
    assert requests.get(url(fpc, "/pool/count"), auth=AUTH, timeout=5).json() == 0

    assert requests.post(url(fpc, "/enable"), auth=AUTH, timeout=5).ok
    wait_until(lambda: status(fpc) is InvokerStatus.UP, what="status up again")
    assert fpc.create(fqn, rev, doc)[1].succeeded
