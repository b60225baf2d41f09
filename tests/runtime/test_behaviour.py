"""Behaviour of ``owruntime`` beyond the upstream suites: the remaining rows of the contract's tables,
the decisions where OpenWhisk's sources disagree, and the runtime's own features (threads,
concurrency, archives, HTTP details, shutdown)."""

from __future__ import annotations

import base64
import io
import json
import socket
import stat
import tarfile
import textwrap
import threading
import time
import zipfile

from runtime_support import SENTINEL, check_streams, init_payload, make_zip, run_payload

ECHO = "def main(args):\n    return args\n"
BUILD_FAILED = {"error": "The action failed to generate or locate a binary. See logs for details."}
START_FAILED = {"error": "Cannot start action. Check logs for details."}


def code(text: str) -> str:
    return textwrap.dedent(text)


# ---------------------------------------------------------------------- /run answers


def test_returning_none_answers_null(runtime):
    """ActionLoop: ``None`` -> 200 with body ``null``."""
    assert runtime.init(init_payload("def main(args):\n    return None\n")).status == 200
    response = runtime.run(run_payload({}))
    assert (response.status, response.raw) == (200, b"null")
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_other_non_dictionary_results(runtime):
    source = code("""
        def main(args):
            return args["r"]
        """)
    assert runtime.init(init_payload(source)).status == 200
    for result in (42, 1.5, True, "text"):
        status, body = runtime.run(run_payload({"r": result}))
        assert (status, body) == (502, {"error": "The action did not return a dictionary or array."})
    out, err = runtime.stop()
    assert check_streams(out, err, 4) == ("", "")


def test_tuple_result_is_an_array(runtime):
    assert runtime.init(init_payload("def main(args):\n    return (1, 'a')\n")).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, [1, "a"])


def test_multi_megabyte_result(runtime):
    source = code("""
        def main(args):
            return {"blob": "x" * args["n"], "items": list(range(1000))}
        """)
    assert runtime.init(init_payload(source)).status == 200
    n = 8 * 1024 * 1024
    response = runtime.run(run_payload({"n": n}))
    assert response.status == 200
    assert int(response.headers["content-length"]) == len(response.raw) > n
    assert response.json == {"blob": "x" * n, "items": list(range(1000))}
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_result_that_is_not_json(runtime):
    """ActionLoop's launcher dies on a result ``json.dumps`` rejects (400, action gone); this
    runtime answers 502 with the reason and keeps the action."""
    source = code("""
        def main(args):
            if args.get("bad"):
                return {"when": {1, 2}}
            return {"ok": True}
        """)
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({"bad": True}))
    assert status == 502
    assert body == {
        "error": "The action returned a result that is not valid JSON: Object of type set is not JSON serializable"
    }
    assert tuple(runtime.run(run_payload({}))) == (200, {"ok": True})
    out, err = runtime.stop()
    o, e = check_streams(out, err, 2)
    assert o == ""
    assert e.startswith("Traceback") and e.endswith("TypeError: Object of type set is not JSON serializable")


def test_nan_is_not_json(runtime):
    assert runtime.init(init_payload("def main(args):\n    return {'x': float('nan')}\n")).status == 200
    status, body = runtime.run(run_payload({}))
    assert status == 502
    assert body["error"].startswith("The action returned a result that is not valid JSON")


def test_lone_surrogate_in_result(runtime):
    assert runtime.init(init_payload("def main(args):\n    return {'s': '\\udc80'}\n")).status == 200
    response = runtime.run(run_payload({}))
    assert response.status == 200
    assert response.raw == b'{"s":"\\udc80"}'


