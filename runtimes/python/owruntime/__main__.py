"""``python -m owruntime [--host HOST] [--port PORT]`` (also the ``owruntime`` console script)."""

from __future__ import annotations

import argparse
import os
import sys


def _default_port() -> int:
    value = os.environ.get("OW_RUNTIME_PORT", "")
    try:
        return int(value) if value.strip() else 8080
    except ValueError:
        return 8080


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="owruntime", description="OpenWhisk Python action runtime (POST /init, POST /run)."
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to listen on (default 0.0.0.0: reachable from outside a container)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_default_port(),
        help="port to listen on (default $OW_RUNTIME_PORT or 8080)",
    )
    args = parser.parse_args(argv)

    from . import logs, server

    logs.install()
    try:
        return server.serve(args.host, args.port)
    except OSError as error:  # e.g. the port is taken
        print(f"owruntime: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
