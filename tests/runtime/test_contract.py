"""OpenWhisk's runtime test suites, ported, run against the ``owruntime`` process and against
the runtime image (``owgpu/action-python-v3``, started with testcontainers).

BasicActionRunnerTests (the canonical suite of apache/openwhisk), and PythonBasicTests,
PythonAdvancedTests and Python3Tests (apache/openwhisk-runtime-python), with the expectations of
today's ActionLoop Python runtime. Where upstream accepts several answers,
these tests assert the exact one this runtime gives.
"""

from __future__ import annotations

import textwrap

import pytest
from runtime_support import (
    RuntimeContainer,
    RuntimeProcess,
    check_streams,
    init_payload,
    make_zip,
    run_payload,
)
from services import RUNTIME_IMAGE


@pytest.fixture(params=["process", "image"])
def start_runtime(request, tmp_path):
    """``start_runtime(env=None)``: the runtime as a process, or its image as a container."""
    if request.param == "image":
        request.getfixturevalue("docker_client")  # skips (or fails under ./dev test) without an engine
    started: list[RuntimeProcess] = []

    def start(env: dict[str, str] | None = None) -> RuntimeProcess:
        if request.param == "image":
            runtime = RuntimeContainer(RUNTIME_IMAGE, env)
        else:
            runtime = RuntimeProcess(tmp_path / "logs", env)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.kill()


ECHO = """
def main(args):
    return args
"""


def code(text: str) -> str:
    return textwrap.dedent(text)


# ====================================================================== BasicActionRunnerTests


def test_init_with_no_code(runtime):
    """'handle initialization with no code' (Python 3.9+: hasCodeStub = false)."""
    status, body = runtime.init(init_payload("", ""))
    assert status == 403
    assert body == {"error": "Missing main/no code to execute."}
    out, err = runtime.stop()
    assert check_streams(out, err, 0) == ("", "")


def test_init_with_no_content(runtime):
    """'handle initialization with no content': body ``{}``."""
    status, body = runtime.init({})
    assert status == 403
    assert body == {"error": "Missing main/no code to execute."}
    out, err = runtime.stop()
    assert check_streams(out, err, 0) == ("", "")


def test_not_returning_a_dictionary(runtime):
    """'run and report an error for function not returning a json object'."""
    source = code("""
        def main(args):
            return "not a json object"
        """)
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run({})
    assert status == 502
    assert body == {"error": "The action did not return a dictionary or array."}
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_fail_to_initialize_a_second_time(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    status, body = runtime.init(init_payload(ECHO))
    assert status == 403
    assert body == {"error": "Cannot initialize the action more than once."}
    # the first action is still there
    assert tuple(runtime.run(run_payload({"still": "here"}))) == (200, {"still": "here"})
    out, err = runtime.stop()
    o, e = check_streams(out, err, 1)
    assert "Cannot initialize the action more than once." in o + e


def test_second_init_writes_no_sentinel(runtime):
    """The canonical test counts 0 sentinels over a successful init plus a refused one."""
    assert runtime.init(init_payload(ECHO)).status == 200
    assert runtime.init(init_payload(ECHO)).status == 403
    out, err = runtime.stop()
    o, e = check_streams(out, err, 0)
    assert o == ""
    assert e == "Cannot initialize the action more than once."


def test_non_standard_entry_point(runtime):
    source = code("""
        def niam(args):
          return args
        """)
    assert runtime.init(init_payload(source, main="niam")).status == 200
    arg = {"string": "hello"}
    assert tuple(runtime.run(run_payload(arg))) == (200, arg)
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_echo_and_print_to_stdout_and_stderr(runtime):
    source = code("""
        from __future__ import print_function
        import sys
        def main(args):
            print('hello stdout')
            print('hello stderr', file=sys.stderr)
            return args
        """)
    assert runtime.init(init_payload(source)).status == 200
    argss = [
        {"string": "hello"},
        {"string": "❄ ☃ ❄"},
        {"numbers": [42, 1]},
        {"object": {"a": "A"}},
    ]
    for args in argss:
        assert tuple(runtime.run(run_payload(args))) == (200, args)
    out, err = runtime.stop()
    o, e = check_streams(out, err, len(argss))
    assert o == "\n".join(["hello stdout"] * 4)
    assert e == "\n".join(["hello stderr"] * 4)
    # each activation's output comes before its sentinel
    assert out == ("hello stdout\nXXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n") * 4
    assert err == ("hello stderr\nXXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n") * 4


def test_unicode_in_source_params_logs_and_result(runtime):
    source = code("""
        # encoding: utf-8
        def main(args):
            sep = args['delimiter']
            str = sep + u" ☃ " + sep
            print(str)
            return {"winter" : str }
        """).strip()
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({"delimiter": "❄"}))
    assert status == 200
    assert body == {"winter": "❄ ☃ ❄"}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == "❄ ☃ ❄"
    assert e == ""