def test_exception_keeps_the_action_usable(runtime):
    source = code("""
        def main(args):
            if args.get("fail"):
                raise ValueError("bad input")
            return {"ok": 1}
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert tuple(runtime.run(run_payload({"fail": True}))) == (200, {"error": "bad input"})
    assert tuple(runtime.run(run_payload({}))) == (200, {"ok": 1})
    out, err = runtime.stop()
    o, e = check_streams(out, err, 2)
    assert e.endswith("ValueError: bad input")


def test_sys_exit_with_a_message_in_main(runtime):
    assert runtime.init(init_payload("import sys\ndef main(args):\n    sys.exit('bye')\n")).status == 200
    assert tuple(runtime.run(run_payload({}))) == (400, {"error": "command exited"})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "bye")


def test_run_before_init(runtime):
    assert tuple(runtime.run(run_payload({"a": 1}))) == (500, {"error": "no action defined yet"})
    out, err = runtime.stop()
    assert check_streams(out, err, 0) == ("", "")


def test_missing_value_is_an_empty_dict(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    assert tuple(runtime.run({"activation_id": "a1"})) == (200, {})


def test_params_do_not_leak_between_runs_but_module_state_does(runtime):
    source = code("""
        calls = 0
        def main(args):
            global calls
            calls += 1
            return {"args": args, "calls": calls}
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert tuple(runtime.run(run_payload({"a": 1}))) == (200, {"args": {"a": 1}, "calls": 1})
    assert tuple(runtime.run(run_payload({"b": 2}))) == (200, {"args": {"b": 2}, "calls": 2})
    assert tuple(runtime.run(run_payload({}))) == (200, {"args": {}, "calls": 3})


def test_activation_context_changes_with_each_run(start_runtime):
    runtime = start_runtime({"__OW_API_HOST": "https://ow.example"})
    source = code("""
        import os
        def main(args):
            return {k: v for k, v in os.environ.items() if k.startswith("__OW_") and k != "__OW_ALLOW_CONCURRENT"}
        """)
    assert runtime.init(init_payload(source)).status == 200
    for i in range(3):
        other = {
            "namespace": "ns",
            "action_name": "/ns/act",
            "action_version": "0.0.1",
            "activation_id": f"id{i}",
            "transaction_id": f"tx{i}",
            "deadline": str(1000 + i),
            "api_key": "key",
        }
        status, body = runtime.run(run_payload({}, other))
        assert status == 200
        assert body == {
            "__OW_API_HOST": "https://ow.example",
            "__OW_NAMESPACE": "ns",
            "__OW_ACTION_NAME": "/ns/act",
            "__OW_ACTION_VERSION": "0.0.1",
            "__OW_ACTIVATION_ID": f"id{i}",
            "__OW_TRANSACTION_ID": f"tx{i}",
            "__OW_DEADLINE": str(1000 + i),
            "__OW_API_KEY": "key",
        }


def test_non_string_context_values_are_stringified(runtime):
    """``deadline`` is documented as a Number (the invoker sends a string): both work."""
    source = "import os\ndef main(args):\n    return {'d': os.environ['__OW_DEADLINE'], 'x': os.environ['__OW_EXTRA']}\n"
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({}, {"deadline": 1714560302526, "extra": {"a": [1]}}))
    assert (status, body) == (200, {"d": "1714560302526", "x": '{"a":[1]}'})


# ---------------------------------------------------------------------- /init


def test_init_env_values_are_stringified(runtime):
    source = "import os\nV = {k: os.environ[k] for k in ('N', 'B', 'O', 'Z', 'S')}\ndef main(args):\n    return V\n"
    env = {"N": 5, "B": True, "O": {"a": 1}, "Z": None, "S": "s"}
    assert runtime.init(init_payload(source, env=env)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"N": "5", "B": "true", "O": '{"a":1}', "Z": "", "S": "s"})


def test_init_context_in_env_is_visible_at_import(runtime):
    """Today's invoker also sends the first activation's ``__OW_*`` values in init ``env``."""
    source = "import os\nAT_IMPORT = os.environ['__OW_ACTIVATION_ID']\ndef main(args):\n    return {'id': AT_IMPORT}\n"
    env = {"__OW_ACTIVATION_ID": "first", "__OW_NAMESPACE": "ns"}
    assert runtime.init(init_payload(source, env=env)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"id": "first"})


def test_missing_main_function(runtime):
    """ActionLoop: ``from main__ import niam as main`` fails at start -> 502 at init."""
    status, body = runtime.init(init_payload(ECHO, main="niam"))
    assert (status, body) == (502, START_FAILED)
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e.startswith("ImportError: cannot import name 'niam' from 'main__'")


