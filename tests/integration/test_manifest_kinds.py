"""Any kind in the runtimes manifest the invoker is given runs on the Docker backend, by the
image the manifest names: a deployment keeps OpenWhisk's stock kinds beside the GPU ones."""

from __future__ import annotations

import json
import uuid

import pytest
from services import RUNTIME_IMAGE

# OpenWhisk's own manifest entry for python:3.11. The stock image cannot be pulled here, so
# the project's runtime image (same /init and /run contract) is tagged under its name.
STOCK_IMAGE = {"prefix": "openwhisk", "name": "action-python-v3.11", "tag": f"t{uuid.uuid4().hex[:6]}"}
MANIFEST = {
    "runtimes": {
        "nodejs": [{"kind": "nodejs:20", "default": True,
                    "image": {"prefix": "openwhisk", "name": "action-nodejs-v20", "tag": "nightly"}}],
        "python": [
            {"kind": "python:3.11", "default": True, "image": STOCK_IMAGE},
            {"kind": "python:3", "default": False,
             "image": {"prefix": "owgpu", "name": "action-python-v3", "tag": "latest"}},
        ],
    },
    "blackboxes": [],
}


@pytest.fixture
def stock_image(docker_client):
    image = docker_client.images.get(RUNTIME_IMAGE)
    repository = f"{STOCK_IMAGE['prefix']}/{STOCK_IMAGE['name']}"
    image.tag(repository, STOCK_IMAGE["tag"])
    yield f"{repository}:{STOCK_IMAGE['tag']}"
    docker_client.images.remove(f"{repository}:{STOCK_IMAGE['tag']}", noprune=True)


def test_a_stock_kind_runs_in_the_image_its_manifest_names(deployment_factory, docker_client, stock_image):
    deployment = deployment_factory(["--runtimes-manifest", json.dumps(MANIFEST)], backend="docker")
    fqn, rev = deployment.deploy("stock", "import sys\ndef main(args):\n    return {'v': sys.version_info[:2]}\n",
                                 kind="python:3.11")
    msg, _ = deployment.invoke(fqn, rev, {})
    record = deployment.record(msg)
    assert record["response"]["statusCode"] == 0, record["response"]
    assert record["response"]["result"] == {"v": [3, 11]}
    notes = {a["key"]: a["value"] for a in record["annotations"]}
    assert notes["kind"] == "python:3.11"
    # It really ran in a container of that image.
    (container,) = docker_client.containers.list(
        filters={"label": [f"org.openwhisk.invoker=wsk{deployment.instance}", "org.openwhisk.kind=python:3.11"]})
    assert stock_image in container.image.tags or any(stock_image in t for t in container.image.tags)


def test_a_kind_whose_image_is_absent_is_not_runnable(deployment_factory):
    deployment = deployment_factory(["--runtimes-manifest", json.dumps(MANIFEST)], backend="docker")
    images = deployment.invoker.pool.images
    assert images.runnable("python:3")
    assert not images.runnable("nodejs:20")  # openwhisk/action-nodejs-v20 is not on this node
    fqn, rev = deployment.deploy("js", "function main(a) { return a; }", kind="nodejs:20")
    msg, acks = deployment.invoke(fqn, rev, {})
    record = deployment.record(msg)
    # Not silently dropped: the controller gets its completion and a record says why.
    assert acks.slot_freeing and record["response"]["statusCode"] != 0
