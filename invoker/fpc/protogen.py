"""Generate activation_pb2.py and activation_pb2_grpc.py from activation.proto.

The generated modules are committed (no build step, no grpcio-tools at run time); this
regenerates them, and the test compares its output with the committed files::

    python -m invoker.fpc.protogen            # rewrite invoker/fpc/activation_pb2*.py
    python -m invoker.fpc.protogen OUT_DIR    # write them under OUT_DIR/invoker/fpc/ instead

The proto is compiled with the repository root as include path, so the service module
imports its messages as ``invoker.fpc.activation_pb2`` (a package import that works).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("invoker/fpc/activation.proto")


class ProtocError(RuntimeError):
    """grpcio-tools' protoc refused the proto."""


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write the two modules under ``out_dir``/invoker/fpc/; their paths."""
    import grpc_tools  # grpcio-tools: a development dependency only
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/wrappers.proto
    (out_dir / PROTO.parent).mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(ROOT / PROTO),
    ])
    if status != 0:
        raise ProtocError(f"protoc failed on {PROTO} (status {status})")
    return [out_dir / PROTO.with_name("activation_pb2.py"), out_dir / PROTO.with_name("activation_pb2_grpc.py")]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in generate(Path(args[0]) if args else ROOT):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