def test_main_that_is_not_callable(runtime):
    status, body = runtime.init(init_payload("main = 42\n"))
    assert (status, body) == (502, START_FAILED)
    out, err = runtime.stop()
    assert check_streams(out, err)[1] == "TypeError: 'main' in the action is a int, not a function"


def test_module_name_and_working_directory(runtime):
    source = code("""
        import os, sys
        NAME = __name__
        def main(args):
            return {"name": NAME, "module": sys.modules[__name__].__name__,
                    "cwd_has_source": os.path.exists("main__.py"), "file": os.path.basename(__file__)}
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (
        200,
        {"name": "main__", "module": "main__", "cwd_has_source": True, "file": "main__.py"},
    )


def test_init_after_a_failed_init(runtime):
    """ActionLoop accepts another /init after a failed one; modules of the failed zip are gone."""
    broken = make_zip({"__main__.py": "from helper import VALUE\nraise RuntimeError('boom')\n",
                       "helper.py": "VALUE = 'old'\n"})
    assert tuple(runtime.init(init_payload(broken, binary=True))) == (502, START_FAILED)
    good = make_zip({"__main__.py": "from helper import VALUE\ndef main(args):\n    return {'v': VALUE}\n",
                     "helper.py": "VALUE = 'new'\n"})
    assert runtime.init(init_payload(good, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"v": "new"})
    out, err = runtime.stop()
    o, e = check_streams(out, err, 2)
    assert e.endswith("RuntimeError: boom")


def test_init_with_bad_json(runtime):
    status, body = runtime.post("/init", b"{not json")
    assert (status, body) == (400, {"error": "Error unmarshaling request: Expecting property name "
                                             "enclosed in double quotes: line 1 column 2 (char 1)"})
    status, body = runtime.init({"value": {"code": 42}})
    assert (status, body) == (400, {"error": "Error unmarshaling request: value.code has the wrong type"})
    status, body = runtime.post("/init", b"[]")
    assert (status, body) == (400, {"error": "Error unmarshaling request: the body is not a JSON object"})
    assert runtime.init(init_payload(ECHO)).status == 200  # nothing was initialised
    out, err = runtime.stop()
    assert check_streams(out, err, 0) == ("", "")


def test_run_with_bad_json(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    status, body = runtime.post("/run", b"{not json")
    assert (status, body) == (400, {"error": "Error unmarshaling request: Expecting property name "
                                             "enclosed in double quotes: line 1 column 2 (char 1)"})
    status, body = runtime.post("/run", b"[1, 2]")
    assert (status, body) == (400, {"error": "Error unmarshaling request: the body is not a JSON object"})
    assert tuple(runtime.run(run_payload({"still": "fine"}))) == (200, {"still": "fine"})
    out, err = runtime.stop()
    assert check_streams(out, err, 1) == ("", "")


def test_binary_code_that_is_not_base64(runtime):
    status, body = runtime.init(init_payload("not base64!", binary=True))
    assert status == 400
    assert body["error"].startswith("cannot decode the request: ")


def test_binary_code_that_is_not_an_archive_is_source(runtime):
    """ActionLoop writes non-archive binary code as the source file."""
    source = base64.b64encode(b"def main(args):\n    return {'plain': True}\n").decode()
    assert runtime.init(init_payload(source, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"plain": True})


def test_tar_gz_archive(runtime):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in {"__main__.py": "from lib import f\ndef main(a):\n    return {'f': f()}\n",
                           "lib.py": "def f():\n    return 'tar'\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    payload = base64.b64encode(buffer.getvalue()).decode()
    assert runtime.init(init_payload(payload, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"f": "tar"})


def test_zip_keeps_modes_and_symlinks(runtime):
    source = code("""
        import os, stat
        def main(args):
            return {"exec": bool(os.stat("tool.sh").st_mode & stat.S_IXUSR),
                    "link": os.readlink("data/link.txt"),
                    "text": open("data/link.txt").read()}
        """)
    archive = base64.b64decode(make_zip({"__main__.py": source, "data/real.txt": "real"},
                                        symlinks={"data/link.txt": "real.txt"}))
    buffer = io.BytesIO(archive)
    with zipfile.ZipFile(buffer, "a") as z:
        info = zipfile.ZipInfo("tool.sh")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        z.writestr(info, "#!/bin/sh\necho hi\n")
    payload = base64.b64encode(buffer.getvalue()).decode()
    assert runtime.init(init_payload(payload, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"exec": True, "link": "real.txt", "text": "real"})


def test_zip_entries_cannot_escape_the_action_directory(runtime):
    source = code("""
        import os
        def main(args):
            return {"sanitised": open("escaped.txt").read(),
                    "outside": [p for p in ("../escaped.txt", "../../escaped.txt", "/escaped.txt")
                                if os.path.exists(p)],
                    "link_outside": os.path.lexists("../evil")}
        """)
    archive = make_zip({"__main__.py": source, "../../escaped.txt": "x"}, symlinks={"../evil": "/etc"})
    assert runtime.init(init_payload(archive, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"sanitised": "x", "outside": [], "link_outside": False})


# ---------------------------------------------------------------------- logs


def test_sentinel_starts_a_line_even_without_trailing_newline(runtime):
    source = "import sys\ndef main(args):\n    print('partial', end='')\n    sys.stderr.write('err-partial')\n    return {}\n"
    assert runtime.init(init_payload(source)).status == 200
    assert runtime.run(run_payload({})).status == 200
    assert runtime.run(run_payload({})).status == 200
    out, err = runtime.stop()
    assert out == f"partial\n{SENTINEL}\n" * 2
    assert err == f"err-partial\n{SENTINEL}\n" * 2


def test_output_from_a_subprocess_comes_before_the_sentinel(runtime):
    source = code("""
        import subprocess
        def main(args):
            subprocess.run(["sh", "-c", "echo from-child; echo child-err >&2"], check=True)
            return {}
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert runtime.run(run_payload({})).status == 200
    out, err = runtime.stop()
    assert out == f"from-child\n{SENTINEL}\n"
    assert err == f"child-err\n{SENTINEL}\n"


def test_unencodable_output_does_not_fail_the_activation(runtime):
    assert runtime.init(init_payload("def main(args):\n    print('\\udc80 ok')\n    return {}\n")).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("\\udc80 ok", "")


# ---------------------------------------------------------------------- threads and concurrency


def test_action_runs_on_the_main_thread(runtime):
    """Like ActionLoop (where the launcher's main thread calls main): signal handlers, thread-local
    state set at import (e.g. torch's grad mode) and ``asyncio.get_event_loop()`` work."""
    source = code("""
        import asyncio, signal, sys, threading
        IMPORTED_ON = threading.get_ident()
        LOCAL = threading.local()
        LOCAL.value = "set at import"
        def on_alarm(signum, frame):
            raise TimeoutError("alarm")
        def main(args):
            signal.signal(signal.SIGALRM, on_alarm)
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                import time
                time.sleep(2)
                fired = False
            except TimeoutError:
                fired = True
            if sys.version_info < (3, 14):  # implicit loop creation, main thread only
                loop = asyncio.get_event_loop()
            else:
                loop = asyncio.new_event_loop()
            return {"main_thread": threading.current_thread() is threading.main_thread(),
                    "same_thread": threading.get_ident() == IMPORTED_ON,
                    "local": getattr(LOCAL, "value", None), "alarm": fired,
                    "asyncio": loop.run_until_complete(asyncio.sleep(0, "ok"))}
        """)
    assert runtime.init(init_payload(source)).status == 200
    expected = {"main_thread": True, "same_thread": True, "local": "set at import", "alarm": True,
                "asyncio": "ok"}
    assert tuple(runtime.run(run_payload({}))) == (200, expected)
    runtime.connection.close()  # a new connection (a new connection thread): still the main thread
    runtime.connection = None
    assert tuple(runtime.run(run_payload({}))) == (200, expected)
    out, err = runtime.stop()
    assert check_streams(out, err, 2) == ("", "")


SLOW_COUNTING = code("""
    import threading, time
    lock = threading.Lock()
    active = 0
    peak = 0
    def main(args):
        global active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        with lock:
            active -= 1
        return {"peak": peak}
    """)


def _parallel_runs(runtime, count: int, payload) -> list:
    from runtime_support import RuntimeProcess

    results: list = [None] * count

    def one(i):
        # a connection of its own per thread
        client = RuntimeProcess.__new__(RuntimeProcess)
        client.port, client.connection = runtime.port, None
        results[i] = tuple(client.run(payload))
        client.connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_runs_are_serialised_by_default(runtime):
    assert runtime.init(init_payload(SLOW_COUNTING)).status == 200
    results = _parallel_runs(runtime, 4, run_payload({}))
    assert results == [(200, {"peak": 1})] * 4
    out, err = runtime.stop()
    check_streams(out, err, 4)


def test_concurrent_runs_when_allowed(start_runtime):
    runtime = start_runtime({"__OW_ALLOW_CONCURRENT": "true"})
    source = code("""
        import threading
        barrier = threading.Barrier(4, timeout=10)
        def main(args):
            barrier.wait()  # only passes if 4 runs are in progress together
            return {"n": args["n"]}
        """)
    assert runtime.init(init_payload(source)).status == 200
    results = _parallel_runs(runtime, 4, run_payload({"n": 1}))
    assert results == [(200, {"n": 1})] * 4
    out, err = runtime.stop()
    assert check_streams(out, err, 4) == ("", "")


# ---------------------------------------------------------------------- HTTP


def _raw_exchange(port: int, data: bytes, expect_responses: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect_responses or not _complete(received):
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _complete(data: bytes) -> bool:
    head, sep, rest = data.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    if not sep:
        return False
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(length) and len(rest) >= int(length[0].split(b":")[1])


def test_keep_alive_headers_and_content_type(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    body = json.dumps(run_payload({"k": 1})).encode()
    request = b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    received = _raw_exchange(runtime.port, request * 3, expect_responses=3)
    responses = received.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 3
    for response in responses:
        head, _, payload = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"200 OK"
        assert b"Content-Type: application/json" in lines
        assert b"Content-Length: %d" % len(payload) in lines
        assert b"Connection: close" not in lines
        assert json.loads(payload) == {"k": 1}


def test_connection_close_is_honoured(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    body = json.dumps(run_payload({})).encode()
    request = b"POST /run HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=10) as s:
        s.sendall(request)
        received = b""
        while chunk := s.recv(65536):  # the server closes the connection after the answer
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in received
    assert received.endswith(b"\r\n\r\n{}")


def test_chunked_request_body_and_expect_continue(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    body = json.dumps(run_payload({"chunked": True})).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    request = (b"POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
               + chunks + b"0\r\n\r\n")
    received = _raw_exchange(runtime.port, request, expect_responses=2)
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert received.endswith(b'{"chunked":true}')


def test_unknown_routes(runtime):
    status, body = runtime.post("/nope", {})
    assert (status, body) == (404, {"error": "no such route: /nope"})
    status, body = runtime.request("GET", "/run")
    assert (status, body) == (404, {"error": "no such route: GET /run"})
    status, body = runtime.request("PUT", "/run", {})
    assert status == 501
    assert "PUT" in body["error"]
    out, err = runtime.stop()
    assert check_streams(out, err, 0) == ("", "")


def test_malformed_request_line(runtime):
    received = _raw_exchange(runtime.port, b"GARBAGE\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in received
    out, err = runtime.stop()
    assert (out, err) == ("", "")


# ---------------------------------------------------------------------- process


def test_port_from_environment(start_runtime):
    from runtime_support import free_port

    port = free_port()
    runtime = start_runtime({"OW_RUNTIME_PORT": str(port)}, args=[], port=port)
    assert runtime.init(init_payload(ECHO)).status == 200
    assert tuple(runtime.run(run_payload({"p": port}))) == (200, {"p": port})


def test_sigterm_shuts_down_cleanly(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    assert runtime.run(run_payload({})).status == 200
    out, err = runtime.stop()
    assert runtime.returncode == 0
    assert check_streams(out, err) == ("", "")


def test_sigterm_lets_the_activation_in_progress_finish(runtime):
    source = "import time\ndef main(args):\n    time.sleep(0.5)\n    return {'done': True}\n"
    assert runtime.init(init_payload(source)).status == 200
    result = {}

    def call():
        result["answer"] = tuple(runtime.run(run_payload({})))

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    runtime.process.terminate()
    caller.join(10)
    assert result["answer"] == (200, {"done": True})
    assert runtime.process.wait(10) == 0
