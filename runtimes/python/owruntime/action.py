"""Loading and running the action: the /init and /run semantics, independent of HTTP.

The action is executed in this process (module-level state, e.g. a model resident on a GPU,
survives between runs), imported as a module named ``main__`` like today's ActionLoop Python
runtime does. Status codes and error texts follow ActionLoop (``openwhisk/initHandler.go`` and
``runHandler.go`` in apache/openwhisk-runtime-go);
where this runtime deliberately differs, the docstrings say so (see also ../README.md).

:class:`ActionRuntime` is not thread-safe for /init; the server calls :meth:`init` from one
thread at a time (the main thread), and :meth:`run` either from one thread at a time or, with
``__OW_ALLOW_CONCURRENT=true``, from several.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.util
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import traceback
import zipfile

from . import gpu_errors, guard, logs

# Exact texts of today's ActionLoop Python runtime.
MSG_INIT_TWICE = "Cannot initialize the action more than once."
MSG_NO_CODE = "Missing main/no code to execute."
MSG_BUILD_FAILED = "The action failed to generate or locate a binary. See logs for details."
MSG_START_FAILED = "Cannot start action. Check logs for details."
MSG_EXITED_AT_INIT = "Command exited abruptly during initialization."
MSG_NOT_A_DICT = "The action did not return a dictionary or array."
MSG_NO_ACTION = "no action defined yet"
MSG_EXITED = "command exited"
MSG_NO_ENTRY = "Zip file does not include __main__.py"
MSG_NO_ACTIVATE = "Invalid virtualenv. Zip file does not include 'activate_this.py'."

MODULE_NAME = "main__"

_encode_compact = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode
_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def error_body(message) -> bytes:
    """``{"error": message}`` as compact UTF-8 JSON."""
    return _encode_ascii({"error": message}).encode()


OK_BODY = b'{"ok":true}'
NULL_BODY = b"null"
_NO_ACTION_BODY = error_body(MSG_NO_ACTION)
_EXITED_BODY = error_body(MSG_EXITED)
_NOT_A_DICT_BODY = error_body(MSG_NOT_A_DICT)


class InitFailure(Exception):
    """/init failed after the code was received: answered 502 with ``message``; ``detail`` goes to
    stderr, followed by the sentinels (ActionLoop with ``OW_LOG_INIT_ERROR``)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


class BadRequest(Exception):
    """The request itself is malformed: 400 with this text, no sentinel."""


def env_string(value) -> str:
    """Environment values are strings. Non-strings are stringified like the platform and the Go
    proxy do (numbers/booleans as JSON text, objects as compact JSON); ``null`` becomes ``""``
    (what the platform sends for a null init parameter)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _format_exception(ex: BaseException, skip: int = 1) -> str:
    """The traceback of ``ex`` without the runtime's own outermost ``skip`` frames."""
    tb = ex.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(ex), ex, tb))


def _exception_text(ex: BaseException) -> str:
    try:
        return str(ex)
    except Exception:  # a broken __str__
        return type(ex).__name__


def _exit_message(ex: BaseException) -> str | None:
    """What the interpreter would print for an uncaught ``SystemExit`` (``sys.exit("text")``)."""
    if isinstance(ex, SystemExit) and ex.code is not None and not isinstance(ex.code, int):
        return str(ex.code)
    return None