def test_export_environment_variables_before_initialization(runtime):
    """'export environment variables before initialization' (read at import time)."""
    source = code("""
        import os
        somevar = os.environ['SOME_VAR']
        another = os.environ['ANOTHER_VAR']

        def main(dict):
            global somevar
            global another
            return {
               "SOME_VAR": somevar,
               "ANOTHER_VAR": another
            }
        """)
    env = {"SOME_VAR": "xyz", "ANOTHER_VAR": ""}
    assert runtime.init(init_payload(source, env=env)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"SOME_VAR": "xyz", "ANOTHER_VAR": ""})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


ENV_ACTION = code("""
    import os
    def main(dict):
        return {
           "api_host": os.environ['__OW_API_HOST'],
           "api_key": os.environ['__OW_API_KEY'],
           "namespace": os.environ['__OW_NAMESPACE'],
           "action_name": os.environ['__OW_ACTION_NAME'],
           "action_version": os.environ['__OW_ACTION_VERSION'],
           "activation_id": os.environ['__OW_ACTIVATION_ID'],
           "deadline": os.environ['__OW_DEADLINE']
        }
    """).strip()


def test_confirm_expected_environment_variables(start_runtime):
    """The API host comes from the process environment, the rest from the run payload."""
    props = {
        "api_host": "xyz",
        "api_key": "abc",
        "namespace": "zzz",
        "action_name": "xxx",
        "action_version": "0.0.1",
        "activation_id": "iii",
        "deadline": "123",
    }
    runtime = start_runtime({"__OW_API_HOST": props["api_host"]})
    assert runtime.init(init_payload(ENV_ACTION)).status == 200
    other = {k: v for k, v in props.items() if k != "api_host"}
    status, body = runtime.run(run_payload({}, other))
    assert status == 200
    assert body == props
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_echo_a_large_input(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    arg = {"arg": "a" * 1048561}
    response = runtime.run(run_payload(arg))
    assert response.status == 200
    assert response.json == arg
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


# ====================================================================== PythonBasicTests


def test_zip_action_with_non_default_entry_point(runtime):
    """'support zip-encoded action using non-default entry points': helper module importable."""
    archive = make_zip({
        "__main__.py": code("""
            from echo import echo
            def niam(args):
                return echo(args)
            """),
        "echo.py": code("""
            def echo(args):
              return { "echo": args }
            """),
    })
    assert runtime.init(init_payload(archive, main="niam", binary=True)).status == 200
    args = {"msg": "it works"}
    assert tuple(runtime.run(run_payload(args))) == (200, {"echo": args})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_zip_action_reads_relative_paths(runtime):
    """'support zip-encoded action which can read from relative paths': cwd is the action dir."""
    archive = make_zip({
        "__main__.py": code("""
            def main(args):
                with open('workfile', 'r') as f:
                  return { 'file': f.read() }
            """),
        "workfile": "this is a test string",
    })
    assert runtime.init(init_payload(archive, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"file": "this is a test string"})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_zip_without_main_module(runtime):
    """'report error if zip-encoded action does not include required file'."""
    archive = make_zip({"echo.py": "def echo(args):\n  return { 'echo': args }\n"})
    status, body = runtime.init(init_payload(archive, main="echo", binary=True))
    assert status == 502
    assert body == {"error": "The action failed to generate or locate a binary. See logs for details."}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e == "Zip file does not include __main__.py"


def test_exception_in_action(runtime):
    """'return on action error when action fails': ActionLoop answers 200 {"error": str(ex)}."""
    source = code("""
        def div(x, y):
            return x/y

        def main(dict):
            return {"divBy0": div(5,0)}
        """)
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({}))
    assert status == 200
    assert body == {"error": "division by zero"}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e.startswith("Traceback (most recent call last):")
    assert "in div" in e
    assert e.endswith("ZeroDivisionError: division by zero")
    assert "owruntime" not in e  # the runtime's own frames are not shown


