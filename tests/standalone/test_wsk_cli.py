"""Standalone mode driven by the real OpenWhisk CLI, ``wsk``, as a user drives it: the exit
codes and the text it prints.

``./dev setup`` builds ``wsk`` from its Go module into ``.cache/bin/wsk``; ``OWGPU_WSK`` names
another binary. Where no ``wsk`` could be installed the module is skipped, with the reason
(under ``OWGPU_REQUIRE_WSK=1`` it fails instead). ``wsk`` reads its properties from
``WSK_CONFIG_FILE`` in a temporary directory, never the user's ``~/.wskprops``.

``wsk`` exits with the HTTP status of a failed request modulo 256: 502 (a failed activation)
is 246, 501 is 245, 404 is 148, 409 is 153, 401 is 145, 400 is 144.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from standalone_support import ROOT, Standalone

WSK_BIN = Path(os.environ.get("OWGPU_WSK") or ROOT / ".cache" / "bin" / "wsk")
EXIT = {400: 144, 401: 145, 404: 148, 409: 153, 501: 245, 502: 246}
ACTIVATION_ID = r"[0-9a-f]{32}"
TRANSID = r"\(code [0-9a-f]{32}\)"

HELLO = '''
import os

def main(args):
    name = args.get("name", "stranger")
    print(f"hello log line for {name}")
    return {"greeting": f"{args.get('salutation', 'Hello')}, {name}!",
            "action": os.environ["__OW_ACTION_NAME"]}
'''
HELLO_V2 = '''
def main(args):
    return {"greeting": "v2 says hi to " + args.get("name", "nobody"), "salutation": args.get("salutation")}
'''
# What a -gpu kind sees: with no GPU on this machine it runs on the CPU and says so.
GPU = '''
import os

def main(args):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    return {"sum": sum(args["values"]), "device": "cuda" if visible else "cpu"}
'''
ZIP_MAIN = '''
from helper import shout

def start(args):
    return {"shout": shout(args["word"]), "times": args["times"], "unit": args["unit"]}
'''
ZIP_HELPER = "def shout(word):\n    return word.upper() + '!'\n"
FAILING = '''
import time

def main(args):
    time.sleep(args.get("sleep", 0))
    if args.get("raise"):
        raise RuntimeError("boom")
    return {"error": "told to fail"}
'''


@dataclass
class Wsk:
    """``wsk`` with its own properties file (``WSK_CONFIG_FILE``) and a HOME of its own."""

    binary: Path
    home: Path

    def env(self) -> dict[str, str]:
        """A user's shell: ``wsk`` first on PATH, its properties in WSK_CONFIG_FILE."""
        bin_dir = self.home / "bin"
        if not bin_dir.exists():
            bin_dir.mkdir()
            (bin_dir / "wsk").symlink_to(self.binary)
        env = {**os.environ, "HOME": str(self.home), "WSK_CONFIG_FILE": str(self.home / "wskprops"),
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("__OW_API_HOST", None)
        env.pop("__OW_API_KEY", None)
        return env

    def __call__(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["wsk", *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.home)

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> dict:
        """The JSON wsk prints, after its ``ok: ...`` line where it prints one."""
        out = self.ok(*args)
        return json.loads(out[out.index("{"):])

    def activation(self, activation_id: str, timeout_s: float = 30) -> dict:
        """``wsk activation get``: the record lands a moment after a non-blocking invoke."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self("activation", "get", activation_id)
            if done.returncode == 0:
                assert done.stdout.startswith(f"ok: got activation {activation_id}\n"), done.stdout
                return json.loads(done.stdout.split("\n", 1)[1])
            assert done.returncode == EXIT[404] and time.monotonic() < deadline, (done.stdout, done.stderr)
            time.sleep(0.2)


def annotations(entity: dict) -> dict:
    return {a["key"]: a["value"] for a in entity["annotations"]}


@pytest.fixture(scope="module")
def wsk_binary() -> Path:
    """Checked before standalone mode starts: without wsk there is nothing to drive it with."""
    if not os.access(WSK_BIN, os.X_OK):
        reason = (f"no wsk CLI at {WSK_BIN}: ./dev setup builds it from the Go module "
                  "github.com/apache/openwhisk-cli (see its log .cache/dev/build-wsk*.log), or set OWGPU_WSK")
        if os.environ.get("OWGPU_REQUIRE_WSK") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return WSK_BIN


@pytest.fixture(scope="module")
def wsk(wsk_binary: Path, standalone: Standalone, tmp_path_factory: pytest.TempPathFactory) -> Wsk:
    home = tmp_path_factory.mktemp("wsk-home")
    cli = Wsk(wsk_binary, home)
    out = cli.ok("property", "set", "--apihost", standalone.url, "--auth", standalone.api_key)
    assert "ok: whisk auth set. Run 'wsk property get --auth' to see the new value." in out
    assert f"ok: whisk API host set to {standalone.url}" in out
    return cli


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_property_set_writes_only_the_given_properties_file(wsk: Wsk, standalone: Standalone) -> None:
    props = (wsk.home / "wskprops").read_text()
    assert f"APIHOST={standalone.url}" in props and f"AUTH={standalone.api_key}" in props
    assert not (wsk.home / ".wskprops").exists()
    assert "whisk API build\t\tstandalone" in wsk.ok("property", "get", "--apibuild")
    assert wsk.ok("namespace", "list").split() == ["namespaces", "guest"]


def test_create_invoke_blocking_result_with_parameters(wsk: Wsk) -> None:
    code = write(wsk.home, "hello.py", HELLO)
    assert wsk.ok("action", "create", "hello", str(code), "--kind", "python:3", "-p", "salutation", "Hi",
                  "-a", "description", "a test action", "--timeout", "20000", "--memory", "128") \
        == "ok: created action hello\n"
    action = wsk.json("action", "get", "hello")
    assert action["exec"]["kind"] == "python:3" and action["version"] == "0.0.1"
    assert action["limits"] == {"timeout": 20000, "memory": 128, "logs": 10, "concurrency": 1}
    assert action["parameters"] == [{"key": "salutation", "value": "Hi"}]
    assert annotations(action)["description"] == "a test action"
    result = wsk.json("action", "invoke", "hello", "--blocking", "--result", "-p", "name", "Ada")
    assert result == {"greeting": "Hi, Ada!", "action": "/guest/hello"}
    listed = wsk.ok("action", "list")
    assert re.search(r"^/guest/hello\s+private python:3$", listed, re.M), listed


def test_non_blocking_invoke_then_activation_get_result_logs_list(wsk: Wsk) -> None:
    write(wsk.home, "greet.py", HELLO)
    wsk.ok("action", "create", "greet", str(wsk.home / "greet.py"), "--kind", "python:3")
    out = wsk.ok("action", "invoke", "greet", "-p", "name", "Alan")
    match = re.fullmatch(rf"ok: invoked /_/greet with id ({ACTIVATION_ID})\n", out)
    assert match, out
    activation_id = match.group(1)
    record = wsk.activation(activation_id)
    assert record["activationId"] == activation_id and record["name"] == "greet"
    assert record["response"]["status"] == "success" and record["response"]["success"] is True
    assert annotations(record)["kind"] == "python:3"
    assert json.loads(wsk.ok("activation", "result", activation_id)) == {"greeting": "Hello, Alan!",
                                                                         "action": "/guest/greet"}
    logs = wsk.ok("activation", "logs", activation_id)
    assert re.fullmatch(r"\S+Z\s+stdout: hello log line for Alan\n", logs), logs
    assert wsk.ok("activation", "logs", activation_id, "--strip") == "hello log line for Alan\n"
    listed = wsk.ok("activation", "list", "greet")
    assert listed.startswith("Datetime            Activation ID")
    # Start is cold or warm (a stem cell may have run it); Duration is e.g. 12ms or 1.2s.
    assert re.search(rf"{activation_id} python:3 +(cold|warm) +\S+ +success +guest/greet:0.0.1", listed), listed
    assert wsk.json("activation", "get", "--last")["activationId"] == activation_id


def test_gpu_kind_with_a_gpu_annotation(wsk: Wsk, standalone: Standalone) -> None:
    code = write(wsk.home, "gpu_sum.py", GPU)
    request = '{"memory": "1 GB", "sm": 25}'
    assert wsk.ok("action", "create", "gpu-sum", str(code), "--kind", "python:3-gpu", "-a", "gpu", request,
                  "--memory", "512") == "ok: created action gpu-sum\n"
    action = wsk.json("action", "get", "gpu-sum")
    assert action["exec"]["kind"] == "python:3-gpu"
    assert annotations(action)["gpu"] == {"memory": "1 GB", "sm": 25}  # -a parses the JSON
    out = wsk.ok("action", "invoke", "gpu-sum", "--blocking", "-p", "values", "[1.5, 2.5, 4]")
    assert out.startswith("ok: invoked /_/gpu-sum with id ")
    activation = json.loads(out[out.index("{"):])
    assert activation["response"]["result"]["sum"] == 8.0
    assert annotations(activation)["kind"] == "python:3-gpu"
    gpus = next(line for line in standalone.output if line.strip().startswith("GPUs:"))
    if "none" in gpus:  # no GPU here: the -gpu kind runs on the CPU and its log says so
        assert activation["response"]["result"]["device"] == "cpu"
        assert "running on the CPU" in wsk.ok("activation", "logs", activation["activationId"])


def test_zip_action_with_main_and_parameter_file(wsk: Wsk) -> None:
    archive = wsk.home / "deploy" / "shout.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("__main__.py", ZIP_MAIN)
        zipped.writestr("helper.py", ZIP_HELPER)
    params = write(wsk.home, "params.json", json.dumps({"times": 3, "unit": "beats"}))
    assert wsk.ok("action", "create", "shout", str(archive), "--kind", "python:3", "--main", "start",
                  "-P", str(params), "-p", "unit", "claps") == "ok: created action shout\n"
    action = wsk.json("action", "get", "shout")
    assert action["exec"]["binary"] is True and action["exec"]["main"] == "start"
    assert {p["key"]: p["value"] for p in action["parameters"]} == {"times": 3, "unit": "claps"}
    assert wsk.json("action", "invoke", "shout", "-br", "-p", "word", "hey") == \
        {"shout": "HEY!", "times": 3, "unit": "claps"}
    assert wsk.ok("action", "get", "shout", "--save") == f"ok: saved action code to {wsk.home / 'shout.zip'}\n"
    assert (wsk.home / "shout.zip").read_bytes() == archive.read_bytes()


def test_update_replaces_code_and_limits_and_keeps_parameters(wsk: Wsk) -> None:
    wsk.ok("action", "create", "evolving", str(write(wsk.home, "v1.py", HELLO)), "-p", "salutation", "Hey")
    code = write(wsk.home, "v2.py", HELLO_V2)
    assert wsk.ok("action", "update", "evolving", str(code), "--timeout", "5000", "--memory", "256") \
        == "ok: updated action evolving\n"
    action = wsk.json("action", "get", "evolving")
    assert action["version"] == "0.0.2"
    assert action["limits"]["timeout"] == 5000 and action["limits"]["memory"] == 256
    assert action["parameters"] == [{"key": "salutation", "value": "Hey"}]
    assert wsk.json("action", "invoke", "evolving", "-br", "-p", "name", "Edsger") == \
        {"greeting": "v2 says hi to Edsger", "salutation": "Hey"}


def test_sequence(wsk: Wsk) -> None:
    add = write(wsk.home, "add.py", "def main(args):\n    return {'n': args['n'] + args.get('step', 1)}\n")
    double = write(wsk.home, "double.py", "def main(args):\n    return {'n': 2 * args['n']}\n")
    wsk.ok("action", "create", "add", str(add), "-p", "step", "1")
    wsk.ok("action", "create", "double", str(double))
    assert wsk.ok("action", "create", "add-double-add", "--sequence", "add,double,/guest/add") \
        == "ok: created action add-double-add\n"
    action = wsk.json("action", "get", "add-double-add")
    assert action["exec"] == {"kind": "sequence", "components": ["/guest/add", "/guest/double", "/guest/add"]}
    assert wsk.json("action", "invoke", "add-double-add", "-br", "-p", "n", "4") == {"n": 11}


def test_delete(wsk: Wsk) -> None:
    wsk.ok("action", "create", "doomed", str(write(wsk.home, "doomed.py", HELLO)))
    assert wsk.ok("action", "delete", "doomed") == "ok: deleted action doomed\n"
    gone = wsk("action", "get", "doomed")
    assert gone.returncode == EXIT[404]
    assert re.match(rf"error: Unable to get action 'doomed': The requested resource does not exist\. {TRANSID}\n",
                    gone.stderr), gone.stderr
    assert not re.search(r"^/guest/doomed\b", wsk.ok("action", "list"), re.M)


def test_failing_action_and_time_limit(wsk: Wsk) -> None:
    # wsk prints a failed activation on stderr and exits with 502 % 256. A developer error
    # (an exception, the time limit) ends the action's container: each action gets one, last.
    failing = str(write(wsk.home, "failing.py", FAILING))
    wsk.ok("action", "create", "failing", failing)
    application = wsk("action", "invoke", "failing", "--blocking", "--result")
    assert application.returncode == EXIT[502] and application.stdout == ""
    assert json.loads(application.stderr) == {"error": "told to fail"}
    full = wsk("action", "invoke", "failing", "--blocking")
    assert full.returncode == EXIT[502]
    assert re.match(rf"ok: invoked /_/failing with id {ACTIVATION_ID}\n", full.stderr), full.stderr
    record = json.loads(full.stderr[full.stderr.index("{"):])
    assert record["response"]["status"] == "application error" and record["response"]["success"] is False
    developer = wsk("action", "invoke", "failing", "-br", "-p", "raise", "true")
    assert developer.returncode == EXIT[502] and json.loads(developer.stderr) == {"error": "boom"}
    # A time limit that a cold start on a loaded machine still fits in (it bounds /init too).
    wsk.ok("action", "create", "slow", failing, "--timeout", "3000")
    late = wsk("action", "invoke", "slow", "--blocking", "-p", "sleep", "5")
    assert late.returncode == EXIT[502]
    record = json.loads(late.stderr[late.stderr.index("{"):])
    assert record["response"]["result"] == {"error": "The action exceeded its time limits of 3000 milliseconds."}
    assert record["response"]["status"] == "action developer error" and annotations(record)["timeout"] is True


def test_errors_a_user_meets(wsk: Wsk, standalone: Standalone) -> None:
    hello = str(write(wsk.home, "err.py", HELLO))
    cases = [
        (("action", "invoke", "no-such-action", "--blocking"), 404,
         "error: Unable to invoke action 'no-such-action': The requested resource does not exist."),
        (("action", "delete", "no-such-action"), 404,
         "error: Unable to delete action 'no-such-action': The requested resource does not exist."),
        (("action", "create", "dup", hello), None, None),
        (("action", "create", "dup", hello), 409, "error: Unable to create action 'dup': resource already exists"),
        (("action", "create", "big", hello, "--memory", "4096"), 400,
         "error: Unable to create action 'big': The request content was malformed:\nrequirement failed: "
         "memory 4096 MB exceeds allowed threshold of 512 MB"),
        (("action", "create", "old", hello, "--kind", "python:2.7-gpu"), 400,
         "error: Unable to create action 'old': The request content was malformed:\nkind 'python:2.7-gpu' "
         "not in Set("),
        (("--auth", "11111111-2222-3333-4444-555555555555:wrongkey", "action", "list"), 401,
         "error: Unable to obtain the list of actions for namespace 'default': The supplied authentication is "
         "invalid"),
        (("package", "create", "utilities"), 501,
         "error: Unable to create package 'utilities': Packages are not supported by this standalone mode"),
        (("action", "create", "utilities/hello", hello), 501,
         "error: Unable to create action 'utilities/hello': Packages are not supported by this standalone mode"),
    ]
    for args, status, message in cases:
        done = wsk(*args)
        if status is None:
            assert done.returncode == 0, (args, done.stderr)
            continue
        assert done.returncode == EXIT[status], (args, done.returncode, done.stderr)
        assert done.stderr.startswith(message), (args, done.stderr)
        assert re.search(TRANSID, done.stderr), (args, done.stderr)


def test_listing_what_standalone_mode_has_none_of(wsk: Wsk) -> None:
    assert wsk.ok("package", "list") == "packages\n"
    assert wsk.ok("trigger", "list") == "triggers\n"
    assert wsk.ok("rule", "list") == "rules\n"
    summary = wsk.ok("list")
    assert summary.startswith("Entities in namespace: default\npackages\nactions\n"), summary


def test_example_deploy_scripts(wsk: Wsk) -> None:
    """The examples' deploy.sh as a user runs them (deploying only: tests/actions invoke them)."""
    model = write(wsk.home, "model.onnx", "a model file: deploy.sh only passes its path on")
    for script in ("sentence-embedder/deploy.sh", "image-pipeline/deploy.sh"):
        done = subprocess.run(["sh", str(ROOT / "actions" / script), str(model)], env=wsk.env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (script, done.stdout, done.stderr)
    embedder = wsk.json("action", "get", "sentence-embedder")
    assert embedder["exec"]["kind"] == "python:3-gpu"
    assert embedder["limits"]["memory"] == 512 and embedder["limits"]["timeout"] == 120000
    classifier = wsk.json("action", "get", "image-classifier")
    assert classifier["exec"]["kind"] == "python:3-gpu"
    assert classifier["parameters"] == [{"key": "model_path", "value": str(model.resolve())}]
    assert wsk.json("action", "get", "image-preprocess")["exec"]["kind"] == "python:3"
    assert wsk.json("action", "get", "image-classify")["exec"] == {
        "kind": "sequence", "components": ["/guest/image-preprocess", "/guest/image-classifier"]}