class ActionRuntime:
    """The state of one runtime process: at most one action, initialised at most once."""

    def __init__(self, base_dir: str | None = None) -> None:
        self.base_dir = base_dir  # where per-action working directories are created
        self.caps = guard.ArchiveCaps.from_env()  # read before any /init could change the environment
        self.initialized = False
        self.main = None  # the callable, None before init or after sys.exit in a run
        self.workdir: str | None = None
        self._saved_cwd = os.getcwd()

    # ------------------------------------------------------------------ /init

    def init(self, body: bytes) -> tuple[int, bytes]:
        if self.initialized:
            # ActionLoop: 403, message to stderr (Go log.Println), no sentinel; the action stays.
            logs.error(MSG_INIT_TWICE)
            return 403, error_body(MSG_INIT_TWICE)
        try:
            code, main_name, binary, env = _parse_init(body)
        except BadRequest as ex:
            return 400, error_body(str(ex))
        if code == "":
            return 403, error_body(MSG_NO_CODE)
        env, dropped = guard.split_env(env)
        if dropped:  # the invoker set these at creation: GPU device and limits, runtime settings
            logs.error(f"owruntime: init parameters ignored, the invoker sets them: {', '.join(dropped)}")
        try:
            for key, value in env.items():
                os.environ[key] = env_string(value)
        except (ValueError, TypeError) as ex:  # "=" or NUL in a name/value
            return 400, error_body(f"cannot set the environment: {ex}")
        if binary:
            try:
                payload = base64.b64decode(code.replace("\n", "").replace("\r", ""), validate=True)
            except (binascii.Error, ValueError) as ex:
                return 400, error_body(f"cannot decode the request: {ex}")
        else:
            payload = code.encode("utf-8", "surrogatepass")
        try:
            self.main = self._load(payload, main_name)
        except Exception as ex:
            failure = ex if isinstance(ex, InitFailure) else InitFailure(
                MSG_BUILD_FAILED, _format_exception(ex, skip=0)  # e.g. disk full while extracting
            )
            logs.error(failure.detail)
            logs.end_activation()
            return 502, error_body(failure.message)
        self.initialized = True
        return 200, OK_BODY

    def _load(self, payload: bytes, main_name: str):
        workdir = tempfile.mkdtemp(prefix="owaction-", dir=self.base_dir)
        modules_before = set(sys.modules)
        try:
            entry = _prepare(payload, workdir, self.caps)
            # compile first: a syntax error is a "build" failure in ActionLoop (bin/compile)
            with open(entry, "rb") as f:
                source = f.read()
            try:
                code = compile(source, entry, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as ex:  # ValueError: NUL bytes in the source
                detail = "Traceback (most recent call last):\n" + "".join(
                    traceback.format_exception_only(type(ex), ex)
                )
                raise InitFailure(MSG_BUILD_FAILED, detail) from None
            os.chdir(workdir)
            sys.path.insert(0, workdir)
            importlib.invalidate_caches()
            _activate_virtualenv(workdir)
            main = _import(code, entry, main_name)
        except BaseException:
            self._unload(workdir, modules_before)
            raise
        self.workdir = workdir
        return main

    def _unload(self, workdir: str, modules_before: set[str]) -> None:
        """Undo a failed init so that another /init can be tried (ActionLoop accepts one)."""
        sys.modules.pop(MODULE_NAME, None)
        prefix = workdir + os.sep
        for name in set(sys.modules) - modules_before:
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) or ""
            if origin.startswith(prefix):
                sys.modules.pop(name, None)
        while workdir in sys.path:
            sys.path.remove(workdir)
        try:
            os.chdir(self._saved_cwd)
        except OSError:
            pass
        shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ /run

    def run(self, body: bytes) -> tuple[int, bytes]:
        main = self.main
        if main is None:
            # before /init, or after the action called sys.exit: ActionLoop 500, no sentinel
            return 500, _NO_ACTION_BODY
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError) as ex:
            return 400, error_body(f"Error unmarshaling request: {ex}")
        if not isinstance(message, dict):
            return 400, error_body("Error unmarshaling request: the body is not a JSON object")
        environ = os.environ
        args = {}
        for key, value in message.items():
            if key == "value":
                args = value
                continue
            name = "__OW_" + key.upper()
            if type(value) is not str:
                value = env_string(value)
            try:
                if environ.get(name) != value:
                    environ[name] = value
            except ValueError:  # NUL or "=": cannot be an environment variable
                pass

        try:
            result = main(args)
        except Exception as ex:
            # ActionLoop's launcher: Traceback to stderr, 200 {"error": str(ex)}
            logs.error(_format_exception(ex))
            result = {"error": gpu_errors.explain(ex, _exception_text(ex))}
        except BaseException as ex:  # SystemExit (and KeyboardInterrupt): the action process "died"
            text = _exit_message(ex)
            if text:
                logs.error(text)
            self.main = None  # ActionLoop: later runs 500 "no action defined yet"
            logs.end_activation()
            return 400, _EXITED_BODY

        status, payload = 200, None
        if result is None:
            payload = NULL_BODY  # ActionLoop answers 200 null
        elif isinstance(result, dict | list | tuple):
            try:
                try:
                    payload = _encode_compact(result).encode()
                except UnicodeEncodeError:  # lone surrogates: escape them instead
                    payload = _encode_ascii(result).encode()
            except (TypeError, ValueError, RecursionError) as ex:
                logs.error(_format_exception(ex, skip=0))
                status, payload = 502, error_body(f"The action returned a result that is not valid JSON: {ex}")
        else:
            status, payload = 502, _NOT_A_DICT_BODY
        logs.end_activation()
        return status, payload

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Remove the action's working directory (at process exit)."""
        if self.workdir:
            try:
                os.chdir(self._saved_cwd)
            except OSError:
                pass
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# ---------------------------------------------------------------------- helpers