def test_log_compilation_errors(runtime):
    source = code("""
         10 PRINT "Hello!"
         20 GOTO 10
        """)
    status, body = runtime.init(init_payload(source))
    assert status == 502
    assert body == {"error": "The action failed to generate or locate a binary. See logs for details."}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert "Traceback" in e
    assert "SyntaxError" in e or "IndentationError" in e


def test_syntax_error(runtime):
    status, body = runtime.init(init_payload("def main(args)\n    return args\n"))
    assert status == 502
    assert body == {"error": "The action failed to generate or locate a binary. See logs for details."}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert "main__.py\", line 1" in e
    assert e.endswith("SyntaxError: expected ':'")


def test_application_error(runtime):
    source = code("""
        def main(args):
            return { "error": "sorry" }
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"error": "sorry"})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_import_of_a_missing_package(runtime):
    """'error when importing a not-supported package': ActionLoop fails at init (502)."""
    source = code("""
        import iamnotsupported
        def main(args):
            return { "error": "not reaching here" }
        """)
    status, body = runtime.init(init_payload(source))
    assert status == 502
    assert body == {"error": "Cannot start action. Check logs for details."}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e.startswith("Traceback (most recent call last):")
    assert e.endswith("ModuleNotFoundError: No module named 'iamnotsupported'")


def test_valid_sys_executable(runtime):
    source = code("""
        import sys
        def main(args):
            return { "sys": sys.executable }
        """)
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({}))
    assert status == 200
    assert "python" in body["sys"]


def test_return_array_result(runtime):
    source = code("""
        def main(args):
            return  ["a", "b"]
        """)
    assert runtime.init(init_payload(source)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, ["a", "b"])
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_array_as_input_param(runtime):
    assert runtime.init(init_payload(ECHO)).status == 200
    assert tuple(runtime.run(run_payload(["a", "b"]))) == (200, ["a", "b"])
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


# ====================================================================== PythonAdvancedTests


def test_termination_at_run(runtime):
    """'detect termination at run': 400 command exited; the action is gone afterwards."""
    source = code("""
        import sys
        def main(args):
          sys.exit(1)
        """)
    assert runtime.init(init_payload(source)).status == 200
    status, body = runtime.run(run_payload({}))
    assert status == 400
    assert body == {"error": "command exited"}
    # ActionLoop drops the executor: later runs 500 (no sentinel), /init stays refused
    assert tuple(runtime.run(run_payload({}))) == (500, {"error": "no action defined yet"})
    assert runtime.init(init_payload(ECHO)).status == 403
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e == "Cannot initialize the action more than once."


def test_termination_at_run_streams_empty(runtime):
    source = "import sys\ndef main(args):\n  sys.exit(1)\n"
    assert runtime.init(init_payload(source)).status == 200
    assert runtime.run(run_payload({})).status == 400
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_termination_at_init(runtime):
    """'detect termination at init'."""
    source = code("""
        import sys
        sys.exit(1)
        def main(args):
           pass
        """)
    status, body = runtime.init(init_payload(source))
    assert status == 502
    assert body == {"error": "Cannot start action. Check logs for details."}
    out, err = runtime.stop()
    o, e = check_streams(out, err)
    assert o == ""
    assert e == "Command exited abruptly during initialization."


def test_termination_at_init_with_a_message(runtime):
    status, body = runtime.init(init_payload("import sys\nsys.exit('no GPU here')\n"))
    assert status == 502
    assert body == {"error": "Cannot start action. Check logs for details."}
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "no GPU here\nCommand exited abruptly during initialization.")


def test_read_an_environment_variable_at_import(runtime):
    """'read an environment variable': printed at import time, part of the first run's log."""
    source = code("""
        import os
        X = os.getenv('X')
        print(X)
        def main(args):
           return { "body": "ok" }
        """)
    assert runtime.init(init_payload(source, "main", {"X": "xyz"})).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"body": "ok"})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("xyz", "")
    assert out == "xyz\nXXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n"


