"""The REST API's OpenWhisk semantics that the npm client does not reach: the blocking
timeout (202), status codes of failed activations, input checks, and the guest key."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import requests
from standalone_support import ROOT, Standalone, start_standalone

SLEEPY = '''
import time

def main(args):
    time.sleep(args.get("seconds", 0))
    return {"slept": args.get("seconds", 0)}
'''
FAILING = '''
def main(args):
    if args.get("raise"):
        raise RuntimeError("boom")
    return {"error": "told to fail"}
'''


def put(server: Standalone, name: str, body: dict, overwrite: bool = False) -> requests.Response:
    return requests.put(server.api(f"actions/{name}"), json=body, auth=server.auth,
                        params={"overwrite": str(overwrite).lower()}, timeout=30)


def invoke(server: Standalone, name: str, payload: dict | None = None, **params: str) -> requests.Response:
    return requests.post(server.api(f"actions/{name}"), json=payload or {}, auth=server.auth, params=params,
                         timeout=90)


def test_blocking_invoke_that_outlasts_the_wait_answers_202_and_finishes_later(standalone: Standalone) -> None:
    assert put(standalone, "sleepy", {"exec": {"kind": "python:3", "code": SLEEPY}}).status_code == 200
    answer = invoke(standalone, "sleepy", {"seconds": 3}, blocking="true", timeout="500")
    assert answer.status_code == 202
    activation_id = answer.json()["activationId"]
    assert answer.headers["x-openwhisk-activation-id"] == activation_id
    record = standalone.record(activation_id)
    assert record["response"]["result"] == {"slept": 3}
    quick = invoke(standalone, "sleepy", {"seconds": 0}, blocking="true", result="true")
    assert quick.status_code == 200 and quick.json() == {"slept": 0}


def test_failed_activations_answer_502_with_the_activation(standalone: Standalone) -> None:
    assert put(standalone, "failing", {"exec": {"kind": "python:3", "code": FAILING}}).status_code == 200
    application = invoke(standalone, "failing", blocking="true")
    assert application.status_code == 502
    assert application.json()["response"]["status"] == "application error"
    assert application.json()["response"]["result"] == {"error": "told to fail"}
    developer = invoke(standalone, "failing", {"raise": True}, blocking="true", result="true")
    assert developer.status_code == 502 and "error" in developer.json()


def test_bad_input_is_rejected_in_openwhisk_terms(standalone: Standalone) -> None:
    cases = [
        (put(standalone, "x", {"exec": {"kind": "python:3"}}), 400,
         "The request content was malformed:\n'code' must be a string or attachment object defined in 'exec' "
         "for 'python:3' actions"),
        (put(standalone, "x", {"exec": {"kind": "python:3", "code": "x"}, "limits": {"memory": 4096}}), 400,
         "The request content was malformed:\nrequirement failed: memory 4096 MB exceeds allowed threshold "
         "of 512 MB"),
        (put(standalone, "x", {"exec": {"kind": "python:3", "code": "x"}, "limits": {"timeout": 50}}), 400,
         "The request content was malformed:\nrequirement failed: duration 50 milliseconds below allowed "
         "threshold of 100 milliseconds"),
        (put(standalone, "x", {"exec": {"kind": "python:3", "code": "x" * (48 * 1024 * 1024 + 1)}}), 413,
         f"exec larger than allowed: {48 * 1024 * 1024 + 1} > {48 * 1024 * 1024} bytes."),
        (requests.put(standalone.api("actions/x"), data=b"{not json", auth=standalone.auth, timeout=10), 400, None),
        (invoke(standalone, "sleepy", None, blocking="maybe"), 400,
         "The query parameter 'blocking' was malformed:\n'maybe' is not a valid Boolean value"),
        (invoke(standalone, "sleepy", None, blocking="true", timeout="70000"), 400,
         "Timeout must be number of milliseconds up to 60000."),
        (requests.get(standalone.api("activations/not-an-id"), auth=standalone.auth, timeout=10), 400, None),
        (requests.get(standalone.api("activations/" + "0" * 32), auth=standalone.auth, timeout=10), 404,
         "The requested resource does not exist."),
        (requests.get(standalone.api("actions?limit=500"), auth=standalone.auth, timeout=10), 400,
         "The value '500' is not in the range of 0 to 200 for actions."),
        (requests.get(standalone.api("actions/bad%2Fname%24"), auth=standalone.auth, timeout=10), 400,
         "The name of the entity contains illegal characters."),
    ]
    for answer, status, message in cases:
        assert answer.status_code == status, (answer.request.url, answer.text[:300])
        body = answer.json()
        assert set(body) == {"error", "code"} and body["code"] == answer.headers["X-Request-ID"]
        if message is not None:
            assert body["error"] == message
    assert requests.get(standalone.api("actions/x"), auth=standalone.auth, timeout=10).status_code == 404


def test_guest_key_is_checked_and_other_namespaces_are_forbidden(standalone: Standalone) -> None:
    missing = requests.get(standalone.api("actions"), timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"] == "The resource requires authentication, which was not supplied with the request"
    uuid, key = standalone.auth
    assert requests.get(standalone.api("actions"), auth=(uuid, key[:-1] + ("Y" if key.endswith("X") else "X")), timeout=10).status_code == 401
    other = requests.get(f"{standalone.url}/api/v1/namespaces/someone-else/actions", auth=standalone.auth,
                         timeout=10)
    assert other.status_code == 403
    assert other.json()["error"] == "The supplied authentication is not authorized to access this resource."
    assert requests.get(f"{standalone.url}/api/v1/namespaces/guest/actions", auth=standalone.auth,
                        timeout=10).status_code == 200


def test_key_file_is_private_and_the_key_never_printed(standalone: Standalone) -> None:
    mode = stat.S_IMODE(standalone.auth_file.stat().st_mode)
    assert mode == 0o600
    _, key = standalone.auth
    assert len(key) == 64
    printed = "\n".join(standalone.output)
    assert key not in printed
    assert f'--auth "$(cat {standalone.auth_file})"' in printed


def test_get_without_code_and_count(standalone: Standalone) -> None:
    assert put(standalone, "nocode", {"exec": {"kind": "python:3", "code": SLEEPY}}).status_code == 200
    answer = requests.get(standalone.api("actions/nocode"), params={"code": "false"}, auth=standalone.auth,
                          timeout=10)
    assert answer.status_code == 200 and "code" not in answer.json()["exec"]
    count = requests.get(standalone.api("actions"), params={"count": "true"}, auth=standalone.auth, timeout=10)
    assert count.json()["actions"] >= 1


def test_a_taken_port_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "invoker.standalone", "--port", str(port), "--backend",
                               "process", "--auth-file", str(tmp_path / "auth")], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert f"standalone: cannot serve on 127.0.0.1:{port}:" in done.stderr


def children(pid: int) -> set[int]:
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat_file.parent.name))
    return found


def test_ctrl_c_stops_the_whole_process_tree(tmp_path) -> None:
    server = start_standalone(tmp_path)
    try:
        assert put(server, "echo", {"exec": {"kind": "python:3", "code": "def main(a):\n    return a\n"}}).ok
        assert invoke(server, "echo", {"k": 1}, blocking="true", result="true").json() == {"k": 1}
        started = children(server.process.pid)
        assert len(started) >= 2  # at least the broker and the action's runtime process
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0
        alive = {pid for pid in started if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
        assert not alive, f"left running: {alive}"
    finally:
        server.stop()


ADD_ONE = "def main(args):\n    return {'n': args['n'] + args.get('step', 1)}\n"
DOUBLE = "def main(args):\n    if args['n'] > 100:\n        return {'error': 'too big'}\n    return {'n': 2 * args['n']}\n"


def test_sequence_feeds_each_result_to_the_next_action(standalone: Standalone) -> None:
    assert put(standalone, "add-one", {"exec": {"kind": "python:3", "code": ADD_ONE},
                                       "parameters": [{"key": "step", "value": 1}]}).ok
    assert put(standalone, "double", {"exec": {"kind": "python:3", "code": DOUBLE}}).ok
    created = put(standalone, "add-then-double",
                  {"exec": {"kind": "sequence", "components": ["/_/add-one", "double", "/guest/add-one"]}})
    assert created.status_code == 200, created.text
    assert created.json()["exec"] == {"kind": "sequence",
                                      "components": ["/guest/add-one", "/guest/double", "/guest/add-one"]}
    answer = invoke(standalone, "add-then-double", {"n": 4}, blocking="true")
    assert answer.status_code == 200, answer.text
    activation = answer.json()
    assert activation["response"]["result"] == {"n": 11}  # (4 + 1) * 2 + 1
    assert {a["key"]: a["value"] for a in activation["annotations"]}["kind"] == "sequence"
    components = activation["logs"]
    assert len(components) == 3
    first = standalone.record(components[0])
    assert first["cause"] == activation["activationId"] and first["response"]["result"] == {"n": 5}
    assert standalone.record(activation["activationId"])["logs"] == components
    # A failing component ends the sequence with its response.
    failed = invoke(standalone, "add-then-double", {"n": 200}, blocking="true")
    assert failed.status_code == 502
    assert failed.json()["response"]["result"] == {"error": "too big"} and len(failed.json()["logs"]) == 2
    later = invoke(standalone, "add-then-double", {"n": 0})
    assert later.status_code == 202
    assert standalone.record(later.json()["activationId"])["response"]["result"] == {"n": 3}


def test_sequence_components_are_checked(standalone: Standalone) -> None:
    cases = [
        ({"kind": "sequence", "components": ["/_/missing"]}, "Sequence component does not exist."),
        ({"kind": "sequence", "components": []}, "No component specified for the sequence."),
        ({"kind": "sequence", "components": ["/_/seq-self"]}, "Sequence may not refer to itself."),
        ({"kind": "sequence", "components": ["/someone/else"]}, "Sequence component does not exist."),
    ]
    for exec_, message in cases:
        answer = put(standalone, "seq-self", {"exec": exec_})
        assert answer.status_code == 400 and answer.json()["error"] == message, answer.text
