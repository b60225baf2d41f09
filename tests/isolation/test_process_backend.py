"""Attacks on the process backend, where runtimes are child processes of the invoker, as its
user: read the invoker's secrets from the environment or from ``/proc/<invoker>/environ``;
call a neighbour runtime on its loopback port. Also: default admin credentials on a public bind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from invoker.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-couchdb-password"

# A small invoker: the process backend as the invoker's start-up makes it, one hostile action
# in it, and one neighbour it tries to call.
INVOKER = r'''
import json, os, sys
from invoker.containerpool.container import ContainerSpec
from invoker.containerpool.process import ProcessContainerFactory, start_process_backend
start_process_backend()
factory = ProcessContainerFactory(python=sys.executable, extra_env={"__OW_INVOKER": "isotest"})
spec = ContainerSpec(name="evil", kind="python:3", image="", memory_mb=128, cpu_shares=2)
hostile, neighbour = factory.create(spec), factory.create(spec)
try:
    code = open(sys.argv[1]).read()
    assert hostile.initialize({"name": "evil", "main": "main", "code": code, "binary": False}, 30).ok
    assert neighbour.initialize({"name": "n", "main": "main", "binary": False,
                                 "code": "def main(a):\n    return {'neighbour': 'fine'}"}, 30).ok
    out = hostile.run({"value": {"invoker": os.getpid(), "neighbour": neighbour.client.port}}, 30)
    print(json.dumps({"hostile": json.loads(out.body), "neighbour": json.loads(neighbour.run({"value": {}}, 30).body)}))
finally:
    factory.close()
'''

HOSTILE = r'''
import json, os, urllib.request, urllib.error
def main(args):
    out = {"environ": [k for k, v in os.environ.items() if "hunter2" in v]}
    try:
        out["proc"] = "hunter2" in open(f"/proc/{args['invoker']}/environ").read()
    except OSError as error:
        out["proc"] = error.strerror
    request = urllib.request.Request(f"http://127.0.0.1:{args['neighbour']}/run", data=b'{"value":{}}')
    try:
        out["neighbour"] = urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as error:
        out["neighbour"] = error.code
    return out
'''


def run_invoker(tmp_path: Path) -> tuple[dict, str]:
    """As an unprivileged user: root reads any process's environment, whatever it does."""
    if os.geteuid() == 0:  # pytest's tmp_path is root's alone
        tmp_path = Path(tempfile.mkdtemp(prefix="owgpu-iso-"))
    action = tmp_path / "hostile.py"
    action.write_text(HOSTILE)
    script = tmp_path / "small_invoker.py"
    script.write_text(INVOKER)
    python, user = sys.executable, None
    if os.geteuid() == 0:
        python, user = shutil.which("python3", path="/usr/bin:/bin"), 65534
        if python is None:
            pytest.skip("as root, this needs a system python3 that user nobody can run")
        tmp_path.chmod(0o755)
        for path in (action, script):
            path.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{REPO / 'runtimes' / 'python'}",
           "CONFIG_whisk_couchdb_password": PASSWORD}
    done = subprocess.run([python, str(script), str(action)], env=env, user=user, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_an_action_on_the_process_backend_reads_no_invoker_secret(tmp_path):
    try:
        seen, log = run_invoker(tmp_path)
    finally:
        for leftover in Path(tempfile.gettempdir()).glob("owgpu-iso-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    hostile = seen["hostile"]
    assert hostile["environ"] == []  # the runtime's environment is the backend's, not the invoker's
    assert hostile["proc"] == "Permission denied"  # the invoker is not dumpable: /proc/<pid>/environ is root's
    assert hostile["neighbour"] == 403  # a neighbour runtime on loopback asks for its secret
    assert seen["neighbour"] == {"neighbour": "fine"}
    assert "isolates nothing" in log  # and the invoker says what this backend is for


@pytest.mark.parametrize("bind", ["0.0.0.0", "10.1.2.3", "::"])
def test_default_admin_credentials_are_refused_beyond_loopback(bind):
    with pytest.raises(ConfigError, match="invoker-password"):
        load_config(["--bind", bind], env={})
    load_config(["--bind", bind, "--invoker-password", "chosen-by-the-operator"], env={})
    load_config(["--bind", "127.0.0.1"], env={})  # loopback: the defaults are fine