# ====================================================================== Python3Tests (virtualenv)

ACTIVATE_THIS = code('''
    """Minimal activate_this.py: puts the virtualenv's site-packages on sys.path."""
    import os, site, sys
    base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["VIRTUAL_ENV"] = base
    site.addsitedir(os.path.join(base, "lib", "site-packages"))
    sys.prefix = base
    ''')

VENV_MAIN = code("""
    from agentlib import agent
    def main(args):
        return {"agent": agent()}
    def naim(args):
        return main(args)
    """)


def venv_zip(with_activate: bool = True) -> str:
    files = {
        "__main__.py": VENV_MAIN,
        "virtualenv/lib/site-packages/agentlib/__init__.py": "def agent():\n    return 'Mozilla/5.0 (X11; Linux x86_64)'\n",
    }
    if with_activate:
        files["virtualenv/bin/activate_this.py"] = ACTIVATE_THIS
    return make_zip(files)


def test_zip_with_virtualenv(runtime):
    assert runtime.init(init_payload(venv_zip(), binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "")


def test_zip_with_virtualenv_non_standard_entry_point(runtime):
    assert runtime.init(init_payload(venv_zip(), main="naim", binary=True)).status == 200
    assert tuple(runtime.run(run_payload({}))) == (200, {"agent": "Mozilla/5.0 (X11; Linux x86_64)"})


def test_zip_with_invalid_virtualenv(runtime):
    """'report error if zipped Python action has invalid virtualenv directory': the zip upstream
    holds ``__main__.py`` and an (empty) ``virtualenv/`` directory entry."""
    archive = make_zip({"__main__.py": ECHO}, dirs=["virtualenv"])
    status, body = runtime.init(init_payload(archive, binary=True))
    assert status == 502
    assert body == {"error": "The action failed to generate or locate a binary. See logs for details."}
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "Invalid virtualenv. Zip file does not include 'activate_this.py'.")


def test_zip_with_virtualenv_missing_activate_this(runtime):
    status, body = runtime.init(init_payload(venv_zip(with_activate=False), binary=True))
    assert status == 502
    assert body == {"error": "The action failed to generate or locate a binary. See logs for details."}
    out, err = runtime.stop()
    assert check_streams(out, err) == ("", "Invalid virtualenv. Zip file does not include 'activate_this.py'.")


def test_zip_prebuilt_by_actionloop(runtime):
    """A zip made with ActionLoop's ``-compile`` holds ``main__.py`` instead of ``__main__.py``."""
    archive = make_zip({"main__.py": ECHO, "exec__.py": "# ActionLoop launcher, unused\n"})
    assert runtime.init(init_payload(archive, binary=True)).status == 200
    assert tuple(runtime.run(run_payload({"a": 1}))) == (200, {"a": 1})