def _parse_init(body: bytes):
    """Decode an /init body like the Go proxy's ``json.Unmarshal`` into its struct: ``null`` and
    missing fields are empty, a wrong type is an error (400)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as ex:
        raise BadRequest(f"Error unmarshaling request: {ex}") from None
    if request is None:
        request = {}
    if not isinstance(request, dict):
        raise BadRequest("Error unmarshaling request: the body is not a JSON object")
    value = request.get("value")
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest("Error unmarshaling request: value is not a JSON object")

    def field(name, kind, default):
        item = value.get(name)
        if item is None:
            return default
        if not isinstance(item, kind):
            raise BadRequest(f"Error unmarshaling request: value.{name} has the wrong type")
        return item

    code = field("code", str, "")
    main_name = field("main", str, "") or "main"
    binary = field("binary", bool, False)
    env = field("env", dict, {})
    return code, main_name, binary, env


def _prepare(payload: bytes, workdir: str, caps: guard.ArchiveCaps) -> str:
    """Write or extract the code into ``workdir``; return the entry file.

    Like ActionLoop: a zip or a gzipped tar is extracted; any other content (text, or binary that
    is neither) is the source of the action. In an archive the entry is ``__main__.py``, or
    ``main__.py`` (an archive prebuilt with ActionLoop's ``-compile``).
    """
    if zipfile.is_zipfile(io.BytesIO(payload)):
        _extract_zip(payload, workdir, caps)
    elif payload[:2] == b"\x1f\x8b":  # gzip: a tar.gz, like the Go proxy's UnTar
        _extract_tar_gz(payload, workdir, caps)
    else:
        entry = os.path.join(workdir, MODULE_NAME + ".py")
        with open(entry, "wb") as f:
            f.write(payload)
        return entry
    for name in ("__main__.py", MODULE_NAME + ".py"):
        entry = os.path.join(workdir, name)
        if os.path.isfile(entry):
            break
    else:
        raise InitFailure(MSG_BUILD_FAILED, MSG_NO_ENTRY)
    venv = os.path.join(workdir, "virtualenv")
    if os.path.isdir(venv) and _activate_this(venv) is None:
        raise InitFailure(MSG_BUILD_FAILED, MSG_NO_ACTIVATE)
    return entry


def _extract_tar_gz(payload: bytes, workdir: str, caps: guard.ArchiveCaps) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
            caps.check(member.size for member in archive)  # reads the headers only; sizes are exact
            if hasattr(tarfile, "tar_filter"):  # 3.11.4+: no paths outside workdir, no devices
                archive.extractall(workdir, filter="tar")
            else:
                archive.extractall(workdir)
    except guard.ArchiveTooLarge as ex:
        raise _too_large(ex) from None
    except (tarfile.TarError, OSError, EOFError) as ex:
        raise InitFailure(MSG_BUILD_FAILED, f"Cannot extract the archive: {ex}") from None


def _too_large(ex: guard.ArchiveTooLarge) -> InitFailure:
    message = f"Cannot extract the action's archive: {ex}"
    return InitFailure(message, message)


def _extract_zip(payload: bytes, workdir: str, caps: guard.ArchiveCaps) -> None:
    """Extract with ``zipfile``'s path sanitising, keeping Unix modes and symlinks (virtualenvs
    contain both), like the Go proxy's ``Unzip``. Symlinks are made last, so that no file is
    written through one."""
    root = os.path.realpath(workdir)
    links = []
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            caps.check(info.file_size for info in archive.infolist())
            for info in archive.infolist():
                mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
                if stat.S_ISLNK(mode):
                    links.append((info.filename, archive.read(info)))
                    continue
                path = archive.extract(info, root)
                if mode and not info.is_dir():
                    os.chmod(path, stat.S_IMODE(mode) | stat.S_IRUSR | stat.S_IWUSR)
    except guard.ArchiveTooLarge as ex:
        raise _too_large(ex) from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as ex:
        raise InitFailure(MSG_BUILD_FAILED, f"Cannot extract the zip file: {ex}") from None
    for name, target in links:
        path = os.path.normpath(os.path.join(root, name.lstrip("/")))
        if not path.startswith(root + os.sep):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError:
            pass


def _activate_this(venv: str) -> str | None:
    for sub in ("bin", "Scripts"):
        path = os.path.join(venv, sub, "activate_this.py")
        if os.path.isfile(path):
            return path
    return None


def _activate_virtualenv(workdir: str) -> None:
    """Execute ``virtualenv/bin/activate_this.py`` before the action is imported (launcher.py)."""
    venv = os.path.join(workdir, "virtualenv")
    if not os.path.isdir(venv):
        return
    path = _activate_this(venv)
    if path is None:  # already checked by _prepare
        raise InitFailure(MSG_BUILD_FAILED, MSG_NO_ACTIVATE)
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
        exec(code, {"__file__": path, "__name__": "activate_this"})
    except BaseException as ex:
        raise InitFailure(MSG_START_FAILED, _start_failure_detail(ex)) from None


def _start_failure_detail(ex: BaseException) -> str:
    if isinstance(ex, SystemExit | KeyboardInterrupt):
        text = _exit_message(ex)
        return (text + "\n" if text else "") + MSG_EXITED_AT_INIT
    return _format_exception(ex)


def _import(code, entry: str, main_name: str):
    """Execute the compiled entry as module ``main__`` and return its ``main_name`` callable."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, entry)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        exec(code, module.__dict__)
    except BaseException as ex:
        # ActionLoop: the launcher process dies while importing; its traceback is on stderr
        raise InitFailure(MSG_START_FAILED, _start_failure_detail(ex)) from None
    main = getattr(module, main_name, None)
    if main is None:
        # the text Python gives for ActionLoop's ``from main__ import <main> as main``
        raise InitFailure(
            MSG_START_FAILED,
            f"ImportError: cannot import name {main_name!r} from {MODULE_NAME!r} ({entry})",
        )
    if not callable(main):
        raise InitFailure(
            MSG_START_FAILED,
            f"TypeError: {main_name!r} in the action is a {type(main).__name__}, not a function",
        )
    return main
